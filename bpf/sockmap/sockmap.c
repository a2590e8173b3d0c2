//go:build ignore

/* Same-node fast path.
 *
 * sockops puts both ends of an established TCP connection between two
 * meshed workloads of this node into sm_fp_socks; sk_msg then hands each
 * send straight to the peer socket's receive side (bpf_msg_redirect_hash
 * with BPF_F_INGRESS) instead of sending it through TCP/IP. When the peer is
 * not a redirect target the data takes the normal path, unchanged.
 *
 * Which connections join. A socket with sk_msg sends through tcp_bpf,
 * which is slower than TCP's own path when nothing is redirected (half the
 * throughput for large writes, measured), and copies what splice or
 * sendfile write into it where TCP takes the pages (a proxy splicing into
 * a fast-path socket moved 0.91x of its bytes): so only connections whose
 * two ends are on this node and may both receive redirected data (rule 1;
 * such programs cannot splice) join. A program that can splice neither
 * receives nor sends on the fast path: letting it send to a safe peer won
 * nothing measurable (request/response 28.6k round trips/s with its
 * answers redirected, 29.3k through TCP) and cost the splice proxy its
 * 9%. The listener's side records every SYN it answers (sm_fp_syns, at
 * TIMEOUT_INIT for the request socket); the connecting side joins at
 * ESTABLISHED only if its SYN is there, and the accepting side only if the
 * connecting side joined.
 *
 * Redirected data waits in the receiver's psock queue, which only recvmsg
 * and read(2) drain (tcp_bpf's recvmsg). splice(2) from the socket reads the
 * TCP receive queue directly: data in the psock queue would never arrive,
 * and the caller would wait forever. On this kernel nothing can make such a
 * call fail, wait or fall back (no LSM, fentry or fmod_ret programs: EPERM;
 * uprobes may not write registers), and a tracepoint cannot take a socket
 * out of a sockhash. Seeing a splice coming is too late, so the rules are
 * about what a program can do:
 *
 *   1. Only sockets of a "safe" cgroup receive redirected data: every
 *      process in it runs an executable the agent has read and found unable
 *      to splice from a socket (a Go program that links
 *      internal/poll.Splice, or an ELF or library that imports splice, can;
 *      node/dataplane/exes.go). The agent marks cgroups safe
 *      (sm_fp_cgroups); an exec of any other executable in a cgroup, a
 *      process moved into it, or a splice seen there marks it dirty at once
 *      (sm_fp_dirty) until the agent has looked again.
 *   2. Order: recvmsg reads redirected data before its TCP receive queue.
 *      A receiver publishes itself as a target (sm_fp_targets) only when it
 *      has read all it received, with the sequence number it has read up
 *      to; the peer hands its sends over only if it has queued nothing for
 *      TCP beyond that number. So no byte sent through TCP can be read
 *      after a byte handed over later.
 *   3. Backpressure: TCP stops a sender when the receiver's buffers are
 *      full. Redirected data bypasses them: the kernel charges it to the
 *      receiver only against the node-wide tcp_mem limits, so a sender
 *      whose peer does not read could queue gigabytes in the peer's psock
 *      (measured: 1.2 GB in 3 s, where TCP lets the same sender write a
 *      few MB and then blocks). So a send that would leave more than
 *      queue_max (or the receiver's own SO_RCVBUF) unread in its psock goes
 *      through TCP instead, behind the queued bytes (recvmsg reads those
 *      first: still in order), and TCP's flow control makes the sender
 *      wait; sends are handed over again once the receiver has read
 *      everything, as in rule 2. The sender reads the receiver's queue
 *      (sk_psock.msg_tot_len, 6.8+) and read position through the socket
 *      pointer its target entry keeps (sk_msg cannot look a socket up).
 *   4. A backstop: sm_fp_splice (raw tracepoint sys_enter) sees every
 *      splice/sendfile reading a fast-path socket before the kernel does
 *      it: the socket stops being a target (new data goes through TCP,
 *      where splice finds it), its executable is marked unsafe and its
 *      cgroup dirty, and if data was already queued for it, splice_stranded
 *      counts it.
 *
 * A socket that closes leaves the sockhashes by itself (the kernel unhashes
 * it); its other entries are removed by the state callback.
 */

#include "sockmesh.h"
#include <bpf/bpf_core_read.h>

char __license[] SEC("license") = "Dual BSD/GPL";

/* x86_64 syscall numbers and their file-descriptor argument. */
#define NR_sendfile 40 /* sendfile(out_fd, in_fd, ...): in_fd is the 2nd */
#define NR_splice 275  /* splice(fd_in, ...): fd_in is the 1st */

#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* sock_key names one end of a connection, as that end sees it. The two
 * initial sequence numbers (as snd_una and rcv_nxt right after the
 * handshake) make the key unique on the node even when the same addresses
 * and ports exist in several network namespaces (loopback, overlapping pod
 * ranges): a peer is only found by a socket that took part in the same
 * handshake. Ports are in host byte order. */
