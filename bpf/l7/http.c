//go:build ignore

/* Per-request telemetry for Go's net/http server (HTTP/1.x), from uprobes.
 *
 * Two probes, both on instructions the kernel emulates (the stack-check
 * jump right after each function's entry), none on returns:
 *   serverHandler.ServeHTTP entry:  remember the start time, per goroutine;
 *   (*response).finishRequest entry: the handler has returned; read method,
 *                                    path, status and bytes, emit an event.
 * Struct offsets are constants the loader sets from DWARF or the table.
 */

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual BSD/GPL";

/* x86-64 pt_regs as the kernel lays it out (uapi headers give the i386 one
 * to a BPF target). */
struct regs {
	__u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di;
	__u64 orig_ax, ip, cs, flags, sp, ss;
};

/* Go's internal ABI on amd64: arguments in AX, BX, CX, DI, SI, R8..R11;
 * the current goroutine (g) in R14. */
#define GO_ARG1(r) ((r)->ax)
#define GO_ARG4(r) ((r)->di)
#define GO_G(r) ((r)->r14)

#define METHOD_LEN 8
#define PATH_LEN 64

struct http_event {
	__u64 duration_ns;
	__u64 bytes;
	__u64 req_bytes; /* the request's Content-Length (0 if unknown) */
	__u32 pid;
	__u32 status;
	__u8 method[METHOD_LEN];
	__u8 path[PATH_LEN];
};

/* Referenced so the type is in BTF for bpf2go -type. */
const struct http_event *unused_http_event __attribute__((unused));

struct start {
	__u64 key; /* the goroutine whose request holds the slot; 0: free */
	__u64 ns;
};

/* Whether to emit one ring-buffer event per request (access logs, tests).
 * Metrics need none: they come from sm_http_stats. */
volatile const __u8 emit_events = 1;

#define DURATION_BUCKETS 19
#define BYTES_BUCKETS 9

/* http_stats aggregates requests in the kernel, so metrics cost no event
 * per request. Buckets are not cumulative: a request counts in the first
 * bucket whose bound it does not exceed (none when it exceeds them all). */
struct http_stats {
	__u64 count;
	__u64 duration_sum_ns;
	__u64 duration_buckets[DURATION_BUCKETS];
	__u64 bytes_sum;
	__u64 bytes_buckets[BYTES_BUCKETS];
	__u64 req_bytes_sum;
	__u64 req_bytes_buckets[BYTES_BUCKETS];
};

struct http_stats_key {
	__u32 pid;
	__u32 status;
};

/* Envoy's default duration buckets (Istio's), in nanoseconds. */
static const __u64 duration_bounds_ns[DURATION_BUCKETS] = {
	500000ULL, 1000000ULL, 5000000ULL, 10000000ULL, 25000000ULL, 50000000ULL, 100000000ULL,
	250000000ULL, 500000000ULL, 1000000000ULL, 2500000000ULL, 5000000000ULL, 10000000000ULL,
	30000000000ULL, 60000000000ULL, 300000000000ULL, 600000000000ULL, 1800000000000ULL,
	3600000000000ULL,
};

/* sm_http_stats: {pid, status} -> http_stats, per CPU (no atomics on the
 * hot path). Written by the finishRequest probe, read by the agent when
 * Prometheus scrapes. 4096 entries; when full, new pid/status pairs are
 * not counted (sm_http_drops counts them). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct http_stats_key);
	__type(value, struct http_stats);
} sm_http_stats SEC(".maps");

/* Offsets into Go structs, set at load time. */
volatile const __u64 off_request_method = 0;
volatile const __u64 off_request_url = 16;
volatile const __u64 off_url_path = 56;
volatile const __u64 off_response_req = 8;
volatile const __u64 off_response_status = 120;
volatile const __u64 off_response_written = 104;
volatile const __u64 off_request_content_length = 88;

/* sm_http_start: request starts, in slots chosen by a hash of the
 * goroutine key (g pointer + pid), claimed with compare-and-swap and freed
 * at finishRequest; a request looks at START_PROBES slots from its own. An
 * array, not a hash: no bucket lock, no allocation, which cost most of the
 * probes' run time here. A handler that panics or a hijacked connection
 * never reaches finishRequest: its slot counts as free once older than
 * START_STALE_NS, so nothing leaks. When every probed slot is taken the
 * request is not measured, and sm_http_drops counts it. */
#define START_SLOTS 16384
#define START_PROBES 4
#define START_STALE_NS (600ULL * 1000000000ULL)
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, START_SLOTS);
	__type(key, __u32);
	__type(value, struct start);
} sm_http_start SEC(".maps");

