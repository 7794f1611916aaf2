/* KVM exits by reason, from kvm:kvm_exit (it fires on hosts with hardware virtualization; not
 * under PVM or TCG). The event's layout is spelled out here rather than taken from vmlinux.h:
 * on hosts where KVM is a module its types are not in the kernel's BTF. Offsets as in
 * /sys/kernel/tracing/events/kvm/kvm_exit/format, stable since Linux 5.x. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "nexus.h"

char LICENSE[] SEC("license") = "GPL";

struct kvm_exit_event {
	__u64 common;      /* offset 0: common_type, flags, preempt count, pid */
	__u32 exit_reason; /* offset 8 */
	__u32 pad;
	__u64 guest_rip;   /* offset 16 */
	__u32 isa;         /* offset 24 */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NEXUS_MAX_EXIT_REASONS);
	__type(key, struct nexus_exit_key);
	__type(value, __u64); /* exits */
} kvm_exits SEC(".maps");

static __always_inline int try_count_exit(struct kvm_exit_event *event)
{
	struct nexus_exit_key key = { .isa = event->isa, .reason = event->exit_reason };
	__u64 *count = bpf_map_lookup_elem(&kvm_exits, &key);
	if (!count) {
		__u64 one = 1;
		if (bpf_map_update_elem(&kvm_exits, &key, &one, BPF_NOEXIST) == 0)
			return 0;
		count = bpf_map_lookup_elem(&kvm_exits, &key);
		if (!count)
			return 0; /* the map is full */
	}
	__sync_fetch_and_add(count, 1);
	return 0;
}

SEC("tracepoint/kvm/kvm_exit")
int nexus_kvm_exit(struct kvm_exit_event *event)
{
	return try_count_exit(event);
}