struct sock_key {
	struct addr6 local;
	struct addr6 remote;
	__u16 lport;
	__u16 rport;
	__u32 lseq;
	__u32 rseq;
};

enum sock_flags {
	/* Its cgroup was safe when it joined: it may receive (rule 1). */
	SOCK_F_ELIGIBLE = 1,
	/* Sender side: this socket's sends go to its peer (rule 2). */
	SOCK_F_HANDED_OVER = 2,
	/* Receiver side: the splice tracepoint took it out; never again. */
	SOCK_F_SPLICED = 8,
};

/* sock_state is the per-socket record: the peer's key for sk_msg, the
 * flags above, and the sequence number last published as ready (so a send
 * looks at sm_fp_targets only when there is something new to publish). */
struct sock_state {
	struct sock_key peer;
	enum sock_flags flags;
	__u32 ready_seq;
};

/* target is a published receiver: it had read everything up to ready_seq;
 * handed_over is set by the peer once it hands its sends over; sk is the
 * receiving socket (struct sock *), read by its peer's sends for how much
 * it has not read yet (rule 3). */
struct target {
	__u32 ready_seq;
	__u32 handed_over;
	__u64 sk;
};

/* exe_key names an executable file: inode number and the kernel's device
 * number of its filesystem (MAJOR << 20 | MINOR). */
struct exe_key {
	__u64 ino;
	__u32 dev;
	__u32 pad;
};

enum exe_verdict {
	EXE_SAFE = 1,   /* cannot splice from a socket */
	EXE_UNSAFE = 2, /* can, or was seen doing it */
};

enum cgroup_state {
	CG_ENROLLED = 1, /* its sockets join as senders */
	CG_SAFE = 2,     /* and may receive (rule 1) */
};

/* syn_key names a connection from the listener's side while the handshake
 * runs: addresses and ports, plus the network namespace for loopback
 * addresses (which repeat in every namespace; pod addresses do not). */
struct syn_key {
	struct addr6 local;
	struct addr6 remote;
	__u16 lport;
	__u16 rport;
	__u32 pad;
	__u64 netns;
};

/* syn_state flags. */
enum syn_state {
	SYN_SEEN = 1,          /* a listener of this node answered it */
	SYN_JOINED = 2,         /* the connecting side joined the fast path */
	SYN_SAFE_LISTENER = 4,  /* the listener's cgroup was safe */
	SYN_KNOWN_LISTENER = 8, /* the listener is in sm_fp_listeners */
};

/* exec_event asks the agent to judge an executable now: a process in an
 * enrolled cgroup started one it has no verdict for. filename is what was
 * passed to execve (resolve it in the process's root), or empty for a
 * process moved into the cgroup. */
struct exec_event {
	__u32 pid;
	__u32 pad;
	__u64 cgroup;
	struct exe_key exe;
	char filename[256];
};

/* Keeps exec_event in BTF for bpf2go -type. */
const struct exec_event *unused_exec_event __attribute__((unused));

/* listener_key names a listening port in a network namespace. */
struct listener_key {
	__u64 netns;
	__u16 port;
	__u16 pad1;
	__u32 pad2;
};

/* fp_stats are the fast path's counters; one per-CPU entry, summed by the
 * agent. */
struct fp_stats {
	__u64 socks_added;      /* sockets put on the fast path */
	__u64 socks_closed;     /* fast-path sockets that closed */
	__u64 add_errors;       /* sockets that could not be (a map was full) */
	__u64 targets;          /* sockets that became redirect targets */
	__u64 redirect_msgs;    /* sends handed to a peer socket */
	__u64 redirect_bytes;   /* bytes in those sends */
	__u64 fallback_msgs;    /* sends from a fast-path socket whose peer is
	                           not a target: normal path */
	__u64 splice_exits;     /* target sockets that stopped being targets
	                           because they were spliced */
	__u64 splice_stranded;  /* ... while redirected data was queued */
	__u64 handover_waits;   /* sends that took the normal path because
	                           the peer had not read all earlier bytes */
	__u64 handovers;        /* sockets whose sends went over to the peer */
	__u64 remote_peers;     /* established sockets that did not join: the
	                           peer is not a meshed socket of this node */
	__u64 unsafe_pairs;     /* ... or neither end may receive (rule 1) */
	__u64 dirty_marks;      /* cgroups marked dirty by an exec, a move or
	                           a splice */
	__u64 events_lost;      /* exec_events the ring buffer had no room for */
	__u64 backpressure;     /* sends that went through TCP because the
	                           peer had queue_max unread (rule 3) */
};

