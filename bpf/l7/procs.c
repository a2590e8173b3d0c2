//go:build ignore

/* Process starts and ends in the cgroup tree telemetry watches, as they
 * happen, so a server is probed before it serves (and one that lives less
 * than a scan interval is not missed), and its probes go when it exits.
 * The agent's periodic scan of /proc remains, for what is missed here. */

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual BSD/GPL";

struct proc_event {
	__u32 pid;
	__u32 exited; /* 0: exec, 1: the process ended */
};

/* Referenced so the type is in BTF for bpf2go -type. */
const struct proc_event *unused_proc_event __attribute__((unused));

/* sm_procs_cgroup: index 0 holds the watched cgroup (written by the agent
 * when it loads this); processes in it or below count. */
struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sm_procs_cgroup SEC(".maps");

/* sm_procs_events: proc_events to the agent. 64 KiB; when full an event is
 * lost, and the agent's next scan finds what it would have said. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} sm_procs_events SEC(".maps");

static __always_inline void report(__u32 exited)
{
	struct proc_event *e;

	if (bpf_current_task_under_cgroup(&sm_procs_cgroup, 0) != 1)
		return;
	e = bpf_ringbuf_reserve(&sm_procs_events, sizeof(*e), 0);
	if (!e)
		return;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->exited = exited;
	bpf_ringbuf_submit(e, 0);
}

SEC("raw_tracepoint/sched_process_exec")
int sm_procs_exec(void *ctx)
{
	report(0);
	return 0;
}

SEC("raw_tracepoint/sched_process_exit")
int sm_procs_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if ((__u32)id != id >> 32)
		return 0; /* a thread, not the process */
	report(1);
	return 0;
}