/* sm_http_events: one ring buffer for all events, read by the agent on a
 * timer (events are submitted without waking it: batching the wake-ups is
 * most of what probes cost a busy server). When full, events are dropped
 * and counted in sm_http_drops. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} sm_http_events SEC(".maps");

/* sm_http_drops: events the ring buffer had no room for. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sm_http_drops SEC(".maps");

static __always_inline __u64 goroutine_key(struct regs *r)
{
	return GO_G(r) ^ ((__u64)(bpf_get_current_pid_tgid() >> 32) << 48);
}

static __always_inline __u32 start_slot(__u64 key)
{
	key ^= key >> 29;
	key *= 0xbf58476d1ce4e5b9ULL;
	key ^= key >> 32;
	return (__u32)key;
}

static __always_inline void count_drop(void);

SEC("uprobe/serve_http")
int sm_http_serve(struct regs *r)
{
	__u64 key = goroutine_key(r), now = bpf_ktime_get_ns();
	__u32 base = start_slot(key);

#pragma unroll
	for (int i = 0; i < START_PROBES; i++) {
		__u32 idx = (base + i) & (START_SLOTS - 1);
		struct start *s = bpf_map_lookup_elem(&sm_http_start, &idx);
		__u64 old;

		if (!s)
			return 0;
		old = s->key;
		if (old && old != key && now - s->ns < START_STALE_NS)
			continue;
		if (__sync_val_compare_and_swap(&s->key, old, key) != old)
			continue;
		s->ns = now;
		return 0;
	}
	count_drop();
	return 0;
}

/* take_start returns and frees the start of key's request, or 0. */
static __always_inline __u64 take_start(__u64 key)
{
	__u32 base = start_slot(key);

#pragma unroll
	for (int i = 0; i < START_PROBES; i++) {
		__u32 idx = (base + i) & (START_SLOTS - 1);
		struct start *s = bpf_map_lookup_elem(&sm_http_start, &idx);
		__u64 ns;

		if (!s)
			return 0;
		if (s->key != key)
			continue;
		ns = s->ns;
		if (__sync_val_compare_and_swap(&s->key, key, 0) != key)
			return 0;
		return ns;
	}
	return 0;
}

/* read_gostring copies a Go string (pointer, length) at addr into dst. */
static __always_inline void read_gostring(__u8 *dst, __u32 size, __u64 addr)
{
	struct {
		__u64 ptr;
		__s64 len;
	} s = {};
	__u32 n;

	if (bpf_probe_read_user(&s, sizeof(s), (void *)addr) || s.len <= 0)
		return;
	n = s.len < size - 1 ? s.len : size - 1;
	bpf_probe_read_user(dst, n & (size - 1), (void *)s.ptr);
}

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *d = bpf_map_lookup_elem(&sm_http_drops, &zero);

	if (d)
		*d += 1;
}

/* bytes_bucket counts n in the first of buckets whose bound (1, 10, 100,
 * ...) it does not exceed. */
static __always_inline void bytes_bucket(__u64 *buckets, __u64 n)
{
	__u64 bound = 1;

#pragma unroll
	for (int i = 0; i < BYTES_BUCKETS; i++) {
		if (n <= bound) {
			buckets[i]++;
			return;
		}
		bound *= 10;
	}
}

static __always_inline void aggregate(__u32 pid, __u32 status, __u64 duration, __u64 bytes, __u64 req_bytes)
{
	struct http_stats_key k = {.pid = pid, .status = status};
	struct http_stats *st = bpf_map_lookup_elem(&sm_http_stats, &k);

	if (!st) {
		struct http_stats zero = {};

		/* EEXIST from a racing CPU is fine: look up again. */
		bpf_map_update_elem(&sm_http_stats, &k, &zero, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&sm_http_stats, &k);
		if (!st) {
			count_drop(); /* the map is full */
			return;
		}
	}
	st->count++;
	st->duration_sum_ns += duration;
	st->bytes_sum += bytes;
#pragma unroll
	for (int i = 0; i < DURATION_BUCKETS; i++) {
		if (duration <= duration_bounds_ns[i]) {
			st->duration_buckets[i]++;
			break;
		}
	}
	bytes_bucket(st->bytes_buckets, bytes);
	st->req_bytes_sum += req_bytes;
	bytes_bucket(st->req_bytes_buckets, req_bytes);
}

SEC("uprobe/finish_request")
int sm_http_finish(struct regs *r)
{
	__u64 key = goroutine_key(r), w = GO_ARG1(r), req = 0, url = 0, duration;
	__u64 start = take_start(key);
	struct http_event *e;
	__s64 status = 0, written = 0, clen = 0;
	__u32 pid = bpf_get_current_pid_tgid() >> 32, code;

	if (!start)
		return 0;
	duration = bpf_ktime_get_ns() - start;
	bpf_probe_read_user(&status, sizeof(status), (void *)(w + off_response_status));
	bpf_probe_read_user(&written, sizeof(written), (void *)(w + off_response_written));
	/* finishRequest writes an implicit 200 itself when the handler wrote
	 * no header. */
	code = status ? (__u32)status : 200;
	if (written < 0)
		written = 0;
	/* Istio's request size is the body's; Content-Length gives it unless
	 * the body was chunked (-1), which counts as 0 here. */
	bpf_probe_read_user(&req, sizeof(req), (void *)(w + off_response_req));
	if (req)
		bpf_probe_read_user(&clen, sizeof(clen), (void *)(req + off_request_content_length));
	if (clen < 0)
		clen = 0;
	aggregate(pid, code, duration, written, clen);
	if (!emit_events)
		return 0;
	e = bpf_ringbuf_reserve(&sm_http_events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->duration_ns = duration;
	e->pid = pid;
	e->status = code;
	e->bytes = written;
	e->req_bytes = clen;
	if (req) {
		read_gostring(e->method, METHOD_LEN, req + off_request_method);
		bpf_probe_read_user(&url, sizeof(url), (void *)(req + off_request_url));
		if (url)
			read_gostring(e->path, PATH_LEN, url + off_url_path);
	}
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}