/* sm_fp_cgroups: cgroup id -> cgroup_state for enrolled cgroups. Written by
 * the agent (it enrolls the cgroups under its attach point and classifies
 * their processes), read at ESTABLISHED with the socket's own cgroup and by
 * the exec tracepoint. 65536 entries; when full the agent reports the
 * cgroups it could not enroll (their sockets keep the normal path). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, enum cgroup_state);
} sm_fp_cgroups SEC(".maps");

/* sm_fp_dirty: cgroup id -> 1 for cgroups that may hold a process the agent
 * has not judged (rule 1): a safe cgroup is not safe while it is here.
 * Written by the exec, cgroup-attach and splice tracepoints; the agent
 * deletes an entry before it looks at the cgroup's processes again. Same
 * capacity as sm_fp_cgroups; when full, the tracepoints mark the cgroup
 * unsafe in sm_fp_cgroups instead. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} sm_fp_dirty SEC(".maps");

/* sm_fp_events: exec_events to the agent. Written by the exec and
 * cgroup-attach tracepoints, read by the agent. 256 KiB; when full an
 * event is lost and counted (events_lost): the agent's periodic scan judges
 * that executable within a second instead. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 256 * 1024);
} sm_fp_events SEC(".maps");

/* sm_fp_syns: syn_key -> syn_state for handshakes answered by listeners
 * under the attach cgroup. Written at the request socket's TIMEOUT_INIT and
 * at the connecting side's ESTABLISHED, deleted at the accepting side's.
 * LRU with 65536 entries: handshakes that never complete age out; one
 * evicted while it runs only keeps that connection off the fast path. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, struct syn_key);
	__type(value, __u32); /* enum syn_state flags */
} sm_fp_syns SEC(".maps");

/* sm_fp_listeners: listener_key -> cgroup id of listening sockets of
 * enrolled cgroups, so a handshake knows whether its listener's cgroup is
 * safe. Written at TCP_LISTEN_CB; LRU with 16384 entries (a closed
 * listener's entry is overwritten by the next one on its port, or ages
 * out). A listener from before the fast path was loaded is unknown: its
 * connections join only if the connecting side's cgroup is safe. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 16384);
	__type(key, struct listener_key);
	__type(value, __u64);
} sm_fp_listeners SEC(".maps");

/* sm_fp_socks: sock_key -> socket, the fast-path sockets; sk_msg is
 * attached to it. Written by sockops at ESTABLISHED; entries leave when the
 * socket closes (kernel). 65536 sockets; when full, new connections take
 * the normal path and add_errors counts them. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, struct sock_key);
	__type(value, __u64);
} sm_fp_socks SEC(".maps");

/* sm_fp_hold: sock_key -> socket, every fast-path socket, and the map
 * sk_msg redirects into. It has no program. It holds every psock for the
 * socket's whole life, so nothing ever drops data already queued there. Written by sockops at ESTABLISHED; entries
 * leave when the socket closes. Same capacity as sm_fp_socks. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, struct sock_key);
	__type(value, __u64);
} sm_fp_hold SEC(".maps");

/* sm_fp_sock: per-socket sock_state. Created at ESTABLISHED for sockets
 * put on the fast path, read by sk_msg. Freed with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_state);
} sm_fp_sock SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fp_stats);
} sm_fp_stats SEC(".maps");

/* sm_fp_keys: socket cookie -> the socket's own sock_key, so the splice
 * tracepoint, which sees a file, can name the socket. Written at
 * ESTABLISHED, deleted by the state callback when the socket closes. Same
 * capacity as sm_fp_socks; a socket whose key cannot be stored is not put on
 * the fast path. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_key);
} sm_fp_keys SEC(".maps");

/* sm_fp_targets: sock_key -> target, the sockets that may receive
 * redirected data (rule 2). Written by sk_msg on the receiver's sends (and
 * handed_over by the peer's), deleted by the splice tracepoint and by the
 * state callback at close. When full the socket is simply not a target (its
 * peer's data takes the normal path). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, struct sock_key);
	__type(value, struct target);
} sm_fp_targets SEC(".maps");

/* sm_fp_exes: exe_key -> exe_verdict (rule 1). Written by the agent, which
 * classifies the executables of the processes in enrolled cgroups, and
 * set to EXE_UNSAFE by the splice tracepoint. Read by the exec tracepoint.
 * 16384 executables; when full the agent reports it, and a cgroup running
 * an unclassified one is not safe. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 16384);
	__type(key, struct exe_key);
	__type(value, enum exe_verdict);
} sm_fp_exes SEC(".maps");

/* Kernel types read through CO-RE; only the fields used are declared. */
struct list_head {
	struct list_head *next;
} __attribute__((preserve_access_index));

struct sk_psock {
	struct list_head ingress_msg;
	__u32 msg_tot_len; /* bytes queued in ingress_msg (6.8+) */
} __attribute__((preserve_access_index));

