//go:build ignore

/* Per-request telemetry for Go programs, from uprobes: servers and clients
 * of net/http (HTTP/1.x and the HTTP/2 bundled in net/http) and of gRPC.
 *
 * Every request has a start probe and an end probe, keyed by the goroutine
 * (start and end run on the same one):
 *
 *   what          start                            end
 *   HTTP server   the CALL of serverHandler.ServeHTTP in (*conn).serve
 *                                                  (*response).finishRequest (HTTP/1)
 *                 (*http2serverConn).runHandler    (*http2responseWriter).handlerDone (HTTP/2)
 *                 internal/http2 runHandler (1.27) internal/http2 (*responseWriter).handlerDone
 *                 x/net/http2 (*serverConn).runHandler   (*responseWriter).handlerDone
 *   HTTP client   (*Transport).roundTrip           the jump testing its call's error; RETs;
 *                                                  an HTTP/1 body: readLoop's closures
 *                                                  fn and earlyCloseFn (see body_pending)
 *                 x/net/http2 roundTripViaPool     the jump testing the error it returns; RETs
 *                                                  an HTTP/2 body (either): endStream's CALL
 *                                                  closing its pipe, or cleanupWriteRequest's
 *                                                  of abortStream (see h2c_pending)
 *   gRPC server   (*Server).handleStream           (*http2Server).writeStatus
 *   gRPC client   newClientStream                  (*clientStream).finish, keyed by the
 *                 (newAttemptLocked moves the      stream; the CALL of endOfClientStream
 *                 start to the stream)             in its deferred cleanup (failures)
 *
 * Probes sit on instructions the kernel emulates (the stack-check jump
 * after a function's entry, a conditional jump, a CALL), never on
 * uretprobes (they break Go's stack unwinding). A client's success ends on
 * a jump where its results are in registers (node/telemetry/gobin); the
 * RETs reachable without it (errors) are single-stepped, ~20 us a hit here.
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

/* Go's internal ABI on amd64: arguments and results in AX, BX, CX, DI, SI,
 * R8..R11; the current goroutine (g) in R14. */
#define GO_R1(r) ((r)->ax)
#define GO_R2(r) ((r)->bx)
#define GO_R3(r) ((r)->cx)
#define GO_R4(r) ((r)->di)
#define GO_R5(r) ((r)->si)
#define GO_R6(r) ((r)->r8)
#define GO_G(r) ((r)->r14)
/* A closure's context (its funcval) on entry. */
#define GO_CTX(r) ((r)->dx)

#define MAX_INT64 0x7fffffffffffffffULL

#define METHOD_LEN 8
#define PATH_LEN 64
#define PEER_LEN 64

/* Who reports a request, and in which protocol (Istio's reporter and
 * request_protocol labels). */
enum kind {
	KIND_HTTP_SERVER = 0,
	KIND_HTTP_CLIENT = 1,
	KIND_GRPC_SERVER = 2,
	KIND_GRPC_CLIENT = 3,
};

/* grpc_status when a request is not gRPC. */
#define GRPC_NONE 255

/* peer says who is on the other side, as the program found it: empty
 * (peer[0] == 0), text (a server's view: the client's address without its
 * port; a client's: the host or target it asked for, port kept), or an
 * address in binary (peer[0] == PEER_BINARY, peer[1] its length, 4 or 16,
 * from peer[2]). */
#define PEER_BINARY 0xff

struct http_event {
	__u64 duration_ns;
	__u64 bytes;
	__u64 req_bytes; /* its Content-Length; else what an HTTP/2 server took in, or 0 */
	__u32 pid;
	__u16 status;
	__u8 grpc_status;
	__u8 kind;
	__u8 method[METHOD_LEN];
	__u8 path[PATH_LEN]; /* gRPC: the full method, /package.Service/Method */
	__u8 peer[PEER_LEN];
	__u8 proto_major; /* HTTP/1 or 2; 0 if unknown */
};

/* Referenced so the type is in BTF for bpf2go -type. */
const struct http_event *unused_http_event __attribute__((unused));

