//go:build ignore

/* Service routing at connect time.
 *
 * connect4/6 and sendmsg4/6 replace a service VIP:port with a backend chosen
 * by weight; recvmsg4/6 and getpeername4/6 put the VIP back, so the
 * application never sees the translation. Only the maps below decide what is
 * a service: a destination that is not in sm_services is left untouched.
 */

#include "sockmesh.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* svc_key names one service port: VIP (v4-mapped for IPv4), port in network
 * byte order, IP protocol (IPPROTO_TCP or IPPROTO_UDP). */
struct svc_key {
	struct addr6 vip;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

/* svc_val holds, or points at, the backend slot table of one revision.
 * slots == 0 means the service exists but has no healthy backend: the caller
 * gets ECONNREFUSED instead of a connection to the VIP. A table of at most
 * INLINE_SLOTS slots (most services: a few replicas of equal weight) is in
 * the entry itself, so a connect reads one map element instead of two: each
 * element a connect touches is a cache and TLB miss between real connections
 * (the slot lookup cost ~70 ns of connect4's ~680 here). Larger tables are
 * in sm_slots under rev. */
enum svc_flags {
	/* Translate only while the agent's heartbeat is fresh: used to capture
	 * DNS, which must reach the original server when the agent is gone. */
	SVC_F_AGENT_LIVE = 1,
};

#define INLINE_SLOTS 4

struct backend {
	struct addr6 addr;
	__u16 port; /* network byte order */
	__u16 pad;
};

struct svc_val {
	__u32 rev;
	__u32 slots;
	enum svc_flags flags; /* a bit set of SVC_F_* */
	struct backend table[INLINE_SLOTS]; /* the slots, if slots <= INLINE_SLOTS */
};

/* An agent heartbeat older than this no longer counts as alive. */
#define AGENT_STALE_NS (2ULL * 1000 * 1000 * 1000)

/* slot_key addresses one slot of a revision's table. A backend with weight w
 * fills a number of slots proportional to w, so a uniform random slot is a
 * weighted random backend. */
struct slot_key {
	__u32 rev;
	__u32 slot;
};

/* peer remembers, per socket, which VIP a connect() was translated from. */
struct peer {
	struct addr6 vip;
	struct addr6 backend;
	__u16 vport;
	__u16 bport;
};

/* udp_rev_key finds the VIP for a datagram received on a socket that sent to
 * a VIP with sendmsg (unconnected UDP). */
struct udp_rev_key {
	__u64 cookie;
	struct addr6 backend;
	__u16 bport;
	__u16 pad[3];
};

struct udp_rev_val {
	struct addr6 vip;
	__u16 vport;
	__u16 pad;
};

enum stat {
	STAT_TRANSLATED = 0, /* connect/sendmsg rewritten to a backend */
	STAT_NO_BACKEND,     /* service without healthy backend: refused */
	STAT_SLOT_MISS,      /* service entry pointed at a missing slot */
	STAT_REVERSED,       /* recvmsg/getpeername shown the VIP */
	STAT_UDP_REV_FULL,   /* udp reverse entry could not be stored */
	STAT_AGENT_DOWN,     /* agent-bound service skipped: no fresh heartbeat */
	STAT_PEER_FULL,      /* sm_peers full: getpeername shows the backend */
	STAT_MAX,
};

/* svc_entry is one slot of a service table: a service port and its value.
 * key.proto == 0 marks a free slot (a service is TCP or UDP). 128 bytes, so
 * an entry is two whole cache lines. */
struct svc_entry {
	struct svc_key key;
	struct svc_val val;
	__u8 pad[16];
};

/* A service table: an open-addressed hash table in an array. A service
 * port lives in the first free slot at or after svc_hash(key) (mod the size),
 * at most SVC_PROBES slots on; a lookup stops at the first free slot. The
 * agent keeps it that way (it deletes by shifting entries back, never
 * leaving holes inside a run) and refuses a service whose run would be
 * longer.
 *
 * Why not a BPF hash map: a hash lookup chases a pointer from a bucket
 * array to an element, two dependent cache and TLB misses between real
 * connections, plus a call and jhash. Here the verifier inlines the lookup
 * to an address computation, and the entry is the only memory read:
 * connect4 went from 470–563 to 315–415 ns with 10,000 services. */

#define SVC_TABLE_SLOTS 65536
#define SVC_PROBES 8

/* sm_svc_a, sm_svc_b: the two service tables (svc_entry by slot). Written
 * only by the agent, and only the one sm_services does not hold; read by
 * connect/sendmsg through sm_services. 65536 slots each (8 MB). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SVC_TABLE_SLOTS);
	__type(key, __u32);
	__type(value, struct svc_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_svc_a SEC(".maps"), sm_svc_b SEC(".maps");

/* sm_services: in its one slot, the service table programs read now. The
 * agent applies a change to the other table, swaps that one in here, and
 * the swap (an update of a map-in-map) returns only after an RCU grace
 * period, when no program still reads the table swapped out; then it
 * applies the same change to that one. So a program sees a whole table,
 * never an entry being written, and every revision's backends (in
 * sm_slots) are written before a table that points at them is swapped in,
 * and deleted only after. An empty slot (before the agent's first sync)
 * means no services. Capacity: the agent's --max-services, at most half
 * the slots (32768 service ports); when it is reached the update fails, is
 * reported and counted, and the service keeps its previous revision. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_ARRAY);
		__uint(max_entries, SVC_TABLE_SLOTS);
		__type(key, __u32);
		__type(value, struct svc_entry);
	});
} sm_services SEC(".maps");

/* svc_hash spreads a service key over the table. The agent computes the
 * same function (bpf/sockaddr/table.go: hashKey); keep them equal. */
static __always_inline __u32 svc_hash(const struct svc_key *k)
{
	__u64 a = ((__u64)k->vip.w[0] << 32) | k->vip.w[1];
	__u64 b = ((__u64)k->vip.w[2] << 32) | k->vip.w[3];
	__u64 c = ((__u64)k->port << 8) | k->proto;
	__u64 x = a * 0x9E3779B97F4A7C15ULL ^ b * 0xC2B2AE3D27D4EB4FULL ^ c * 0x165667B19E3779F9ULL;

	x ^= x >> 29;
	x *= 0xBF58476D1CE4E5B9ULL;
	x ^= x >> 32;
	return (__u32)x;
}

/* find_service returns the value of the service port key names, or NULL. */
static __always_inline struct svc_val *find_service(const struct svc_key *key)
{
	__u32 zero = 0, h = svc_hash(key);
	void *table = bpf_map_lookup_elem(&sm_services, &zero);

	if (!table)
		return 0;
	for (int i = 0; i < SVC_PROBES; i++) {
		__u32 idx = (h + i) & (SVC_TABLE_SLOTS - 1);
		struct svc_entry *e = bpf_map_lookup_elem(table, &idx);

		if (!e || e->key.proto == 0)
			return 0;
		if (e->key.port == key->port && e->key.proto == key->proto &&
		    addr_equal(&e->key.vip, &key->vip))
			return &e->val;
	}
	return 0;
}

/* sm_slots: slot_key -> backend, the tables of services with more than
 * INLINE_SLOTS slots. Written by the agent before the service entry that
 * points at a revision, deleted after the entry moved on. Read by
 * connect/sendmsg. 262144 slots across all revisions; when full the agent's
 * update fails and the service keeps its previous revision. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct slot_key);
	__type(value, struct backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_slots SEC(".maps");

/* peer_slot is one record of sm_peers: the socket it belongs to (its
 * cookie; 0: free) and its peer. */
struct peer_slot {
	__u64 cookie;
	struct peer p;
	__u32 pad;
};

/* sm_peers: the VIP each translated socket connected to, in slots chosen
 * by a hash of the socket cookie; a socket claims the first free one of
 * PEER_PROBES from its own with compare-and-swap. Written by connect4/6
 * on translation, read by getpeername4/6 and recvmsg4/6 (connected UDP),
 * freed by sock_release when the socket goes. An array, not a hash: its
 * lookups are inlined by the verifier and nothing is allocated or locked,
 * where a hash insert cost ~800 ns of connect4's 1.3 us here (and
 * per-socket storage, which allocates, ~1.75 us). Pinned, so a restarted
 * agent's programs still find the records of sockets connected before.
 * 262144 slots; when a socket finds its PEER_PROBES slots taken, the
 * connection works but getpeername shows the backend, and STAT_PEER_FULL
 * counts it. */
#define PEER_SLOTS 262144
#define PEER_PROBES 4
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PEER_SLOTS);
	__type(key, __u32);
	__type(value, struct peer_slot);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_peers SEC(".maps");