struct atomic64 {
	__s64 counter;
};

struct sock_common {
	struct atomic64 skc_cookie;
} __attribute__((preserve_access_index));

struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct sock_cgroup_data {
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	struct sock_cgroup_data sk_cgrp_data;
	void *sk_user_data;
	__u8 sk_userlocks;
	int sk_rcvbuf;
} __attribute__((preserve_access_index));

#define SOCK_RCVBUF_LOCK 2 /* sk_userlocks: the application set SO_RCVBUF */

/* queue_max is what a receiver may have unread in its psock before its
 * peer's sends go through TCP (rule 3), unless the receiver set SO_RCVBUF
 * itself: then its receive buffer is the limit. Set at load to the node's
 * tcp_wmem[2], as far as TCP lets a sender get ahead in its own buffer.
 * Redirected data does not grow sk_rcvbuf, and its initial 128 KiB made a
 * streaming sender fall back to TCP every few writes; a deep queue is slow
 * too (its pages are cold when read): a Go echo in 64 KiB writes moved
 * 470-730 MB/s with 32 MB allowed, 1150-1500 MB/s with 4 MB. */
volatile const __u32 queue_max = 4U << 20;

struct tcp_sock {
	__u32 copied_seq; /* next byte the application reads */
	__u32 rcv_nxt;    /* next byte expected from the peer */
	__u32 write_seq;  /* one past the last byte queued for sending */
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

struct super_block {
	__u32 s_dev;
} __attribute__((preserve_access_index));

struct inode {
	unsigned short i_mode;
	unsigned long i_ino;
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct mm_struct {
	struct file *exe_file;
} __attribute__((preserve_access_index));

struct task_struct {
	int tgid;
	struct files_struct *files;
	struct mm_struct *mm;
} __attribute__((preserve_access_index));

struct linux_binprm {
	const char *filename;
} __attribute__((preserve_access_index));

struct pt_regs {
	unsigned long di;
	unsigned long si;
} __attribute__((preserve_access_index));

static __always_inline struct fp_stats *stats(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sm_fp_stats, &zero);
}

#define count(field)                                         \
	do {                                                 \
		struct fp_stats *__s = stats();              \
		if (__s)                                     \
			__sync_fetch_and_add(&__s->field, 1); \
	} while (0)

/* Every context field is loaded once, unconditionally and volatile, before
 * any branch: otherwise clang turns the per-family loads into one load
 * through a computed ctx offset, which the verifier rejects ("dereference of
 * modified ctx ptr"). Reading the IPv6 fields of an IPv4 socket is allowed. */
#define CTX(x) (*(volatile __typeof__(x) *)&(x))

static __always_inline void sock_addrs(struct bpf_sock_ops *ops, struct sock_key *k)
{
	__u32 family = CTX(ops->family);
	__u32 l4 = CTX(ops->local_ip4), r4 = CTX(ops->remote_ip4);
	__u32 l0 = CTX(ops->local_ip6[0]), l1 = CTX(ops->local_ip6[1]),
	      l2 = CTX(ops->local_ip6[2]), l3 = CTX(ops->local_ip6[3]);
	__u32 r0 = CTX(ops->remote_ip6[0]), r1 = CTX(ops->remote_ip6[1]),
	      r2 = CTX(ops->remote_ip6[2]), r3 = CTX(ops->remote_ip6[3]);

	k->lport = ops->local_port;
	k->rport = bpf_ntohl(ops->remote_port);
	if (family == 2 /* AF_INET */) {
		addr_from_ip4(&k->local, l4);
		addr_from_ip4(&k->remote, r4);
		return;
	}
	k->local.w[0] = l0;
	k->local.w[1] = l1;
	k->local.w[2] = l2;
	k->local.w[3] = l3;
	k->remote.w[0] = r0;
	k->remote.w[1] = r1;
	k->remote.w[2] = r2;
	k->remote.w[3] = r3;
}

static __always_inline void swap_key(struct sock_key *dst, const struct sock_key *k)
{
	dst->local = k->remote;
	dst->remote = k->local;
	dst->lport = k->rport;
	dst->rport = k->lport;
	dst->lseq = k->rseq;
	dst->rseq = k->lseq;
}

/* sock_cgroup returns the id of the cgroup the socket was created in
 * (accepted sockets inherit their listener's). It is read from the socket,
 * not from the current task: ESTABLISHED callbacks run in softirq context,
 * where the current task is unrelated. */
static __always_inline __u64 sock_cgroup(struct bpf_sock *bsk)
{
	struct tcp_sock *tp;

	if (!bsk)
		return 0;
	tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return 0;
	return ((struct sock *)tp)->sk_cgrp_data.cgroup->kn->id;
}

/* cgroup_state_of returns 0 for a cgroup that is not enrolled, and
 * CG_SAFE only for a safe cgroup that is not dirty. */
static __always_inline enum cgroup_state cgroup_state_of(__u64 cg)
{
	enum cgroup_state *st = bpf_map_lookup_elem(&sm_fp_cgroups, &cg);

	if (!st)
		return 0;
	if (*st == CG_SAFE && bpf_map_lookup_elem(&sm_fp_dirty, &cg))
		return CG_ENROLLED;
	return *st;
}

static __always_inline int is_loopback(const struct addr6 *a)
{
	if (a->w[0] || a->w[1])
		return 0;
	if (!a->w[2])
		return a->w[3] == bpf_htonl(1); /* ::1 */
	return a->w[2] == bpf_htonl(0x0000ffff) && (bpf_ntohl(a->w[3]) >> 24) == 127;
}

/* syn_key_of names a handshake from k, the listener's side of it. */
static __always_inline void syn_key_of(struct bpf_sock_ops *ops, struct syn_key *syn,
				       const struct sock_key *k)
{
	syn->local = k->local;
	syn->remote = k->remote;
	syn->lport = k->lport;
	syn->rport = k->rport;
	syn->pad = 0;
	syn->netns = is_loopback(&k->remote) ? bpf_get_netns_cookie(ops) : 0;
}

/* listening remembers a listener of an enrolled cgroup (listen(2) runs
 * this in the listening process). */
static __always_inline void listening(struct bpf_sock_ops *ops)
{
	struct listener_key lk = {};
	__u64 cg = sock_cgroup(ops->sk);

	if (!cg || !bpf_map_lookup_elem(&sm_fp_cgroups, &cg))
		return;
	lk.netns = bpf_get_netns_cookie(ops);
	lk.port = CTX(ops->local_port);
	bpf_map_update_elem(&sm_fp_listeners, &lk, &cg, BPF_ANY);
}

/* syn_seen records a handshake a listener of this node answers (the
 * request socket's TIMEOUT_INIT). */
static __always_inline void syn_seen(struct bpf_sock_ops *ops)
{
	struct listener_key lk = {};
	struct syn_key syn = {};
	struct sock_key k = {};
	__u32 v = SYN_SEEN;
	__u64 *lcg;

	sock_addrs(ops, &k);
	syn_key_of(ops, &syn, &k);
	lk.netns = bpf_get_netns_cookie(ops);
	lk.port = k.lport;
	lcg = bpf_map_lookup_elem(&sm_fp_listeners, &lk);
	if (lcg) {
		v |= SYN_KNOWN_LISTENER;
		if (cgroup_state_of(*lcg) == CG_SAFE)
			v |= SYN_SAFE_LISTENER;
	}
	bpf_map_update_elem(&sm_fp_syns, &syn, &v, BPF_ANY);
}

/* established decides whether an established socket joins the fast path
 * (see "Which connections join" at the top) and puts it there, in
 * sm_fp_hold and sm_fp_socks. Its own cgroup must be safe, and its peer's:
 * the connecting side learns that from the listener's cgroup (a listener
 * from before the fast path is assumed to be), the accepting side from the
 * connecting side's joining. */
static __always_inline void established(struct bpf_sock_ops *ops, int active)
{
	struct bpf_sock *sk = ops->sk;
	struct target t = {};
	struct sock_state *st;
	struct sock_key k = {}, lk;
	struct syn_key syn = {};
	enum cgroup_state self;
	__u32 *seen, flags;
	__u64 cookie;

	if (!sk)
		return;
	self = cgroup_state_of(sock_cgroup(sk));
	if (!self)
		return;
	sock_addrs(ops, &k);
	k.lseq = CTX(ops->snd_una);
	k.rseq = CTX(ops->rcv_nxt);
	if (active) {
		swap_key(&lk, &k);
		syn_key_of(ops, &syn, &lk);
	} else {
		syn_key_of(ops, &syn, &k);
	}
	seen = bpf_map_lookup_elem(&sm_fp_syns, &syn);
	flags = seen ? *seen : 0;
	if (!active)
		bpf_map_delete_elem(&sm_fp_syns, &syn);
	if (!flags) {
		count(remote_peers);
		return;
	}
	if (self != CG_SAFE)
		goto unsafe;
	if (active ? (flags & SYN_KNOWN_LISTENER) && !(flags & SYN_SAFE_LISTENER) : !(flags & SYN_JOINED))
		goto unsafe;

	st = bpf_sk_storage_get(&sm_fp_sock, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		goto fail;
	swap_key(&st->peer, &k);
	st->flags = SOCK_F_ELIGIBLE;
	st->ready_seq = k.rseq; /* what is published below */

	cookie = bpf_get_socket_cookie(ops);
	if (bpf_map_update_elem(&sm_fp_keys, &cookie, &k, BPF_NOEXIST))
		goto fail;
	/* Hold first: sm_fp_hold has no program, sm_fp_socks brings sk_msg. */
	if (bpf_sock_hash_update(ops, &sm_fp_hold, &k, BPF_NOEXIST))
		goto fail_keys;
	if (bpf_sock_hash_update(ops, &sm_fp_socks, &k, BPF_NOEXIST))
		goto fail_hold;
	bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	count(socks_added);
	if (active) {
		flags |= SYN_JOINED;
		bpf_map_update_elem(&sm_fp_syns, &syn, &flags, BPF_EXIST);
	}
	/* Nothing received yet: ready from the first byte (rule 2). */
	t.ready_seq = k.rseq;
	t.sk = (__u64)(unsigned long)sk;
	if (!bpf_map_update_elem(&sm_fp_targets, &k, &t, BPF_NOEXIST))
		count(targets);
	return;
unsafe:
	count(unsafe_pairs);
	return;
fail_hold:
	bpf_map_delete_elem(&sm_fp_hold, &k);
fail_keys:
	bpf_map_delete_elem(&sm_fp_keys, &cookie);
fail:
	count(add_errors);
}

/* closed forgets a fast-path socket's key and target entry. */
static __always_inline void closed(struct bpf_sock_ops *ops)
{
	__u64 cookie = bpf_get_socket_cookie(ops);
	struct sock_key *k = bpf_map_lookup_elem(&sm_fp_keys, &cookie);

	if (!k)
		return;
	bpf_map_delete_elem(&sm_fp_targets, k);
	bpf_map_delete_elem(&sm_fp_keys, &cookie);
	count(socks_closed);
}

SEC("sockops")
int sm_fp_sockops(struct bpf_sock_ops *ops)
{
	__u32 family = CTX(ops->family), op = CTX(ops->op);

	if (family != 2 && family != 10)
		return 1;
	switch (op) {
	case BPF_SOCK_OPS_TIMEOUT_INIT:
		/* Also called for connecting sockets: only request sockets
		 * (a listener answering a SYN) are not full sockets. */
		if (!CTX(ops->is_fullsock))
			syn_seen(ops);
		break;
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		listening(ops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		established(ops, 1);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		established(ops, 0);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* args[1] is the new state; 7 is TCP_CLOSE. */
		if (CTX(ops->args[1]) == 7)
			closed(ops);
		break;
	}
	return 1;
}

/* publish runs on an eligible receiver's sends: it renews the sequence
 * number the socket has read up to, if it has read everything (rule 2).
 * The first was published at ESTABLISHED; this catches up when the peer
 * sent through TCP first. Only TCP data moves rcv_nxt (handed-over data
 * does not), so once published nothing is looked up again until the peer
 * sends through TCP: a one-way sender, or a receiver whose peer has handed
 * over, costs two field reads a send. */
static __always_inline void publish(struct sock_state *st, struct tcp_sock *tp)
{
	__u32 rcv_nxt = tp->rcv_nxt;
	struct sock_key own;
	struct target *cur;

	if (!(st->flags & SOCK_F_ELIGIBLE) || (st->flags & SOCK_F_SPLICED))
		return;
	/* Only with nothing unread: a byte the application has not read yet
	 * must not be overtaken by one handed over later. */
	if (tp->copied_seq != rcv_nxt || st->ready_seq == rcv_nxt)
		return;
	swap_key(&own, &st->peer);
	cur = bpf_map_lookup_elem(&sm_fp_targets, &own);
	if (!cur) {
		/* The splice tracepoint took it out (or it never got in):
		 * for good. */
		st->flags |= SOCK_F_SPLICED;
		return;
	}
	cur->ready_seq = rcv_nxt;
	st->ready_seq = rcv_nxt;
}

/* peer_full says whether a send of size bytes would leave more than the
 * peer may hold unread in its psock queue (rule 3, queue_max). A send
 * into an empty queue always may go, however large. The peer is read through the
 * pointer its target entry keeps: the entry leaves when the socket closes,
 * and a socket's memory stays a socket for an RCU grace period after, so a
 * read that races a close sees a stale number, never faults, and the
 * redirect itself then finds no peer and takes the normal path. */
static __always_inline int peer_full(const struct target *t, __u32 size)
{
	struct sock *peer = (struct sock *)t->sk;
	struct sk_psock *psock;
	__u32 queued, limit;

	if (!peer)
		return 0;
	psock = (struct sk_psock *)((unsigned long)BPF_CORE_READ(peer, sk_user_data) & ~7UL);
	/* Kernels before 6.8 do not count the queue: the agent does not turn
	 * the fast path on there (sockmap.QueueLength). */
	if (!psock || !bpf_core_field_exists(psock->msg_tot_len))
		return 0;
	queued = BPF_CORE_READ(psock, msg_tot_len);
	if (!queued)
		return 0;
	limit = BPF_CORE_READ(peer, sk_rcvbuf);
	if (!(BPF_CORE_READ(peer, sk_userlocks) & SOCK_RCVBUF_LOCK) && limit < queue_max)
		limit = queue_max;
	return queued + size > limit;
}

/* peer_read_all says whether the peer has read every byte this socket sent
 * through TCP (rule 2), from the peer's own read position when the peer
 * has not published it (a peer that never sends). */
static __always_inline int peer_read_all(const struct target *t, struct tcp_sock *tp)
{
	struct tcp_sock *peer = (struct tcp_sock *)t->sk;

	if (t->ready_seq == tp->write_seq)
		return 1;
	return peer && BPF_CORE_READ(peer, copied_seq) == tp->write_seq;
}

/* hand_over says whether this send may go to the peer socket (rules 2 and
 * 3): the peer is a target, had read every byte this socket queued for
 * TCP when the sends were handed over, and does not have queue_max (or
 * its own SO_RCVBUF) unread. A send that finds the peer full goes through TCP
 * and takes the hand-over back: the next ones wait, in TCP, until the peer
 * has read everything again. */
static __always_inline int hand_over(struct sock_state *st, struct tcp_sock *tp, __u32 size,
				     struct fp_stats *s)
{
	struct target *t = bpf_map_lookup_elem(&sm_fp_targets, &st->peer);

	if (!t)
		return 0;
	if (st->flags & SOCK_F_HANDED_OVER) {
		if (!peer_full(t, size))
			return 1;
		st->flags &= ~SOCK_F_HANDED_OVER;
		if (s)
			__sync_fetch_and_add(&s->backpressure, 1);
		return 0;
	}
	if (!peer_read_all(t, tp) || peer_full(t, size)) {
		if (s)
			__sync_fetch_and_add(&s->handover_waits, 1);
		return 0;
	}
	t->handed_over = 1;
	st->flags |= SOCK_F_HANDED_OVER;
	if (s)
		__sync_fetch_and_add(&s->handovers, 1);
	return 1;
}

SEC("sk_msg")
int sm_fp_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	__u32 size = msg->size;
	struct sock_state *st;
	struct tcp_sock *tp;
	struct fp_stats *s;

	if (!sk)
		return SK_PASS;
	st = bpf_sk_storage_get(&sm_fp_sock, sk, 0, 0);
	/* Only sockets in sm_fp_socks run this program, and each got its
	 * record before it was added. */
	if (!st)
		return SK_PASS;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return SK_PASS;
	s = stats();
	publish(st, tp);
	/* A failed redirect lookup returns SK_DROP: that must become "normal
	 * path", never a drop. */
	if (!hand_over(st, tp, size, s) ||
	    bpf_msg_redirect_hash(msg, &sm_fp_hold, &st->peer, BPF_F_INGRESS) != SK_PASS) {
		if (s)
			__sync_fetch_and_add(&s->fallback_msgs, 1);
		return SK_PASS;
	}
	if (s) {
		__sync_fetch_and_add(&s->redirect_msgs, 1);
		__sync_fetch_and_add(&s->redirect_bytes, size);
	}
	return SK_PASS;
}

/* socket_of returns the struct sock behind the current task's fd, or NULL
 * when fd is not a socket. */
static __always_inline struct sock *socket_of(unsigned long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds, *file;
	struct socket *sock;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return 0;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	return sock ? BPF_CORE_READ(sock, sk) : 0;
}

/* mark_dirty takes an enrolled cgroup's safety away until the agent has
 * looked at its processes again (rule 1). */
static __always_inline void mark_dirty(__u64 cg)
{
	enum cgroup_state enrolled = CG_ENROLLED;
	__u8 one = 1;

	if (!bpf_map_lookup_elem(&sm_fp_cgroups, &cg))
		return;
	if (bpf_map_update_elem(&sm_fp_dirty, &cg, &one, BPF_ANY))
		bpf_map_update_elem(&sm_fp_cgroups, &cg, &enrolled, BPF_EXIST);
	count(dirty_marks);
}

/* task_exe names a task's executable in k and returns the verdict on it,
 * 0 when there is none yet, or -1 when the task has no executable (a
 * kernel thread). */
static __always_inline int task_exe(struct task_struct *task, struct exe_key *k)
{
	struct inode *inode = BPF_CORE_READ(task, mm, exe_file, f_inode);
	enum exe_verdict *v;

	if (!inode)
		return -1;
	k->ino = BPF_CORE_READ(inode, i_ino);
	k->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	k->pad = 0;
	v = bpf_map_lookup_elem(&sm_fp_exes, k);
	return v ? *v : 0;
}

/* judge_now marks cgroup cg dirty for a task that runs an executable not
 * judged safe, and asks the agent to judge it if it has no verdict yet. */
static __always_inline void judge_now(__u64 cg, struct task_struct *task, const char *filename)
{
	struct exec_event *ev;
	struct exe_key k = {};
	int v = task_exe(task, &k);

	if (v == EXE_SAFE || v < 0)
		return;
	mark_dirty(cg);
	if (v)
		return;
	ev = bpf_ringbuf_reserve(&sm_fp_events, sizeof(*ev), 0);
	if (!ev) {
		count(events_lost);
		return;
	}
	ev->pid = BPF_CORE_READ(task, tgid);
	ev->pad = 0;
	ev->cgroup = cg;
	ev->exe = k;
	ev->filename[0] = 0;
	if (filename)
		bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename), filename);
	bpf_ringbuf_submit(ev, 0);
}