struct start {
	__u64 key; /* the goroutine whose request holds the slot; 0: free */
	__u64 ns;
	__u64 arg[6]; /* what the end probe needs of the start's arguments;
		       * six make a slot one 64-byte cache line */
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

/* New keys start from this (in .rodata: too big for the stack). */
static const struct http_stats zero_stats;

struct http_stats_key {
	__u32 pid;
	__u16 status; /* HTTP status; 0: no response (a client's error) */
	__u8 grpc_status;
	__u8 kind;
	__u8 peer[PEER_LEN];
};

/* Envoy's default duration buckets (Istio's), in nanoseconds. */
static const __u64 duration_bounds_ns[DURATION_BUCKETS] = {
	500000ULL, 1000000ULL, 5000000ULL, 10000000ULL, 25000000ULL, 50000000ULL, 100000000ULL,
	250000000ULL, 500000000ULL, 1000000000ULL, 2500000000ULL, 5000000000ULL, 10000000000ULL,
	30000000000ULL, 60000000000ULL, 300000000000ULL, 600000000000ULL, 1800000000000ULL,
	3600000000000ULL,
};

/* The maps below are made once by the agent and shared by the programs
 * it loads for every probed executable (keys carry the pid): the kernel
 * memory telemetry takes does not grow with the number of processes.
 *
 * sm_http_stats: {pid, status, grpc status, kind, peer} -> http_stats, per
 * CPU (no atomics on the hot path). Written by the end probes, read by the
 * agent when Prometheus scrapes, a process's entries deleted when it exits.
 * 16384 entries (peers are addresses without ports and hosts a program asks
 * for, so few per process), allocated as keys appear (a preallocated
 * per-CPU map of this size would take 10 MB on two CPUs and more on every
 * other); when full, new keys are not counted (sm_http_drops counts them). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct http_stats_key);
	__type(value, struct http_stats);
} sm_http_stats SEC(".maps");

/* Offsets into Go structs, set at load time (node/telemetry/gobin). */
volatile const __u64 off_request_method = 0;
volatile const __u64 off_request_url = 16;
volatile const __u64 off_request_content_length = 88;
volatile const __u64 off_request_remote_addr = 176;
volatile const __u64 off_url_host = 40;
volatile const __u64 off_url_path = 56;
volatile const __u64 off_response_req = 8;
volatile const __u64 off_response_status = 120;
volatile const __u64 off_response_written = 104;
volatile const __u64 off_h2rw_rws = 0;
volatile const __u64 off_h2rws_req = 8;
volatile const __u64 off_h2rws_status = 72;
volatile const __u64 off_h2rws_wrote = 96;
volatile const __u64 off_h2rws_stream = 0;
volatile const __u64 off_h2st_body_bytes = 0;
volatile const __u64 off_xh2rw_rws = 0;
volatile const __u64 off_xh2rws_req = 8;
volatile const __u64 off_xh2rws_status = 72;
volatile const __u64 off_xh2rws_wrote = 96;
volatile const __u64 off_xh2rws_stream = 0;
volatile const __u64 off_xh2st_body_bytes = 0;
volatile const __u64 off_h2irw_rws = 0;
volatile const __u64 off_h2irws_req = 8;
volatile const __u64 off_h2irws_status = 240;
volatile const __u64 off_h2irws_wrote = 264;
volatile const __u64 off_h2irws_stream = 0;
volatile const __u64 off_h2ist_body_bytes = 0;
volatile const __u64 off_srq_method = 48;
volatile const __u64 off_srq_url = 64;
volatile const __u64 off_srq_content_length = 120;
volatile const __u64 off_srq_remote_addr = 128;
volatile const __u64 off_resp_status_code = 16;
volatile const __u64 off_resp_content_length = 80;
volatile const __u64 off_resp_proto_major = 40;
volatile const __u64 off_grpc_stream_method = 16;
volatile const __u64 off_grpc_server_peer_addr = 56;
volatile const __u64 off_tcpaddr_ip = 0;
volatile const __u64 off_status_s = 0;
volatile const __u64 off_spb_status_code = 40;
volatile const __u64 off_status_error_s = 0;
volatile const __u64 off_grpc_cc_target = 24;
volatile const __u64 off_grpc_sstream_stream = 0;
volatile const __u64 off_grpc_cstream_stream = 0;
volatile const __u64 off_grpc_cs_attempt = 0;
volatile const __u64 off_grpc_attempt_stream = 0;
volatile const __u64 off_resp_body = 64;
volatile const __u64 off_es_body = 0;
volatile const __u64 off_es_fn = 48;
volatile const __u64 off_es_early = 56;
volatile const __u64 off_gzip_body = 0;
volatile const __u64 off_body_src = 0;
volatile const __u64 off_body_r = 32;
volatile const __u64 off_lr_r = 0;
volatile const __u64 off_lr_n = 16;
volatile const __u64 off_bufio_buf = 0;
volatile const __u64 off_bufio_rd = 24;
volatile const __u64 off_bufio_r = 40;
volatile const __u64 off_bufio_w = 48;
volatile const __u64 off_pc_read_limit = 168;
/* The distance between the entries of the two closures net/http's
 * readLoop gives a response body, fn minus earlyCloseFn (see body_signal);
 * 0 when they were not found: responses then end at their headers. */
volatile const __s64 body_fn_delta = 0;
/* An HTTP/2 client stream (clientStream: net/http's bundled copy before
 * Go 1.27, net/http/internal/http2 after, which share these; h2x_ for
 * golang.org/x/net's own): its response (res: an *http.Response, or Go
 * 1.27's http2.ClientResponse, whose Body is at res_body), whether END_STREAM came
 * (readClosed, a bool), what its body reader has left of the
 * Content-Length (bytesRemain, untouched until the body is read), its
 * buffered pipe (bufPipe) and that pipe's buffer (bufPipe.b, an
 * interface), its abort error (abortErr, an interface); the buffer's
 * count of bytes still expected (dataBuffer.expected), and where a
 * gzipReader keeps the body it decompresses. h2c_ends and h2x_ends say
 * the probes that end a stream are attached (sm_h2c_end, sm_h2c_abort);
 * without them, responses end at their headers. */
volatile const __u64 off_h2c_res = 0;
volatile const __u64 off_h2c_res_body = 0;
volatile const __u64 off_h2c_closed = 0;
volatile const __u64 off_h2c_remain = 0;
volatile const __u64 off_h2c_pipe = 0;
volatile const __u64 off_h2c_buf = 0;
volatile const __u64 off_h2c_abort_err = 0;
volatile const __u64 off_h2c_expected = 0;
volatile const __u64 off_h2c_gzip_body = 0;
volatile const __u64 h2c_ends = 0;
volatile const __u64 off_h2x_res = 0;
volatile const __u64 off_h2x_res_body = 0;
volatile const __u64 off_h2x_closed = 0;
volatile const __u64 off_h2x_remain = 0;
volatile const __u64 off_h2x_pipe = 0;
volatile const __u64 off_h2x_buf = 0;
volatile const __u64 off_h2x_abort_err = 0;
volatile const __u64 off_h2x_expected = 0;
volatile const __u64 off_h2x_gzip_body = 0;
volatile const __u64 h2x_ends = 0;

/* sm_http_start: request starts, in slots chosen by a hash of the
 * goroutine key (g pointer + pid), claimed with compare-and-swap and freed
 * by the end probe; a request looks at START_PROBES slots from its own. An
 * array, not a hash: no bucket lock, no allocation, which cost most of the
 * probes' run time here. A handler that panics or a hijacked connection
 * never reaches its end probe: its slot counts as free once older than
 * START_STALE_NS, so nothing leaks. When every probed slot is taken the
 * request is not measured, and sm_http_drops counts it. */
#define START_SLOTS 65536
#define START_PROBES 4
#define START_STALE_NS (600ULL * 1000000000ULL)
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, START_SLOTS);
	__type(key, __u32);
	__type(value, struct start);
} sm_http_start SEC(".maps");

/* sm_http_events: one ring buffer for all events of all processes, read
 * by the agent on a timer (events are submitted without waking it:
 * batching the wake-ups is most of what probes cost a busy server). When
 * full, events are dropped and counted in sm_http_drops. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} sm_http_events SEC(".maps");

/* sm_http_drops: requests not counted or not reported (no start slot, a
 * full stats map, a full ring buffer). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sm_http_drops SEC(".maps");

/* What an end probe builds before counting: the key, and the HTTP version
 * for the event. On the program's stack: a per-CPU map shared by every
 * probed process could be overwritten by a program of another task that
 * preempts this one on the same CPU. */
struct scratch {
	struct http_stats_key key;
	__u8 proto_major;
};

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *d = bpf_map_lookup_elem(&sm_http_drops, &zero);

	if (d)
		*d += 1;
}

/* goroutine_key names a goroutine's request of one kind: a handler that
 * calls another service has a server and a client request open at once. */
static __always_inline __u64 goroutine_key(struct regs *r, enum kind kind)
{
	return GO_G(r) ^ ((__u64)(bpf_get_current_pid_tgid() >> 32) << 48) ^ ((__u64)(kind + 1) << 44);
}

static __always_inline __u32 start_slot(__u64 key)
{
	key ^= key >> 29;
	key *= 0xbf58476d1ce4e5b9ULL;
	key ^= key >> 32;
	return (__u32)key;
}

/* claim takes a start slot for key (a goroutine's request, a client
 * stream's, a response body's), holding it under hold (key, or another
 * while it is filled) with start time ns; NULL when every slot it may take
 * is held (the caller counts that). begin_key claims one with the
 * arguments an end probe needs. */
static __always_inline struct start *claim(__u64 key, __u64 ns, __u64 hold)
{
	__u32 base = start_slot(key);

#pragma unroll
	for (int i = 0; i < START_PROBES; i++) {
		__u32 idx = (base + i) & (START_SLOTS - 1);
		struct start *s = bpf_map_lookup_elem(&sm_http_start, &idx);
		__u64 old;

		if (!s)
			return 0;
		old = s->key;
		/* Signed: a slot claimed on another CPU after this program
		 * read its clock has a start in this one's future, which
		 * unsigned would take for stale, and steal. */
		if (old && old != key && (__s64)(ns - s->ns) < (__s64)START_STALE_NS)
			continue;
		if (__sync_val_compare_and_swap(&s->key, old, hold) != old)
			continue;
		s->ns = ns;
		return s;
	}
	return NULL;
}

static __always_inline int begin_key(__u64 key, __u64 ns, __u64 a0, __u64 a1, __u64 a2, __u64 a3, __u64 a4,
				     __u64 a5)
{
	struct start *s = claim(key, ns, key);

	if (!s)
		return 0;
	s->arg[0] = a0;
	s->arg[1] = a1;
	s->arg[2] = a2;
	s->arg[3] = a3;
	s->arg[4] = a4;
	s->arg[5] = a5;
	return 1;
}

/* publish_key is begin_key for a slot that an end probe on another CPU may
 * take at once: the slot is held under another key (key ^ 1: the keys
 * published are of aligned pointers) until its arguments are written, and
 * the compare-and-swap that then gives it its key is a full barrier. */
