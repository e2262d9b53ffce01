/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What tcpdrop.c hands to user space. plugin/event.py mirrors these structs
 * field for field with ctypes; tests/test_event.py checks the two layouts
 * agree (sizes and offsets, as clang lays them out).
 */
#ifndef TCPDROP_H
#define TCPDROP_H

#define TASK_COMM_LEN 16
#define MAX_STACK_DEPTH 64
#define MAX_SNAPLEN 2048	/* trace --pcap --snaplen: a 1500-byte packet whole */

/* The tag set drops are counted under (metrics mode): the drops map's key. */
struct drop_key {
	__u64 location;		/* the drop site: return address into the caller of kfree_skb */
	__u32 reason;		/* enum skb_drop_reason; REASON_UNKNOWN where the kernel has none */
	__u16 sport;		/* host byte order; 0 where bucketed, not tagged or not read (marks) */
	__u16 dport;
	__u8 family;		/* 4 or 6 */
	__u8 state;		/* TCP state of the socket, STATE_NONE if none */
	__u8 flags;		/* TCP header flags byte: FIN SYN RST PSH ACK URG ECE CWR */
	__u8 marks;		/* EPHEMERAL_* and MARK_*: what sport, dport and flags cannot say */
	__u32 netns;		/* network namespace inode with key_netns, else 0 (no byte left to chance) */
};

/* One dropped TCP packet, as the trace mode prints it. */
struct drop_event {
	struct drop_key key;	/* the tag set it was counted under */
	__u8 saddr[16];		/* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u32 len;		/* bytes of the IP packet the kernel held (see drop_count) */
	__u32 netns;		/* network namespace inode, 0 if unknown */
	__u32 pid;		/* task on CPU: often unrelated to the packet (softirq) */
	__s32 stack_size;	/* bytes of stack[] filled; 0 = not asked; < 0 = none (-errno) */
	__u16 sport;		/* as read, host byte order; 0 if not (key.marks) */
	__u16 dport;
	char comm[TASK_COMM_LEN];
	__u32 stack_align;	/* to stack[]'s 8-byte alignment: named, as every hole here */
	__u64 stack[MAX_STACK_DEPTH];	/* kernel return addresses, innermost first */
	__u64 time_ns;		/* of the drop, CLOCK_MONOTONIC */
	__u32 caplen;		/* bytes of packet[] filled (probe_config.snaplen) */
	__u32 pad;
	__u8 packet[MAX_SNAPLEN];	/* the IP packet's first bytes, as far as the
					 * linear data holds them; not zeroed beyond caplen */
};

struct drop_count {
	__u64 drops;
	__u64 bytes;		/* of the IP packets as the kernel held them: from the IP
				 * header to the end of the data, never the header's word */
};

/* Which process is in which network namespace: netns_tasks's records. */
struct netns_task {
	__u32 pid;
	__u32 netns;		/* network namespace inode */
};

/* The per-CPU cache of hot tag sets in front of the drops map (tcpdrop.c,
 * count_drop): a slot per CPU and index, claimed by a key already in the map. */
#define HOT_SLOT_BITS 6
#define HOT_SLOTS (1 << HOT_SLOT_BITS)
#define HOT_GENERATION HOT_SLOTS	/* the slot after them: its generation names
					 * the map's generation, and it is claimed
					 * once that generation's drops map was full
					 * on this CPU */

struct hot_slot {
	struct drop_key key;
	struct drop_count count;	/* counted here, not in the map, while the slot holds the key */
	__u32 claimed;		/* 1 once key is set */
	__u32 generation;	/* slot HOT_GENERATION: 0 in hot_a, 1 in hot_b (set by the loader) */
};

/* drop_key.marks (and so drop_event.key.marks) */
#define EPHEMERAL_SPORT 1	/* sport was in the ephemeral range: tagged as that, 0 here */
#define EPHEMERAL_DPORT 2
#define MARK_TRUNCATED 4	/* the packet ends before the TCP flags byte: flags 0, not read */
#define MARK_FRAGMENT 8		/* a non-first fragment: no TCP header at all */
#define MARK_NO_PORTS 16	/* the packet ends before the ports: sport, dport 0, not read */
#define MARK_PORTS_OVERFLOW 32	/* the drops map was full: counted without its ports
				 * (count_overflow), sport and dport 0 */

enum port_tags {
	PORT_TAGS_BUCKETED,	/* ports in the ephemeral range count as one */
	PORT_TAGS_ALL,
	PORT_TAGS_NONE,
};

/* Sentinels no kernel uses: TCP states start at 1, drop reasons at 0..~0x3ffff. */
#define STATE_NONE 0
#define REASON_UNKNOWN 0xffffffffu