/* sm_fp_exec runs after every exec on the node: a program not judged safe,
 * started in an enrolled cgroup, makes the cgroup dirty before it can open
 * a socket. */
SEC("raw_tracepoint/sched_process_exec")
int sm_fp_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	__u64 cg = bpf_get_current_cgroup_id();

	if (!bpf_map_lookup_elem(&sm_fp_cgroups, &cg))
		return 0;
	judge_now(cg, (struct task_struct *)bpf_get_current_task(), BPF_CORE_READ(bprm, filename));
	return 0;
}

/* sm_fp_attach runs when a task moves to another cgroup: one not judged
 * safe, moving into an enrolled cgroup, makes it dirty. */
SEC("raw_tracepoint/cgroup_attach_task")
int sm_fp_attach(struct bpf_raw_tracepoint_args *ctx)
{
	struct cgroup *dst = (struct cgroup *)ctx->args[0];
	__u64 cg = BPF_CORE_READ(dst, kn, id);

	if (!bpf_map_lookup_elem(&sm_fp_cgroups, &cg))
		return 0;
	judge_now(cg, (struct task_struct *)ctx->args[2], 0);
	return 0;
}

/* spliced runs before the kernel splices (or sendfiles) from fd; see rule
 * 4 at the top. It only reads the kernel and writes sockmesh's own maps. */