/* peer_slot is where cookie's record starts looking: the cookie's low
 * bits, unmixed. Cookies count up, so sockets made one after the other
 * land in neighbouring slots, on memory the CPU (and the TLB: the array is
 * 12 MB) still has; a mixed hash made every connect a cold miss. */
static __always_inline __u32 peer_slot(__u64 cookie)
{
	return (__u32)cookie;
}

/* find_peer returns the slot holding cookie's record, or NULL. */
static __always_inline struct peer_slot *find_peer(__u64 cookie)
{
	__u32 base = peer_slot(cookie);

#pragma unroll
	for (int i = 0; i < PEER_PROBES; i++) {
		__u32 idx = (base + i) & (PEER_SLOTS - 1);
		struct peer_slot *s = bpf_map_lookup_elem(&sm_peers, &idx);

		if (s && s->cookie == cookie)
			return s;
	}
	return 0;
}

/* sm_udp_rev: udp_rev_key -> udp_rev_val for unconnected UDP, written by
 * sendmsg4/6, read by recvmsg4/6. LRU with 65536 entries: when full the
 * least recently used flow is forgotten, and a late reply on it shows the
 * backend address instead of the VIP. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct udp_rev_key);
	__type(value, struct udp_rev_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_udp_rev SEC(".maps");

/* sm_agent: one entry, the agent's last heartbeat (bpf_ktime_get_ns clock,
 * i.e. CLOCK_MONOTONIC). Written by the agent every 500 ms while it serves
 * (0 when it stops), read by connect/sendmsg for SVC_F_AGENT_LIVE services. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_agent SEC(".maps");

/* sm_stats: per-CPU counters indexed by enum stat, read by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, enum stat);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_stats SEC(".maps");

static __always_inline void count(enum stat s)
{
	__u64 *v = bpf_map_lookup_elem(&sm_stats, &s);

	if (v)
		*v += 1;
}

/* Result of choosing a backend for a destination. */
enum pick {
	PICK_NONE = 0, /* not a service: leave the socket alone */
	PICK_OK,       /* *be holds the backend */
	PICK_REFUSE,   /* a service without backends: fail the call */
};

