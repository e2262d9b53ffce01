// SPDX-License-Identifier: GPL-2.0
/*
 * The floor: the least a program on each tracepoint the probe uses can do,
 * bump a per-CPU counter. bench/run.py measures it in the same run as the
 * monitors: what a program costs above it is what it does. consume_skb is
 * where a listener frees the SYNs it refuses (tcpdrop.c, listen-queue drops).
 */
#include "../plugin/kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} calls SEC(".maps");

static __always_inline void bump(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&calls, &zero);

	if (n)
		*n += 1;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(floor_kfree_skb, struct sk_buff *skb)
{
	bump();
	return 0;
}

SEC("tp_btf/consume_skb")
int BPF_PROG(floor_consume_skb, struct sk_buff *skb)
{
	bump();
	return 0;
}
