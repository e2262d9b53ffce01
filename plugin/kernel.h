/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The kernel types tcpdrop.c reads, and nothing else. Every struct is marked
 * preserve_access_index, so clang records each field access as a CO-RE
 * relocation and libbpf rewrites the offsets against the running kernel's
 * BTF at load time: the field lists below only need the fields we read, in
 * any order, and no kernel headers are needed anywhere.
 */
#ifndef TCPDROP_KERNEL_H
#define TCPDROP_KERNEL_H
/* This header stands in for vmlinux.h: tell bpf_tracing.h to use the
 * kernel's pt_regs names (di, si, sp), not the UAPI ones (rdi, rsi, rsp). */
#define __VMLINUX_H__

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define false 0
#define true 1

/* Constants (stable ABI, not relocated), as the kernel headers define them. */
enum bpf_map_type {
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_HASH = 5,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_ARRAY_OF_MAPS = 12,
	BPF_MAP_TYPE_RINGBUF = 27,
};
#define BPF_ANY 0	/* bpf_map_update_elem(): add or replace */
#define BPF_NOEXIST 1	/* bpf_map_update_elem(): only if the key is new */
#define ETH_P_IP	0x0800
#define ETH_P_IPV6	0x86DD
#define IPPROTO_TCP	6
#define E2BIG		7
#define EEXIST		17
#define TCP_LISTEN	10	/* include/net/tcp_states.h */
#define NSEC_PER_SEC	1000000000ULL

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct ns_common {
	unsigned int inum;
};

struct linux_mib {
	unsigned long mibs[1];	/* LINUX_MIB_MAX of them: the kernel's BTF bounds the index */
};

struct netns_mib {
	struct linux_mib *net_statistics;	/* __percpu */
};

struct net {
	struct ns_common ns;
	struct netns_mib mib;
	__u64 net_cookie;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct net_device {
	possible_net_t nd_net;
};

struct sock_common {
	volatile unsigned char skc_state;
	possible_net_t skc_net;
};

struct sock {
	struct sock_common __sk_common;
};

struct dst_entry {
	struct net_device *dev;
};

struct sk_buff {
	unsigned long _skb_refdst;	/* struct dst_entry *, bit 0: not refcounted */
	struct sock *sk;
	struct net_device *dev;
	unsigned int len;
	__be16 protocol;
	__u16 network_header;
	unsigned int tail;	/* sk_buff_data_t: an offset from head on 64-bit */
	unsigned int end;	/* the same: where struct skb_shared_info begins */
	unsigned char *head;
	unsigned char *data;
};

/* Only its size matters: the vmemmap's stride. */
struct page {
	unsigned long flags;
};

/* A fragment of a packet's data: struct skb_frag from 6.9 (netmem: a page
 * pointer, or with bit 0 set a net_iov, device memory), struct bio_vec before. */
struct skb_frag {
	unsigned long netmem;
	unsigned int len;
	unsigned int offset;
};

struct bio_vec {
	struct page *bv_page;
	unsigned int bv_len;
	unsigned int bv_offset;
};

struct skb_shared_info {
	__u8 nr_frags;
	struct skb_frag frags[1];
};

struct skb_shared_info___bio_vec {	/* before 6.9 */
	__u8 nr_frags;
	struct bio_vec frags[1];
};

/* Only the type's name matters to CO-RE: its values are read from BTF. */
enum skb_drop_reason {
	SKB_NOT_DROPPED_YET = 0,
};

/* The classic tracepoint's record; rx_sk (6.11+) and reason (5.17+) are
 * probed with bpf_core_field_exists(), so one object runs on all of them. */
struct trace_entry {
	unsigned short type;
};

struct trace_event_raw_kfree_skb {
	struct trace_entry ent;
	void *skbaddr;
	void *location;
	void *rx_sk;
	enum skb_drop_reason reason;
};

/* Wire formats, as the kernel's BTF types: bpf_rdonly_cast() needs their ids. */
struct iphdr {
	__be16 frag_off;
	__u8 protocol;
	__be32 saddr;
	__be32 daddr;
};

struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
};

struct ipv6hdr {
	__u8 nexthdr;
	struct in6_addr saddr;
	struct in6_addr daddr;
};

struct tcphdr {
	__be16 source;
	__be16 dest;
};

struct nsproxy {
	struct net *net_ns;
};

struct task_struct {
	int pid;
	int tgid;
	struct task_struct *group_leader;
	struct nsproxy *nsproxy;
};

/* The task iterator's context (iter/task). */
struct seq_file;
struct bpf_iter_meta {
	struct seq_file *seq;
};
struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
};

/* consume_skb's record: location came in 6.3. */
struct trace_event_raw_consume_skb {
	struct trace_entry ent;
	void *skbaddr;
	void *location;
};

/* The kprobe's registers (tcp_drop()), as bpf_tracing.h names them for the
 * target CPU (clang -D__TARGET_ARCH_x86 or _arm64; make probe ARCH=...). */
#if defined(__TARGET_ARCH_arm64)
/* arm64: bpf_tracing.h reads them through the UAPI struct user_pt_regs,
 * which the kernel's struct pt_regs begins with: x0-x30 (x30 the link
 * register), then sp, pc and pstate. */
struct pt_regs;
struct user_pt_regs {
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
};
#elif defined(__TARGET_ARCH_x86)
/* x86-64: the kernel's own names (see __VMLINUX_H__ above). */
struct pt_regs {
	unsigned long di;
	unsigned long si;
	unsigned long sp;
};
#else
#error "kernel.h knows the registers of __TARGET_ARCH_x86 and __TARGET_ARCH_arm64 only"
#endif

/* A BPF array map, seen from the kernel: a per-CPU one's elements are
 * per-CPU pointers. */
struct bpf_array {
	__u32 elem_size;	/* unread: C needs a member before pptrs[] */
	void *pptrs[];
};

#pragma clang attribute pop

#endif /* TCPDROP_KERNEL_H */
