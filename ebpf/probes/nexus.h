/* Types shared by the probe programs and the Rust loader (ebpf/src/maps.rs mirrors them;
 * a test there pins their sizes). Plain fixed-width fields only, no implicit padding. */
#ifndef NEXUS_PROBES_H
#define NEXUS_PROBES_H

/* Processes whose threads are accounted (VMMs and the backend itself). */
#define NEXUS_MAX_TRACKED 1024
/* Threads of tracked processes with on-CPU time recorded. */
#define NEXUS_MAX_THREADS 32768
/* Distinct (isa, reason) pairs of KVM exits. */
#define NEXUS_MAX_EXIT_REASONS 512

/* Value of `thread_cpu`, keyed by thread id. */
struct nexus_thread_cpu {
	__u64 oncpu_ns; /* time on a CPU, summed at each switch away from it */
	__u64 switches; /* times switched away from a CPU */
	__u32 tgid;     /* its process */
	__u32 reserved;
};

/* Key of `kvm_exits`. */
struct nexus_exit_key {
	__u32 isa;    /* 1 VMX (Intel), 2 SVM (AMD), as in the kvm_exit tracepoint */
	__u32 reason; /* the exit reason code of that ISA */
};

#endif