static __always_inline int publish_key(__u64 key, __u64 ns, __u64 a0, __u64 a1, __u64 a2, __u64 a4)
{
	struct start *s = claim(key, ns, key ^ 1);

	if (!s)
		return 0;
	s->arg[0] = a0;
	s->arg[1] = a1;
	s->arg[2] = a2;
	s->arg[3] = 0;
	s->arg[4] = a4;
	s->arg[5] = 0;
	return __sync_val_compare_and_swap(&s->key, key ^ 1, key) == (key ^ 1);
}

/* find_key returns the start slot key holds, or NULL. */
static __always_inline struct start *find_key(__u64 key)
{
	__u32 base = start_slot(key);

#pragma unroll
	for (int i = 0; i < START_PROBES; i++) {
		__u32 idx = (base + i) & (START_SLOTS - 1);
		struct start *s = bpf_map_lookup_elem(&sm_http_start, &idx);

		if (!s)
			return NULL;
		if (s->key == key)
			return s;
	}
	return NULL;
}

/* take_key copies and frees the start held for key; 0 if there is none. */
static __always_inline int take_key(__u64 key, struct start *out)
{
	struct start *s = find_key(key);

	if (!s)
		return 0;
	*out = *s;
	return __sync_val_compare_and_swap(&s->key, key, 0) == key;
}

/* take_if frees the start key holds if its arg[3] is v. */
static __always_inline void take_if(__u64 key, __u64 v)
{
	struct start *s = find_key(key);

	if (s && s->arg[3] == v)
		__sync_val_compare_and_swap(&s->key, key, 0);
}

/* gRPC message bytes of one transport stream (a *transport.Stream) are
 * counted in a start slot of their own, keyed by the stream's address:
 * arg[0] received, arg[1] sent, each message with its 5-byte prefix, as
 * Envoy counts an HTTP/2 body. The call's end takes them. A stream whose
 * first send and first receive race on two CPUs may count in two slots;
 * the end then sees one of them. */
static __always_inline __u64 bytes_key(__u64 stream)
{
	return stream ^ (3ULL << 61);
}

static __always_inline void bytes_add(__u64 stream, __u64 recv, __u64 sent)
{
	__u64 key = bytes_key(stream);
	struct start *s;

	if (!stream)
		return;
	s = find_key(key);
	if (s) {
		__sync_fetch_and_add(&s->arg[0], recv);
		__sync_fetch_and_add(&s->arg[1], sent);
		return;
	}
	if (!begin_key(key, bpf_ktime_get_ns(), recv, sent, 0, 0, 0, 0))
		count_drop();
}

/* bytes_take returns and frees the counts of stream (0 if none). */
static __always_inline void bytes_take(__u64 stream, __u64 *recv, __u64 *sent)
{
	struct start st;

	*recv = *sent = 0;
	if (stream && take_key(bytes_key(stream), &st)) {
		*recv = st.arg[0];
		*sent = st.arg[1];
	}
}

/* begin claims a start slot for the goroutine's request of kind. */
static __always_inline void begin(struct regs *r, enum kind kind, __u64 a0, __u64 a1, __u64 a2)
{
	if (!begin_key(goroutine_key(r, kind), bpf_ktime_get_ns(), a0, a1, a2, 0, 0, 0))
		count_drop();
}

/* take_start copies and frees the start of the goroutine's request of
 * kind; 0 if it has none. */
static __always_inline int take_start(struct regs *r, enum kind kind, struct start *out)
{
	return take_key(goroutine_key(r, kind), out);
}

static __always_inline __u64 read_u64(__u64 addr)
{
	__u64 v = 0;

	if (addr)
		bpf_probe_read_user(&v, sizeof(v), (void *)addr);
	return v;
}

/* read_fields reads the n u64 fields at a+off[i] into v[i] (offsets the
 * loader set, which the verifier knows) with one copy when they lie within
 * READ_SPAN bytes of each other, else one copy each: every
 * bpf_probe_read_user costs, and a request's end reads a handful. */
#define READ_SPAN 192
static __always_inline void read_fields(__u64 a, const __u64 *off, __u64 *v, const int n)
{
	__u64 lo = off[0], hi = off[0], odd = 0;
	__u64 buf[READ_SPAN / 8];

#pragma unroll
	for (int i = 0; i < n; i++) {
		v[i] = 0;
		lo = off[i] < lo ? off[i] : lo;
		hi = off[i] > hi ? off[i] : hi;
		odd |= off[i] & 7;
	}
	hi += 8;
	if (!a)
		return;
	if (hi - lo > READ_SPAN || odd) {
#pragma unroll
		for (int i = 0; i < n; i++)
			v[i] = read_u64(a + off[i]);
		return;
	}
	if (bpf_probe_read_user(buf, hi - lo, (void *)(a + lo)))
		return;
#pragma unroll
	for (int i = 0; i < n; i++)
		v[i] = buf[(off[i] - lo) / 8];
}

/* read2 and read3 are read_fields of two and three fields. */
static __always_inline void read2(__u64 a, __u64 o1, __u64 o2, __u64 *v1, __u64 *v2)
{
	__u64 off[2] = {o1, o2}, v[2];

	read_fields(a, off, v, 2);
	*v1 = v[0];
	*v2 = v[1];
}

static __always_inline void read3(__u64 a, __u64 o1, __u64 o2, __u64 o3, __u64 *v1, __u64 *v2, __u64 *v3)
{
	__u64 off[3] = {o1, o2, o3}, v[3];

	read_fields(a, off, v, 3);
	*v1 = v[0];
	*v2 = v[1];
	*v3 = v[2];
}

/* copy_str copies len bytes of a Go string's data at ptr into dst (NUL
 * padded, truncated to size-1). size is a power of two. */
static __always_inline __u32 copy_str(__u8 *dst, __u32 size, __u64 ptr, __s64 len)
{
	__u32 n;

	if (!ptr || len <= 0)
		return 0;
	n = len < size - 1 ? len : size - 1;
	if (bpf_probe_read_user(dst, n & (size - 1), (void *)ptr))
		return 0;
	return n;
}

/* read_gostring copies the Go string (pointer, length) at addr into dst. */
static __always_inline __u32 read_gostring(__u8 *dst, __u32 size, __u64 addr)
{
	struct {
		__u64 ptr;
		__s64 len;
	} s = {};

	if (!addr || bpf_probe_read_user(&s, sizeof(s), (void *)addr))
		return 0;
	return copy_str(dst, size, s.ptr, s.len);
}

/* cut_port ends the n-byte "host:port" text at its last colon: a server
 * keys its clients by address, not by connection. A port has at most five
 * digits, so only the last seven bytes are looked at; a text without a
 * colon there ends up empty (unknown). */