/* cookie_mix scrambles a socket cookie into 32 bits that look random.
 * Cookies are handed out as sockets first need one, so which cookie the
 * next connect gets can depend on what the last connect chose (its
 * server's socket may or may not have taken one in between, at close).
 * A multiplicative hash alone keeps neighbouring cookies' slots related,
 * and that feedback skewed a 1:3 weighting to 70:30 once in CI; after a
 * full mix (murmur3's finalizer) neighbouring cookies are unrelated. */
static __always_inline __u32 cookie_mix(__u64 c)
{
	c ^= c >> 33;
	c *= 0xff51afd7ed558ccdULL;
	c ^= c >> 33;
	c *= 0xc4ceb9fe1a85ec53ULL;
	c ^= c >> 33;
	return (__u32)(c >> 32);
}

/* pick_backend finds the service key names and chooses one of its slots. A
 * connect (cookie != NULL) chooses by a mix of the socket cookie, which it
 * also returns: cookies are unique, so the choice is as even as a random
 * one and costs no random-number state of its own (~60 ns of cold per-CPU
 * memory between real connections here). A datagram sent with sendmsg
 * (cookie == NULL) chooses at random, each on its own. */
static __always_inline enum pick pick_backend(struct bpf_sock_addr *ctx, const struct svc_key *key,
					      struct backend *be, __u64 *cookie)
{
	struct svc_val *svc = find_service(key);
	struct slot_key sk = {};
	struct backend *b;
	__u32 slot;

