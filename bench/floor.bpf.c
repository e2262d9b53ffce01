// SPDX-License-Identifier: GPL-2.0
/*
 * The floor: the least a program on each tracepoint the probe uses can do,
 * bump a per-CPU counter. bench/run.py measures it in the same run as the
 * monitors: what a program costs above it is what it does. consume_skb is
 * where a listener frees the SYNs it refuses (tcpdrop.c, listen-queue drops).
 *
 * The keyed floor: the least any count per tag set can cost, the ports read
 * from the packet (direct loads, as tcpdrop.c) and one counter bumped at an
 * index hashed from them, in a table as large as the probe's drops map; no
 * key compared, no collision handled. Over thousands of ports, that one
 * access misses the CPU's caches as any table's would.
 */
#include "../plugin/kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

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

#define KEYED_SLOTS 16384	/* tcpdrop.c's drops map, --max-keys' default */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KEYED_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} keyed SEC(".maps");

/* weak: where the kernel has none (6.1, the anchor VM), only the plain floor loads */
extern void *bpf_rdonly_cast(const void *obj__ign, __u32 btf_id) __ksym __weak;

SEC("tp_btf/kfree_skb")
int BPF_PROG(floor_keyed_kfree_skb, struct sk_buff *skb)
{
	unsigned char *nh = skb->head + skb->network_header;
	struct tcphdr *tcp = bpf_rdonly_cast(nh + 20, bpf_core_type_id_kernel(struct tcphdr));
	__u32 ports = ((__u32)tcp->source << 16) | tcp->dest;
	__u32 index = (ports * 0x9E3779B1U) >> (32 - 14);
	__u64 *n = bpf_map_lookup_elem(&keyed, &index);

	if (n)
		*n += 1;
	return 0;
}