static __always_inline int spliced(unsigned long fd)
{
	struct sk_psock *psock;
	struct sock_key *k;
	struct exe_key exe;
	struct sock *sk;
	__u64 cookie;
	enum exe_verdict unsafe = EXE_UNSAFE;

	sk = socket_of(fd);
	if (!sk)
		return 0;
	cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	k = bpf_map_lookup_elem(&sm_fp_keys, &cookie);
	if (!k)
		return 0;
	/* Not a target: nothing is redirected to it, now or later (a socket
	 * is published at ESTABLISHED or never). A proxy judged unsafe
	 * splices its sockets all the time and costs no more than this. */
	if (bpf_map_delete_elem(&sm_fp_targets, k))
		return 0;
	/* A target spliced: its program was misjudged. */
	count(splice_exits);
	if (task_exe((struct task_struct *)bpf_get_current_task(), &exe) >= 0)
		bpf_map_update_elem(&sm_fp_exes, &exe, &unsafe, BPF_ANY);
	mark_dirty(bpf_get_current_cgroup_id());
	/* sk_user_data carries flag bits below the psock pointer
	 * (SK_USER_DATA_NOCOPY, _BPF, _PSOCK). */
	psock = (struct sk_psock *)((unsigned long)BPF_CORE_READ(sk, sk_user_data) & ~7UL);
	if (psock && BPF_CORE_READ(psock, ingress_msg.next) !=
			     (void *)psock + bpf_core_field_offset(psock->ingress_msg))
		count(splice_stranded);
	return 0;
}

/* The splice watch. Any syscall tracepoint puts every system call of the
 * node on the kernel's slow path; the two per-syscall tracepoints below
 * cost the rest of them least (no program runs for other calls). The agent
 * attaches them when it can find their ids in tracefs, else the raw
 * sys_enter one, which runs for every call. */

/* syscall_enter is the record of a syscalls:sys_enter_* tracepoint. */
struct syscall_enter {
	__u64 common;
	long nr;
	unsigned long args[6];
};

SEC("tracepoint/syscalls/sys_enter_splice")
int sm_fp_splice_tp(struct syscall_enter *ctx)
{
	return spliced(ctx->args[0]); /* fd_in */
}

SEC("tracepoint/syscalls/sys_enter_sendfile64")
int sm_fp_sendfile_tp(struct syscall_enter *ctx)
{
	return spliced(ctx->args[1]); /* in_fd */
}

SEC("raw_tracepoint/sys_enter")
int sm_fp_splice(struct bpf_raw_tracepoint_args *ctx)
{
	long nr = (long)ctx->args[1];
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];

	if (nr == NR_splice)
		return spliced(BPF_CORE_READ(regs, di));
	if (nr == NR_sendfile)
		return spliced(BPF_CORE_READ(regs, si));
	return 0;
}