	if (!svc)
		return PICK_NONE;
	if (svc->flags & SVC_F_AGENT_LIVE) {
		__u32 zero = 0;
		__u64 *hb = bpf_map_lookup_elem(&sm_agent, &zero);

		/* Signed: a beat the agent wrote after this program read its
		 * clock is in the program's future, not ages old. */
		if (!hb || *hb == 0 || (__s64)(bpf_ktime_get_ns() - *hb) > (__s64)AGENT_STALE_NS) {
			count(STAT_AGENT_DOWN);
			return PICK_NONE;
		}
	}
	if (svc->slots == 0) {
		count(STAT_NO_BACKEND);
		return PICK_REFUSE;
	}
	if (cookie) {
		*cookie = bpf_get_socket_cookie(ctx);
		/* The mix's bits scaled to [0, slots): no division. */
		slot = (__u32)(((__u64)cookie_mix(*cookie) * svc->slots) >> 32);
	} else {
		slot = bpf_get_prandom_u32() % svc->slots;
	}
	if (svc->slots <= INLINE_SLOTS) {
		/* slot < slots <= INLINE_SLOTS; the mask is for the verifier,
		 * and the barrier keeps clang from dropping it. */
		asm volatile("" : "+r"(slot));
		*be = svc->table[slot & (INLINE_SLOTS - 1)];
	} else {
		sk.rev = svc->rev;
		sk.slot = slot;
		b = bpf_map_lookup_elem(&sm_slots, &sk);
		if (!b) {
			count(STAT_SLOT_MISS);
			return PICK_REFUSE;
		}
		*be = *b;
	}
	count(STAT_TRANSLATED);
	return PICK_OK;
}

static __always_inline int refuse(void)
{
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

static __always_inline void remember_peer(__u64 cookie, const struct svc_key *key,
					  const struct backend *be)
{
	__u32 base = peer_slot(cookie);

#pragma unroll
	for (int i = 0; i < PEER_PROBES; i++) {
		__u32 idx = (base + i) & (PEER_SLOTS - 1);
		struct peer_slot *s = bpf_map_lookup_elem(&sm_peers, &idx);
		__u64 old;

		if (!s)
			break;
		old = s->cookie;
		/* A free slot, or this socket's own (connect again on a
		 * socket whose first attempt failed). */
		if (old != 0 && old != cookie)
			continue;
		if (__sync_val_compare_and_swap(&s->cookie, old, cookie) != old)
			continue;
		s->p.vip = key->vip;
		s->p.vport = key->port;
		s->p.backend = be->addr;
		s->p.bport = be->port;
		return;
	}
	count(STAT_PEER_FULL);
}

static __always_inline void remember_udp(struct bpf_sock_addr *ctx, const struct svc_key *key,
					 const struct backend *be)
{
	struct udp_rev_key rk = {};
	struct udp_rev_val rv = {};

	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.backend = be->addr;
	rk.bport = be->port;
	rv.vip = key->vip;
	rv.vport = key->port;
	if (bpf_map_update_elem(&sm_udp_rev, &rk, &rv, BPF_ANY))
		count(STAT_UDP_REV_FULL);
}

/* Each ctx field is read and written directly (ctx->user_ip6[0] …) with
 * constant offsets: the verifier rejects loads through a modified ctx
 * pointer, which clang produces if the accesses are folded into loops. */

static __always_inline void key4(struct bpf_sock_addr *ctx, struct svc_key *key)
{
	addr_from_ip4(&key->vip, ctx->user_ip4);
	key->port = (__u16)ctx->user_port;
	key->proto = (__u8)ctx->protocol;
}

static __always_inline void key6(struct bpf_sock_addr *ctx, struct svc_key *key)
{
	key->vip.w[0] = ctx->user_ip6[0];
	key->vip.w[1] = ctx->user_ip6[1];
	key->vip.w[2] = ctx->user_ip6[2];
	key->vip.w[3] = ctx->user_ip6[3];
	key->port = (__u16)ctx->user_port;
	key->proto = (__u8)ctx->protocol;
}

static __always_inline void write4(struct bpf_sock_addr *ctx, const struct addr6 *a, __u16 port)
{
	ctx->user_ip4 = a->w[3];
	ctx->user_port = port;
}

static __always_inline void write6(struct bpf_sock_addr *ctx, const struct addr6 *a, __u16 port)
{
	ctx->user_ip6[0] = a->w[0];
	ctx->user_ip6[1] = a->w[1];
	ctx->user_ip6[2] = a->w[2];
	ctx->user_ip6[3] = a->w[3];
	ctx->user_port = port;
}

SEC("cgroup/connect4")
int sm_connect4(struct bpf_sock_addr *ctx)
{
	struct svc_key key = {};
	struct backend be;
	__u64 cookie = 0;

	key4(ctx, &key);
	switch (pick_backend(ctx, &key, &be, &cookie)) {
	case PICK_NONE:
		return 1;
	case PICK_REFUSE:
		return refuse();
	default:
		break;
	}
	write4(ctx, &be.addr, be.port);
	remember_peer(cookie, &key, &be);
	if (key.proto == IPPROTO_UDP)
		remember_udp(ctx, &key, &be);
	return 1;
}

SEC("cgroup/connect6")
int sm_connect6(struct bpf_sock_addr *ctx)
{
	struct svc_key key = {};
	struct backend be;
	__u64 cookie = 0;

	key6(ctx, &key);
	switch (pick_backend(ctx, &key, &be, &cookie)) {
	case PICK_NONE:
		return 1;
	case PICK_REFUSE:
		return refuse();
	default:
		break;
	}
	write6(ctx, &be.addr, be.port);
	remember_peer(cookie, &key, &be);
	if (key.proto == IPPROTO_UDP)
		remember_udp(ctx, &key, &be);
	return 1;
}

SEC("cgroup/sendmsg4")
int sm_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct svc_key key = {};
	struct backend be;

	key4(ctx, &key);
	switch (pick_backend(ctx, &key, &be, 0)) {
	case PICK_NONE:
		return 1;
	case PICK_REFUSE:
		return refuse();
	default:
		break;
	}
	write4(ctx, &be.addr, be.port);
	remember_udp(ctx, &key, &be);
	return 1;
}