/* Reasons of ours, for the SYNs a listener drops without a drop reason
 * (tcpdrop.c, listen-queue drops); plugin/names.py names them. */
#define REASON_LISTEN_OVERFLOW 0xfffffffeu	/* accept queue full, where the kernel has no TCP_LISTEN_OVERFLOW */
#define REASON_SYN_QUEUE_FULL 0xfffffffdu	/* SYN queue full, no syncookies */
#define REASON_LISTEN_DROP 0xfffffffcu		/* any other: no memory, no route, ... */
#define REASON_OURS_FIRST REASON_LISTEN_DROP

/* How listen-queue drops are seen (tcpdrop.c explains each). */
enum listen_mode {
	LISTEN_OFF,
	LISTEN_BRACKET,		/* fentry/fexit around tcp_rcv_state_process() */
	LISTEN_CHAIN,		/* tracepoints only: consume_skb and kfree_skb */
};

/* One CPU's share of a network namespace's listen counters (linux_mib). */
struct listen_mib {
	__u64 drops;		/* ListenDrops */
	__u64 overflows;	/* ListenOverflows */
	__u64 synq_full;	/* TCPReqQFullDrop */
};

/* listen_baselines' key: a namespace (its cookie, never reused) and a CPU. */
struct baseline_key {
	__u64 net_cookie;
	__u32 cpu;
	__u32 pad;
};

/* Slots of the per-CPU counters map. */
enum counter {
	COUNTER_LOST,		/* ring buffer full: event not delivered */
	COUNTER_RATELIMITED,	/* over the events-per-second budget */
	COUNTER_OVERFLOW_DROPS,	/* drops map full: counted here instead */
	COUNTER_OVERFLOW_BYTES,
	COUNTER_LISTEN_UNTRACKED,	/* SYNs not told dropped or not: no "before" (tcpdrop.c) */
	COUNTER_STACKS_LOST,	/* an event sent without its stack */
	COUNTER_NESTED,		/* a kfree_skb run the probe skipped (tcpdrop.c, enter_once) */
	COUNTER_UNREADABLE,	/* an IP packet whose headers could not be read: TCP or not? */
	COUNTER_MAX,
};

/* Filters and budgets, set by the loader before load (.rodata). */
struct probe_config {
	__u64 reason_mask[4];	/* bit n set = report reason n */
	__u32 events_per_sec;	/* per CPU; 0 = unlimited */
	__u16 port;		/* either side; 0 = any */
	__u16 ephemeral_low;	/* the host's ip_local_port_range */
	__u16 ephemeral_high;
	__u8 family;		/* 4, 6, or 0 = both */
	__u8 other_reasons;	/* report the kernel's reasons >= 256 */
	__u8 aggregate;		/* count each drop in the drops map */
	__u8 events;		/* send drop events to the ring buffer */
	__u8 port_tags;		/* enum port_tags */
	__u8 listen;		/* enum listen_mode */
	__u8 key_netns;		/* count per network namespace too (drop_key.netns) */
	__u8 stacks;		/* events carry the kernel stack */
	__u8 guard_nesting;	/* the kernel runs tp_btf nested (before 6.1): skip it (tcpdrop.c) */
	__u8 pad[5];
	/* Listen-queue drops: kernel addresses (kallsyms) and numbers (BTF). */
	__u64 conn_request;	/* tcp_conn_request: the drop site of the SYNs it refuses */
	__u64 syn_site;		/* tcp_rcv_state_process: where a listener consumes a SYN */
	__u64 syn_site_len;
	__u64 icmp_site;	/* icmp_rcv, icmpv6_rcv: ICMP errors that abort requests */
	__u64 icmp_site_len;
	__u64 icmp6_site;
	__u64 icmp6_site_len;
	__u64 page_offset_base;	/* x86-64: the addresses of the variables that place the */
	__u64 vmemmap_base;	/* direct map and struct pages (kallsyms), 0 if unknown */
	__u32 mib_listen_drops;	/* indices into struct linux_mib */
	__u32 mib_listen_overflows;
	__u32 mib_synq_full;
	__u32 listen_overflow_reason;	/* the kernel's TCP_LISTEN_OVERFLOW, or ours */
	__u32 ncpus;		/* possible CPUs */
	__u32 own_reasons;	/* bit n set = report reason REASON_UNKNOWN - n (UNKNOWN and ours) */
	__u32 snaplen;		/* events carry this many of the packet's bytes (at most) */
	__u32 pad_end;		/* to the struct's 8-byte multiple: named, as every hole here */
};

#endif /* TCPDROP_H */
