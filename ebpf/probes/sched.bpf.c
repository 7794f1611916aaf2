/* On-CPU time per thread of tracked processes (and of single threads user space registered
 * in thread_cpu), from sched:sched_switch.
 *
 *   CPU n: ──[ prev runs ]──► sched_switch ──[ next runs ]──► sched_switch ──►
 *                  ▲ switched_in_at[n]   │ prev's slice = now - switched_in_at[n]
 *
 * The tracepoint fires in __schedule() before the switch, so `current` is still `prev`: its
 * tgid comes from bpf_get_current_pid_tgid(), its tid from the event (a CO-RE field read). A
 * slice still running is counted at its next switch; the first slice after loading, whose start
 * is unknown, is dropped. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "nexus.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NEXUS_MAX_TRACKED);
	__type(key, __u32);   /* tgid */
	__type(value, __u32); /* unused */
} tracked_tgids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NEXUS_MAX_THREADS);
	__type(key, __u32); /* tid */
	__type(value, struct nexus_thread_cpu);
} thread_cpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64); /* ktime of the last switch on this CPU */
} switched_in_at SEC(".maps");

static __always_inline int try_account_switch(struct trace_event_raw_sched_switch *ctx)
{
	__u32 zero = 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 *last = bpf_map_lookup_elem(&switched_in_at, &zero);
	if (!last)
		return 0;
	__u64 since = *last;
	*last = now;
	if (since == 0)
		return 0;
	__u32 tid = (__u32)BPF_CORE_READ(ctx, prev_pid);
	struct nexus_thread_cpu *thread = bpf_map_lookup_elem(&thread_cpu, &tid);
	if (!thread) {
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		if (!bpf_map_lookup_elem(&tracked_tgids, &tgid))
			return 0;
		struct nexus_thread_cpu fresh = { .tgid = tgid };
		bpf_map_update_elem(&thread_cpu, &tid, &fresh, BPF_NOEXIST);
		thread = bpf_map_lookup_elem(&thread_cpu, &tid);
		if (!thread)
			return 0; /* the map is full */
	}
	__sync_fetch_and_add(&thread->oncpu_ns, now - since);
	__sync_fetch_and_add(&thread->switches, 1);
	return 0;
}

SEC("tracepoint/sched/sched_switch")
int nexus_sched_switch(struct trace_event_raw_sched_switch *ctx)
{
	return try_account_switch(ctx);
}