SEC("cgroup/sendmsg6")
int sm_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct svc_key key = {};
	struct backend be;

	key6(ctx, &key);
	switch (pick_backend(ctx, &key, &be, 0)) {
	case PICK_NONE:
		return 1;
	case PICK_REFUSE:
		return refuse();
	default:
		break;
	}
	write6(ctx, &be.addr, be.port);
	remember_udp(ctx, &key, &be);
	return 1;
}

/* reverse looks up the VIP for a datagram from (addr, port) on this socket:
 * first the unconnected-UDP table, then the socket's own connect record. */
static __always_inline int reverse(struct bpf_sock_addr *ctx, const struct addr6 *from, __u16 port,
				   struct addr6 *vip, __u16 *vport)
{
	struct udp_rev_key rk = {};
	struct udp_rev_val *rv;
	struct peer_slot *slot;
	struct peer *p;

	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.backend = *from;
	rk.bport = port;
	rv = bpf_map_lookup_elem(&sm_udp_rev, &rk);
	if (rv) {
		*vip = rv->vip;
		*vport = rv->vport;
		return 1;
	}
	slot = find_peer(rk.cookie);
	if (!slot)
		return 0;
	p = &slot->p;
	if (p->bport != port || !addr_equal(&p->backend, from))
		return 0;
	*vip = p->vip;
	*vport = p->vport;
	return 1;
}

static __always_inline int reverse4(struct bpf_sock_addr *ctx)
{
	struct addr6 from, vip;
	__u16 port = (__u16)ctx->user_port, vport;

	addr_from_ip4(&from, ctx->user_ip4);
	if (!reverse(ctx, &from, port, &vip, &vport))
		return 1;
	write4(ctx, &vip, vport);
	count(STAT_REVERSED);
	return 1;
}

static __always_inline int reverse6(struct bpf_sock_addr *ctx)
{
	struct addr6 from, vip;
	__u16 port = (__u16)ctx->user_port, vport;

	from.w[0] = ctx->user_ip6[0];
	from.w[1] = ctx->user_ip6[1];
	from.w[2] = ctx->user_ip6[2];
	from.w[3] = ctx->user_ip6[3];
	if (!reverse(ctx, &from, port, &vip, &vport))
		return 1;
	write6(ctx, &vip, vport);
	count(STAT_REVERSED);
	return 1;
}

SEC("cgroup/recvmsg4")
int sm_recvmsg4(struct bpf_sock_addr *ctx)
{
	return reverse4(ctx);
}

SEC("cgroup/recvmsg6")
int sm_recvmsg6(struct bpf_sock_addr *ctx)
{
	return reverse6(ctx);
}

/* sm_sock_release frees a closing socket's peer record. It runs for
 * every socket of the cgroup tree that closes; one never translated has
 * none. */
SEC("cgroup/sock_release")
int sm_sock_release(struct bpf_sock *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct peer_slot *s = find_peer(cookie);

	if (s)
		__sync_val_compare_and_swap(&s->cookie, cookie, 0);
	return 1;
}

SEC("cgroup/getpeername4")
int sm_getpeername4(struct bpf_sock_addr *ctx)
{
	return reverse4(ctx);
}

SEC("cgroup/getpeername6")
int sm_getpeername6(struct bpf_sock_addr *ctx)
{
	return reverse6(ctx);
}