static __always_inline void cut_port(__u8 *peer, __u32 n)
{
#pragma unroll
	for (int i = 1; i <= 7; i++) {
		__u32 at = n - i;

		if (i > n)
			break;
		/* Keep the mask: clang drops it, knowing i <= n, and the
		 * verifier does not. */
		asm volatile("" : "+r"(at));
		at &= PEER_LEN - 1;
		if (peer[at] == ':') {
#pragma unroll
			for (int j = 0; j < 7; j++) {
				__u32 k = at + j;

				asm volatile("" : "+r"(k));
				if (j < i)
					peer[k & (PEER_LEN - 1)] = 0;
			}
			return;
		}
	}
	peer[0] = 0;
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

static __always_inline void aggregate(struct http_stats_key *k, __u64 duration, __u64 bytes, __u64 req_bytes)
{
	struct http_stats *st = bpf_map_lookup_elem(&sm_http_stats, k);

	if (!st) {
		/* EEXIST from a racing CPU is fine: look up again. */
		bpf_map_update_elem(&sm_http_stats, k, &zero_stats, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&sm_http_stats, k);
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

static __always_inline void init_scratch(struct scratch *s, __u32 pid, __u32 status, __u8 grpc_status, __u8 kind)
{
	__builtin_memset(s, 0, sizeof(*s));
	s->key.pid = pid;
	s->key.status = status;
	s->key.grpc_status = grpc_status;
	s->key.kind = kind;
}

/* finish counts the request whose key is in s, and reports it in an event
 * if events are on: the method and path are Go strings at method and path
 * (addresses of their headers, 0 if unknown), or the path is the string
 * (path_ptr, path_len) when path is 0. */
static __always_inline void finish(struct scratch *s, __u64 duration, __u64 bytes, __u64 req_bytes, __u64 method,
				   __u64 path, __u64 path_ptr, __s64 path_len)
{
	struct http_event *e;

	aggregate(&s->key, duration, bytes, req_bytes);
	if (!emit_events)
		return;
	e = bpf_ringbuf_reserve(&sm_http_events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->duration_ns = duration;
	e->pid = s->key.pid;
	e->status = s->key.status;
	e->grpc_status = s->key.grpc_status;
	e->kind = s->key.kind;
	e->bytes = bytes;
	e->req_bytes = req_bytes;
	e->proto_major = s->proto_major;
	__builtin_memcpy(e->peer, s->key.peer, PEER_LEN);
	if (method)
		read_gostring(e->method, METHOD_LEN, method);
	if (path)
		read_gostring(e->path, PATH_LEN, path);
	else
		copy_str(e->path, PATH_LEN, path_ptr, path_len);
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

static __always_inline __u64 nonneg(__s64 v)
{
	return v < 0 ? 0 : v;
}

/* Where a server's request keeps what server_done reads: an
 * *http.Request's fields, or those of Go 1.27's http2.ServerRequest. */
struct req_fields {
	__u64 method, url, content_length, remote_addr;
};

#define HTTP_REQUEST                                                                                                   \
	((struct req_fields){off_request_method, off_request_url, off_request_content_length, off_request_remote_addr})

/* is_head says whether the 4 bytes at p (a method's) are "HEAD". */
static __always_inline int is_head(__u64 p)
{
	__u32 m = 0;

	bpf_probe_read_user(&m, sizeof(m), (void *)p);
	return m == ('H' | 'E' << 8 | 'A' << 16 | 'D' << 24);
}

/* server_done reports an HTTP request a server finished: req is its
 * *http.Request (or a request with the fields at f), code the status
 * written (0: none, an implicit 200). An HTTP/2 request's body without a
 * Content-Length counts what its stream took in so far: the stream
 * pointer is at stream_at (0: none), its byte count body_off into it. */
static __always_inline void server_done_at(struct regs *r, __u64 req, struct req_fields f, __s64 code, __s64 written,
					   __u8 proto_major, __u64 stream_at, __u64 body_off)
{
	__u64 off[5] = {f.remote_addr, f.remote_addr + 8, f.content_length, f.method, f.method + 8}, v[5], url, clen;
	struct start st;
	struct scratch s;
	__u32 n;

	if (!take_start(r, KIND_HTTP_SERVER, &st))
		return;
	init_scratch(&s, bpf_get_current_pid_tgid() >> 32, code > 0 && code < 1000 ? code : 200, GRPC_NONE, KIND_HTTP_SERVER);
	s.proto_major = proto_major;
	/* RemoteAddr's pointer and length, Content-Length and the method's
	 * pointer and length, in one copy. */
	read_fields(req, off, v, 5);
	clen = v[2];
	/* No body goes out for HEAD, whatever the handler wrote (only a
	 * four-letter method with something written is looked at). */
	if (written > 0 && v[4] == 4 && is_head(v[3]))
		written = 0;
	n = copy_str(s.key.peer, PEER_LEN, v[0], v[1]);
	cut_port(s.key.peer, n);
	url = emit_events ? read_u64(req + f.url) : 0;
	/* Istio's request size is the body's: its Content-Length, or what
	 * an HTTP/2 stream counted of it (only then read: no cost to a
	 * request with a length). An HTTP/1 chunked body counts 0: sizing it
	 * takes a read in the start program of every request, which cost
	 * ~250 ns there (KERNEL.md). */
	if ((__s64)clen < 0 && stream_at)
		clen = read_u64(read_u64(stream_at) + body_off);
	finish(&s, bpf_ktime_get_ns() - st.ns, nonneg(written), nonneg(clen), req + f.method, url ? url + off_url_path : 0,
	       0, 0);
}

static __always_inline void server_done(struct regs *r, __u64 req, __s64 code, __s64 written, __u8 proto_major,
					__u64 stream_at, __u64 body_off)
{
	server_done_at(r, req, HTTP_REQUEST, code, written, proto_major, stream_at, body_off);
}

SEC("uprobe/serve_http")
int sm_http_serve(struct regs *r)
{
	begin(r, KIND_HTTP_SERVER, 0, 0, 0);
	return 0;
}

/* (*conn).hijackLocked: the handler takes the connection over (a
 * websocket, h2c's prior-knowledge upgrade); finishRequest will not come,
 * so the start is freed now instead of holding its slot for minutes. The
 * request is not counted: what follows is no longer HTTP/1. */
SEC("uprobe/hijack")
int sm_http_hijack(struct regs *r)
{
	struct start st;

	take_start(r, KIND_HTTP_SERVER, &st);
	return 0;
}

/* (*response).finishRequest(w): HTTP/1 handler returned. */
SEC("uprobe/finish_request")
int sm_http_finish(struct regs *r)
{
	__u64 req, status, written;

	read3(GO_R1(r), off_response_req, off_response_status, off_response_written, &req, &status, &written);
	if (!req)
		return 0;
	server_done(r, req, status, written, 1, 0, 0);
	return 0;
}

/* h2_done reports the request of an HTTP/2 responseWriter w whose handler
 * returned; the offsets are those of the bundled or golang.org/x/net copy. */
static __always_inline void h2_done(struct regs *r, __u64 w, __u64 rws_off, __u64 req_off, __u64 status_off,
				    __u64 wrote_off, __u64 stream_off, __u64 body_off)
{
	__u64 rws = read_u64(w + rws_off), req, status, wrote;

	read3(rws, req_off, status_off, wrote_off, &req, &status, &wrote);
	if (!req)
		return;
	server_done(r, req, status, wrote, 2, rws + stream_off, body_off);
}

/* net/http.(*http2responseWriter).handlerDone(w): HTTP/2 handler returned. */
SEC("uprobe/h2_handler_done")
int sm_h2_done(struct regs *r)
{
	h2_done(r, GO_R1(r), off_h2rw_rws, off_h2rws_req, off_h2rws_status, off_h2rws_wrote, off_h2rws_stream,
		off_h2st_body_bytes);
	return 0;
}

/* golang.org/x/net/http2.(*responseWriter).handlerDone(w): the same, in
 * x/net's copy (h2c.NewHandler, http2.Server). Its requests start at
 * (*serverConn).runHandler: they do not pass net/http's serverHandler. */
SEC("uprobe/xh2_handler_done")
int sm_xh2_done(struct regs *r)
{
	h2_done(r, GO_R1(r), off_xh2rw_rws, off_xh2rws_req, off_xh2rws_status, off_xh2rws_wrote, off_xh2rws_stream,
		off_xh2st_body_bytes);
	return 0;
}

/* net/http/internal/http2.(*responseWriter).handlerDone(w) (Go 1.27+,
 * where net/http's HTTP/2 is an internal package, and golang.org/x/net's
 * wraps it): its responseWriterState holds the request as an
 * http2.ServerRequest, by value. Its requests start at that package's
 * (*serverConn).runHandler (x/net's h2c handler does not pass
 * serverHandler; HTTP/1 requests start on serverHandler's CALL in
 * (*conn).serve, so net/http's own HTTP/2 ones start once too). */
SEC("uprobe/h2i_handler_done")
int sm_h2i_done(struct regs *r)
{
	__u64 rws = read_u64(GO_R1(r) + off_h2irw_rws), status, wrote;

	if (!rws)
		return 0;
	read2(rws, off_h2irws_status, off_h2irws_wrote, &status, &wrote);
	server_done_at(r, rws + off_h2irws_req,
		       (struct req_fields){off_srq_method, off_srq_url, off_srq_content_length, off_srq_remote_addr}, status,
		       wrote, 2, rws + off_h2irws_stream, off_h2ist_body_bytes);
	return 0;
}

/* (*Transport).roundTrip(t, req): a client sends a request. */
SEC("uprobe/round_trip")
int sm_http_client_start(struct regs *r)
{
	begin(r, KIND_HTTP_CLIENT, GO_R2(r), 0, 0);
	return 0;
}

/* client_report counts a client request that started at start_ns: req
 * its *http.Request, code and proto its response's status and HTTP
 * version (0: no response), bytes the response body's size. */
static __always_inline void client_report(__u64 start_ns, __u64 req, __u64 code, __u64 proto, __u64 bytes)
{
	__u64 url, clen, host, hostlen;
	struct scratch s;

	init_scratch(&s, bpf_get_current_pid_tgid() >> 32, code < 1000 ? code : 0, GRPC_NONE, KIND_HTTP_CLIENT);
	s.proto_major = proto;
	read2(req, off_request_url, off_request_content_length, &url, &clen);
	read2(url, off_url_host, off_url_host + 8, &host, &hostlen);
	copy_str(s.key.peer, PEER_LEN, host, hostlen);
	finish(&s, bpf_ktime_get_ns() - start_ns, bytes, nonneg(clen), req + off_request_method,
	       url ? url + off_url_path : 0, 0, 0);
}

/* An HTTP/1 response's body is a *bodyEOFSignal (net/http's transport.go)
 * that net/http's readLoop gives two closures: fn(err), which the body
 * calls once it reads io.EOF or fails, and earlyCloseFn(), which it calls
 * when it is closed before that. A client request whose body has not all
 * arrived with its headers ends in whichever runs first (the probes on
 * their entries): as for a sidecar, the response is over when its body
 * is. Between the two, a start slot for each closure (keyed by the
 * closure, which is in DX when it runs) holds arg[0] the request, arg[1]
 * the connection's *bufio.Reader, arg[2] the *persistConn, arg[3] the
 * other slot's key, arg[4] status | proto << 16 | bytes already buffered
 * << 24, arg[5] the response's Content-Length. */

static __always_inline __u64 body_key(__u64 closure)
{
	return closure ^ (5ULL << 59);
}

/* signal_of returns the *bodyEOFSignal behind a response body (the data
 * word of Response.Body), itself or under a gzipReader (a transparently
 * decompressed body), with v its body's data word, fn and earlyCloseFn;
 * 0 when it does not look like one (no body). Only the shape is checked
 * here: is_signal proves it. */
static __always_inline __u64 signal_of(__u64 body, __u64 *v)
{
	__u64 off[3] = {off_es_body + 8, off_es_fn, off_es_early};

	read_fields(body, off, v, 3);
	if (v[0] && v[1] && v[2])
		return body;
	/* A gzipReader: its first word, the signal; its second, an unlocked
	 * mutex (0), which no signal's body pointer is. */
	body = read_u64(body + off_gzip_body);
	read_fields(body, off, v, 3);
	return v[0] && v[1] && v[2] ? body : 0;
}

/* is_signal proves what signal_of found (v): a bodyEOFSignal of this
 * executable's readLoop has two closures whose code lies body_fn_delta
 * apart, as the loader measured them in the file; a load address moves
 * both alike. */
static __always_inline int is_signal(__u64 *v)
{
	return (__s64)(read_u64(v[1]) - read_u64(v[2])) == body_fn_delta;
}

/* is_bufio says whether a is a *bufio.Reader as net/http's transport
 * makes one for a connection (its buffer full length, a reader under it,
 * its positions within the buffer), with pos its reader's data word (the
 * *persistConn) and its read and write positions. */
static __always_inline int is_bufio(__u64 a, __u64 *pos)
{
	__u64 off[5] = {off_bufio_buf + 8, off_bufio_buf + 16, off_bufio_rd + 8, off_bufio_r, off_bufio_w}, v[5];

	read_fields(a, off, v, 5);
	pos[0] = v[2];
	pos[1] = v[3];
	pos[2] = v[4];
	return v[0] && v[0] == v[1] && v[2] && v[3] <= v[4] && v[4] <= v[0];
}

/* conn_reader returns the connection's *bufio.Reader a response body (a
 * *body, transfer.go) reads, with is_bufio's pos: the body's r when it is
 * chunked, else under its src: an io.LimitedReader over it (a
 * Content-Length: *left is what it has left to read), or the reader
 * itself (a body that lasts until the connection closes). 0 if none is
 * found; *left is -1 unless a Content-Length is. */
static __always_inline __u64 conn_reader(__u64 body, __u64 *pos, __s64 *left)
{
	__u64 off[2] = {off_body_src + 8, off_body_r}, v[2], loff[2] = {off_lr_r + 8, off_lr_n}, lr[2];

	*left = -1;
	read_fields(body, off, v, 2);
	if (v[1])
		return is_bufio(v[1], pos) ? v[1] : 0;
	read_fields(v[0], loff, lr, 2);
	if (is_bufio(lr[0], pos)) {
		*left = lr[1];
		return lr[0];
	}
	return is_bufio(v[0], pos) ? v[0] : 0;
}

/* body_pending hands a request whose HTTP/1 response (status code,
 * Content-Length clen, body the data word of its Body) has a body still
 * arriving to the closures that end it. 0 when the request ends now
 * instead: no such body, no slot, or all of the body came with the
 * headers (then *bytes is its size, for a compressed one too). */
static __always_inline int body_pending(struct start *st, __u64 code, __u64 clen, __u64 body, __u64 *bytes)
{
	__u64 v[3], pos[3], bufio, kfn, kearly, packed;
	__s64 left;

	if (!body_fn_delta || !signal_of(body, v))
		return 0;
	/* What the connection's reader holds already is the body's start. */
	bufio = conn_reader(v[0], pos, &left);
	if (!bufio || pos[2] - pos[1] >= 1ULL << 40)
		return 0;
	if (left >= 0 && pos[2] - pos[1] >= left) {
		*bytes = left;
		return 0;
	}
	if (!is_signal(v))
		return 0;
	kfn = body_key(v[1]);
	kearly = body_key(v[2]);
	packed = (code & 0xffff) | 1 << 16 | (pos[2] - pos[1]) << 24;
	if (!begin_key(kfn, st->ns, st->arg[0], bufio, pos[0], kearly, packed, clen))
		return 0;
	if (!begin_key(kearly, st->ns, st->arg[0], bufio, pos[0], kfn, packed, clen)) {
		take_if(kfn, kearly);
		return 0;
	}
	return 1;
}

/* An HTTP/2 client response ends with its stream, as an HTTP/1 one with
 * its body: where END_STREAM comes (the read loop's endStream, on its CALL
 * that closes the body's pipe, after it set readClosed), or where the
 * stream is aborted before that (the body closed early, a reset, a
 * cancelled request: the CALL of abortStream in cleanupWriteRequest, made
 * once a stream and only then). Both run on goroutines other than the
 * caller's, and the end often comes first (a small response's HEADERS and
 * DATA arrive together and the read loop goes on while the caller wakes).
 * So the caller, at its headers, hands the request over in a slot keyed by
 * the stream (publish_key), then looks at readClosed and abortErr again;
 * an end sets one of them before it looks for the slot. A full barrier
 * sits between each side's store and load, so at least one side sees the
 * other's; the one that takes the slot reports. The slot holds arg[0] the
 * request, arg[1] the pipe's *dataBuffer, arg[2] bytesRemain at the
 * headers, arg[4] status | 2 << 16.
 *
 * Size: the buffer counts expected down from the Content-Length (-1 when
 * unknown) by each byte of DATA it takes in, so bytesRemain at the headers
 * (the same Content-Length: nothing read it yet) less expected at the end
 * is the body as it came (padding aside): the compressed size for a body
 * decompressed on the way, what had come for one closed early. */
struct h2c_layout {
	__u64 res, res_body, closed, remain, pipe, buf, abort_err, expected, gzip_body;
};

#define H2C_STD                                                                                                        \
	((struct h2c_layout){off_h2c_res, off_h2c_res_body, off_h2c_closed, off_h2c_remain, off_h2c_pipe, off_h2c_buf,  \
			     off_h2c_abort_err, off_h2c_expected, off_h2c_gzip_body})
#define H2C_XNET                                                                                                       \
	((struct h2c_layout){off_h2x_res, off_h2x_res_body, off_h2x_closed, off_h2x_remain, off_h2x_pipe, off_h2x_buf,  \
			     off_h2x_abort_err, off_h2x_expected, off_h2x_gzip_body})

/* Only its locked add matters: a full barrier on the end probes' side. */
__u64 h2c_fence;

static __always_inline __u64 h2c_key(__u64 cs)
{
	return cs ^ (6ULL << 59);
}

/* h2c_size is the body's size: bytesRemain at the headers less what the
 * buffer buf still expects; Content-Length when that makes no sense. */
static __always_inline __u64 h2c_size(__u64 remain, __u64 buf, __u64 expected_off)
{
	__s64 n;

	if (!buf)
		return nonneg(remain);
	n = (__s64)remain - (__s64)read_u64(buf + expected_off);
	return n >= 0 ? n : nonneg(remain);
}

/* h2c_over says whether the stream cs has ended: END_STREAM came
 * (readClosed) or it was aborted (abortErr, an interface, is set). */
static __always_inline int h2c_over(__u64 cs, struct h2c_layout l)
{
	/* Both in one copy: the bool as a byte of its aligned word. */
	__u64 off[2] = {l.closed & ~7ULL, l.abort_err}, v[2];

	read_fields(cs, off, v, 2);
	return ((v[0] >> ((l.closed & 7) * 8)) & 0xff) || v[1];
}

/* h2c_of says whether cs is the stream in layout l of a response body
 * (the data word of Response.Body): its own response has that body. */
static __always_inline int h2c_of(__u64 cs, __u64 body, struct h2c_layout l)
{
	__u64 res = read_u64(cs + l.res);

	return res && read_u64(res + l.res_body + 8) == body;
}

/* h2c_stream returns the stream behind a response body (a
 * transportResponseBody is the stream pointer, maybe under a gzipReader),
 * or 0 if it is not one in layout l. */
static __always_inline __u64 h2c_stream(__u64 body, struct h2c_layout l)
{
	__u64 cs;

	if (!body)
		return 0;
	if (h2c_of(body, body, l))
		return body;
	cs = read_u64(body + l.gzip_body + 8);
	return cs && h2c_of(cs, body, l) ? cs : 0;
}

/* h2c_handoff hands the request st, whose response (status code) is on
 * stream cs, to the stream's end; 0 when it ends now instead (*bytes then
 * its size so far: the stream is over, or there is no body buffer or
 * slot). */
static __always_inline int h2c_handoff(struct start *st, __u64 code, __u64 cs, struct h2c_layout l, __u64 *bytes)
{
	__u64 remain, buf;
	struct start done;

	read2(cs, l.remain, l.buf + 8, &remain, &buf);
	if (!buf)
		return 0;
	*bytes = h2c_size(remain, buf, l.expected);
	if (h2c_over(cs, l))
		return 0;
	if (!publish_key(h2c_key(cs), st->ns, st->arg[0], buf, remain, (code & 0xffff) | 2 << 16))
		return 0;
	/* Ended meanwhile: its end may have looked before the slot was
	 * there; whichever takes it reports. */
	if (!h2c_over(cs, l) || !take_key(h2c_key(cs), &done))
		return 1;
	*bytes = h2c_size(remain, buf, l.expected);
	return 0;
}

/* h2c_pending hands a request whose HTTP/2 response (status code, Body's
 * data word body) has a body still arriving to its stream's end; 0 when
 * it ends now (*bytes then its size, if known). */
static __always_inline int h2c_pending(struct start *st, __u64 code, __u64 body, __u64 *bytes)
{
	struct h2c_layout l = H2C_STD;
	__u64 cs = h2c_ends ? h2c_stream(body, l) : 0;

	/* One layout or the other, then one handoff: the verifier walks it
	 * once, not once a layout. */
	if (!cs && h2x_ends) {
		l = H2C_XNET;
		cs = h2c_stream(body, l);
	}
	return cs && h2c_handoff(st, code, cs, l, bytes);
}

/* h2c_end ends the request handed to stream cs, if it was. Its size comes
 * from the pipe's buffer as the headers found it. An abort reads the
 * pipe's buffer again first (live_at: where its data word is): a body
 * closed early has let go of it (the read loop's END_STREAM never has),
 * and only then is the one noted used, which the program no longer
 * holds: Go frees it in a later GC cycle, not in the microseconds until
 * the stream's cleanup runs, but under a long scheduling delay the size
 * read there could be another object's (h2c_size drops a negative one). */
static __always_inline void h2c_end(__u64 cs, __u64 live_at, __u64 expected_off)
{
	struct start st;
	__u64 buf;

	/* The store that ended the stream (readClosed, abortErr) before the
	 * look for its slot. */
	__sync_fetch_and_add(&h2c_fence, 1);
	if (!take_key(h2c_key(cs), &st))
		return;
	buf = live_at ? read_u64(live_at) : 0;
	client_report(st.ns, st.arg[0], st.arg[4] & 0xffff, 2, h2c_size(st.arg[2], buf ? buf : st.arg[1], expected_off));
}

/* The CALL of (*pipe).closeWithError in (*clientConnReadLoop).endStream:
 * END_STREAM came; AX is &cs.bufPipe. */
SEC("uprobe/h2c_end")
int sm_h2c_end(struct regs *r)
{
	h2c_end(GO_R1(r) - off_h2c_pipe, 0, off_h2c_expected);
	return 0;
}

SEC("uprobe/h2x_end")
int sm_h2x_end(struct regs *r)
{
	h2c_end(GO_R1(r) - off_h2x_pipe, 0, off_h2x_expected);
	return 0;
}

/* The CALL of (*clientStream).abortStream in cleanupWriteRequest: the
 * stream ended otherwise; AX is cs. */
SEC("uprobe/h2c_abort")
int sm_h2c_abort(struct regs *r)
{
	h2c_end(GO_R1(r), GO_R1(r) + off_h2c_buf + 8, off_h2c_expected);
	return 0;
}

SEC("uprobe/h2x_abort")
int sm_h2x_abort(struct regs *r)
{
	h2c_end(GO_R1(r), GO_R1(r) + off_h2x_buf + 8, off_h2x_expected);
	return 0;
}

#define NO_SIZE (~0ULL)

/* client_done ends a client request at a return point of
 * (*Transport).roundTrip: (resp, err) in AX and BX, CX. Status 0 when there
 * is no response (the error's). A body still arriving ends it later: an
 * HTTP/1 one (body_pending), an HTTP/2 stream (h2c_pending). */
static __always_inline int client_done(struct regs *r)
{
	__u64 off[4] = {off_resp_status_code, off_resp_content_length, off_resp_proto_major, off_resp_body + 8}, v[4],
	      bytes;
	struct start st;

	if (!take_start(r, KIND_HTTP_CLIENT, &st) || !st.arg[0])
		return 0;
	read_fields(GO_R1(r), off, v, 4);
	/* Istio's response size is the body's, as the body says (NO_SIZE
	 * while it has not). */
	bytes = NO_SIZE;
	if (v[0] && v[2] == 1 && body_pending(&st, v[0], v[1], v[3], &bytes))
		return 0;
	if (v[0] && v[2] == 2 && h2c_pending(&st, v[0], v[3], &bytes))
		return 0;
	/* No body seen: the Content-Length (0 when unknown), but none for a
	 * HEAD request, whose response carries the length of a body it does
	 * not have (only looked at then). */
	if (bytes == NO_SIZE) {
		__u64 method[2];

		bytes = nonneg(v[1]);
		read2(st.arg[0], off_request_method, off_request_method + 8, &method[0], &method[1]);
		if (bytes && method[1] == 4 && is_head(method[0]))
			bytes = 0;
	}
	client_report(st.ns, st.arg[0], v[0], v[2], bytes);
	return 0;
}

/* body_end ends the request whose response body's closure (fn or
 * earlyCloseFn) runs now. Its size is what the body took from the
 * connection: what was buffered at the headers, plus what the *persistConn
 * has read since (its readLimit counts down from MAX_INT64 for a body),
 * less what is still buffered (the next response's, if any). That is the
 * body as it came over the wire: a chunked body's chunk framing counts,
 * as it does in a sidecar's count, and a compressed body's compressed
 * size. */
static __always_inline void body_end(struct regs *r)
{
	__u64 closure = GO_CTX(r), pos[2], boff[2] = {off_bufio_r, off_bufio_w}, limit, buffered, bytes;
	struct start st;

	if (!take_key(body_key(closure), &st))
		return;
	take_if(st.arg[3], body_key(closure));
	read_fields(st.arg[1], boff, pos, 2);
	limit = read_u64(st.arg[2] + off_pc_read_limit);
	buffered = st.arg[4] >> 24;
	bytes = buffered + (MAX_INT64 - limit) - (pos[1] - pos[0]);
	/* Nonsense (a read failed, the connection's state not as expected):
	 * the header's Content-Length, as a body without these probes
	 * reports. A body's readLimit never counts down to 0. */
	if (!limit || limit > MAX_INT64 || pos[1] < pos[0] || (__s64)bytes < 0)
		bytes = nonneg(st.arg[5]);
	client_report(st.ns, st.arg[0], st.arg[4] & 0xffff, (st.arg[4] >> 16) & 0xff, bytes);
}

/* The entries of readLoop's fn closure (the body read io.EOF or failed)
 * and earlyCloseFn closure (the body was closed before its end). */
SEC("uprobe/body_end")
int sm_http_body_end(struct regs *r)
{
	body_end(r);
	return 0;
}

/* A RET of (*Transport).roundTrip: every return but the one the next
 * probe sees, or every return when that probe could not be placed. */
SEC("uprobe/round_trip_ret")
int sm_http_client_end(struct regs *r)
{
	return client_done(r);
}

/* The jump on the error right after roundTrip's call to
 * (*persistConn).roundTrip (gobin.SuccessReturn), or the one before x/net's
 * roundTripViaPool returns (gobin.NilReturnTests): the results are in AX,
 * BX and CX, and the kernel emulates a jump where it single-steps a RET
 * (16-26 µs a hit here). An error here may be retried; the request ends
 * at a RET then. */
SEC("uprobe/round_trip_ok")
int sm_http_client_ok(struct regs *r)
{
	if (GO_R2(r))
		return 0;
	return client_done(r);
}

/* grpc_code reads the code of a *status.Status (nil: OK). Codes beyond
 * the 17 gRPC has count as Unknown (2). */
static __always_inline __u8 grpc_code(__u64 status)
{
	__u64 pb;
	__s32 code = 0;

	if (!status)
		return 0;
	pb = read_u64(status + off_status_s);
	if (!pb)
		return 0;
	bpf_probe_read_user(&code, sizeof(code), (void *)(pb + off_spb_status_code));
	return code >= 0 && code <= 16 ? code : 2;
}

/* (*Server).handleStream(s, t, stream): a gRPC server starts a call. */
SEC("uprobe/grpc_handle_stream")
int sm_grpc_serve(struct regs *r)
{
	begin(r, KIND_GRPC_SERVER, 0, 0, 0);
	return 0;
}

/* (*http2Server).writeStatus(t, stream, st): the call's status goes out.
 * The peer is t.peer.Addr, a *net.TCPAddr. */
SEC("uprobe/grpc_write_status")
int sm_grpc_serve_end(struct regs *r)
{
	__u64 t = GO_R1(r), stream = GO_R2(r), addr, recv, sent;
	struct { __u64 ptr; __s64 len; } ip = {};
	struct scratch s;
	struct start st;

	if (!take_start(r, KIND_GRPC_SERVER, &st))
		return 0;
	init_scratch(&s, bpf_get_current_pid_tgid() >> 32, 200, grpc_code(GO_R3(r)), KIND_GRPC_SERVER);
	s.proto_major = 2;
	/* An interface: {itab, data}; the data is the *net.TCPAddr. */
	addr = read_u64(t + off_grpc_server_peer_addr + 8);
	if (addr && !bpf_probe_read_user(&ip, sizeof(ip), (void *)(addr + off_tcpaddr_ip)) && ip.ptr &&
	    (ip.len == 4 || ip.len == 16)) {
		s.key.peer[0] = PEER_BINARY;
		s.key.peer[1] = ip.len;
		bpf_probe_read_user(&s.key.peer[2], ip.len & 16 ? 16 : 4, (void *)ip.ptr);
	}
	bytes_take(stream + off_grpc_sstream_stream, &recv, &sent);
	finish(&s, bpf_ktime_get_ns() - st.ns, sent, recv, 0, stream + off_grpc_stream_method, 0, 0);
	return 0;
}

/* (*transport.Stream).read(s, n): n bytes of one message are read from a
 * stream, client or server, after its 5-byte prefix. */
SEC("uprobe/grpc_read")
int sm_grpc_read(struct regs *r)
{
	__s64 n = GO_R2(r);

	if (n >= 0)
		bytes_add(GO_R1(r), n + 5, 0);
	return 0;
}

/* grpc_sent counts a message written to a stream: write(t, s, hdr, data,
 * opts) with hdr the 5-byte prefix (flag, big-endian length) in CX, DI. */
static __always_inline void grpc_sent(struct regs *r, __u64 stream)
{
	__u8 hdr[5] = {};

	if (GO_R4(r) < 5 || bpf_probe_read_user(hdr, sizeof(hdr), (void *)GO_R3(r)))
		return;
	bytes_add(stream, 0, 5 + ((__u64)hdr[1] << 24 | (__u64)hdr[2] << 16 | (__u64)hdr[3] << 8 | hdr[4]));
}

/* (*http2Server).write(t, s *ServerStream, hdr, data, opts). */
SEC("uprobe/grpc_server_write")
int sm_grpc_srv_write(struct regs *r)
{
	grpc_sent(r, GO_R2(r) + off_grpc_sstream_stream);
	return 0;
}

/* (*http2Client).write(t, s *ClientStream, hdr, data, opts). */
SEC("uprobe/grpc_client_write")
int sm_grpc_cli_write(struct regs *r)
{
	grpc_sent(r, GO_R2(r) + off_grpc_cstream_stream);
	return 0;
}

/* grpc_error_code is the gRPC code of a Go error (itab, data) a grpc
 * function returns or is given: nil is OK, io.EOF (a stream's normal end:
 * an *errors.errorString "EOF") is OK, anything else is read as grpc's
 * *status.Error (grpc makes every error it returns one); an error of
 * another type, or one without a code, counts as Unknown. */
static __always_inline __u8 grpc_error_code(__u64 itab, __u64 data)
{
	struct {
		__u64 ptr;
		__s64 len;
	} str = {};
	char eof[4] = {};
	__u8 code;

	if (!itab)
		return 0;
	if (!data)
		return 2;
	if (!bpf_probe_read_user(&str, sizeof(str), (void *)data) && str.len == 3 && str.ptr &&
	    !bpf_probe_read_user(eof, 3, (void *)str.ptr) && eof[0] == 'E' && eof[1] == 'O' && eof[2] == 'F')
		return 0;
	code = grpc_code(read_u64(data + off_status_error_s));
	return code ? code : 2;
}

/* grpc_call_done reports a client call that started st, with code and
 * the bytes it sent and received. */
static __always_inline void grpc_call_done(struct start *st, __u8 code, __u64 sent, __u64 recv)
{
	struct scratch s;
	__u64 cc = st->arg[0];

	init_scratch(&s, bpf_get_current_pid_tgid() >> 32, 200, code, KIND_GRPC_CLIENT);
	s.proto_major = 2;
	if (cc)
		read_gostring(s.key.peer, PEER_LEN, cc + off_grpc_cc_target);
	finish(&s, bpf_ktime_get_ns() - st->ns, recv, sent, 0, 0, st->arg[1], st->arg[2]);
}

/* The client stream a call ends on is keyed by its address. */
static __always_inline __u64 stream_key(__u64 cs)
{
	return cs ^ ((__u64)(KIND_GRPC_CLIENT + 1) << 44) ^ (1ULL << 63);
}

/* newClientStream(ctx, desc, cc, method, opts...): a gRPC call starts,
 * unary (Invoke makes one) or streaming. */
SEC("uprobe/grpc_new_stream")
int sm_grpc_call(struct regs *r)
{
	begin(r, KIND_GRPC_CLIENT, GO_R4(r), GO_R5(r), GO_R6(r));
	return 0;
}

/* How a client call is followed, where grpc's functions allow it, without
 * a probe on a RET (the kernel single-steps a RET, 16-26 µs a hit here;
 * the probes below sit on entries and one CALL, which it emulates):
 *
 *   newClientStream        the call starts: a start keyed by goroutine
 *   newAttemptLocked(cs)   the call has a stream: its start is copied to
 *                          a start keyed by cs (which may end on any
 *                          goroutine), and each start names the other
 *                          (the goroutine's arg[3] is cs, the stream's
 *                          arg[3] the goroutine's key)
 *   finish(cs, err)        the call ends: the stream's start is taken,
 *                          and the goroutine's if it still names cs
 *   endOfClientStream(cc, err), called by newClientStream's deferred
 *   cleanup (the probe is on that CALL, not the entry: finish calls it
 *   too, on whatever goroutine ends a stream)
 *                          newClientStream is returning an error: the
 *                          goroutine's start is this call's (the call's
 *                          entry replaced any older one), and it ends
 *                          here unless finish ended it
 *
 * A successful streaming call leaves its goroutine's start until finish
 * (or the goroutine's next call) frees it. Where these cannot be placed
 * (older grpc, or endOfClientStream inlined), the RETs of newClientStream
 * do what newAttemptLocked and endOfClientStream do. */

/* (*clientStream).newAttemptLocked(cs, isTransparent): an attempt of the
 * call cs begins. The first one, on the goroutine that started the call,
 * moves its start to the stream; a retry's finds it done. */
SEC("uprobe/grpc_new_attempt")
int sm_grpc_attempt(struct regs *r)
{
	__u64 cs = GO_R1(r), key = goroutine_key(r, KIND_GRPC_CLIENT);
	struct start *s = find_key(key);

	if (!s || s->arg[3] || !cs)
		return 0;
	s->arg[3] = cs;
	if (!begin_key(stream_key(cs), s->ns, s->arg[0], s->arg[1], s->arg[2], key, 0, 0))
		count_drop();
	return 0;
}


/* The CALL of endOfClientStream(cc, err, opts...) in newClientStream's
 * deferred cleanup, which makes it only when newClientStream returns an
 * error: the call this goroutine started ends now unless finish has ended
 * it. */
SEC("uprobe/grpc_call_cleanup")
int sm_grpc_call_failed(struct regs *r)
{
	struct start st, ss;

	if (!GO_R2(r) || !take_start(r, KIND_GRPC_CLIENT, &st))
		return 0;
	/* A call with a stream that finish ended took both starts; one whose
	 * stream start is left never reached finish. */
	if (st.arg[3] && !take_key(stream_key(st.arg[3]), &ss))
		return 0;
	grpc_call_done(&st, grpc_error_code(GO_R2(r), GO_R3(r)), 0, 0);
	return 0;
}

/* A RET of newClientStream (where the probes above cannot be placed):
 * (stream, err) in AX, BX and CX, DI. The start moves to the stream; a
 * call that failed to start ends here. */
SEC("uprobe/grpc_new_stream_ret")
int sm_grpc_call_ret(struct regs *r)
{
	__u64 cs = GO_R2(r);
	struct start st;

	if (!take_start(r, KIND_GRPC_CLIENT, &st))
		return 0;
	if (!cs) {
		grpc_call_done(&st, grpc_error_code(GO_R3(r), GO_R4(r)), 0, 0);
		return 0;
	}
	if (!begin_key(stream_key(cs), st.ns, st.arg[0], st.arg[1], st.arg[2], 0, 0, 0))
		count_drop();
	return 0;
}

/* (*clientStream).finish(cs, err): the call is over (grpc calls it once
 * per stream that counts; later calls find no start). */
SEC("uprobe/grpc_stream_finish")
int sm_grpc_call_end(struct regs *r)
{
	__u64 cs = GO_R1(r), attempt, ts, recv = 0, sent = 0;
	struct start st;

	if (!take_key(stream_key(cs), &st))
		return 0;
	if (st.arg[3])
		take_if(st.arg[3], cs);
	/* cs.attempt.transportStream: the transport stream the bytes were
	 * counted on (the last attempt's). */
	attempt = read_u64(cs + off_grpc_cs_attempt);
	ts = attempt ? read_u64(attempt + off_grpc_attempt_stream) : 0;
	if (ts)
		bytes_take(ts + off_grpc_cstream_stream, &recv, &sent);
	grpc_call_done(&st, grpc_error_code(GO_R2(r), GO_R3(r)), sent, recv);
	return 0;
}
