// SPDX-License-Identifier: GPL-2.0
/*
 * tcpdrop: every TCP packet the Linux kernel drops, and why.
 *
 * One handler, three hooks, tried in this order by the loader:
 *   tp_btf/kfree_skb            typed pointers: direct loads, the cheapest
 *   tracepoint/skb/kfree_skb    the classic record: probe reads
 *   kprobe/tcp_drop             kernels 4.7-5.18 without a drop reason
 * TCP is decided from the packet itself, so drops that happen before any
 * socket lookup (closed port, netfilter) are seen too.
 *
 * Two ways to build it, one source:
 *   CO-RE (default)   clang, once, against kernel.h; libbpf relocates the
 *                     struct offsets to the running kernel's BTF at load.
 *   bcc (TCPDROP_BCC) compiled on the monitored host at start-up against
 *                     its kernel headers, for kernels without BTF
 *                     (plugin/bcc_loader.py passes the -D settings below).
 * Only the declarations differ; the handler is the same code.
 */
#ifndef TCPDROP_BCC
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#else
#include <linux/skbuff.h>
#include <net/sock.h>
#endif
#include "tcpdrop.h"

struct budget {
	__u64 window_start;
	__u32 used;
};

#ifndef TCPDROP_BCC
char LICENSE[] SEC("license") = "GPL";

const volatile struct probe_config cfg = {};

/* Drop counts per tag set, per CPU: no atomics, no cache line ping-pong in a
 * drop storm. User space sums the CPUs. The loader sizes drops, events and
 * stacks for the mode it runs in (plugin/probe.py, map_sizes). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct drop_key);
	__type(value, struct drop_count);
} drops SEC(".maps");

/* A drop storm is a few tag sets counted millions of times: their counts go
 * to a slot of this per-CPU array (an index and a compare) instead of a hash
 * lookup each. User space retires a slot index by bumping its epoch. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HOT_SLOTS);
	__type(key, __u32);
	__type(value, struct hot_slot);
} hot_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HOT_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} hot_epochs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 4096);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct budget);
} budgets SEC(".maps");

/* Each map operation the handler does, in libbpf's terms (bcc's below). */
static __always_inline struct drop_count *drops_lookup(struct drop_key *key)
{
	return bpf_map_lookup_elem(&drops, key);
}

static __always_inline long drops_insert(struct drop_key *key, struct drop_count *first)
{
	return bpf_map_update_elem(&drops, key, first, BPF_NOEXIST);
}

static __always_inline struct hot_slot *hot_slot(__u32 *index)
{
	return bpf_map_lookup_elem(&hot_slots, index);
}

static __always_inline __u32 *hot_epoch(__u32 *index)
{
	return bpf_map_lookup_elem(&hot_epochs, index);
}

static __always_inline __u64 *counter(__u32 *slot)
{
	return bpf_map_lookup_elem(&counters, slot);
}

static __always_inline struct budget *budget(__u32 *zero)
{
	return bpf_map_lookup_elem(&budgets, zero);
}

static __always_inline struct drop_event *event_reserve(void)
{
	return bpf_ringbuf_reserve(&events, sizeof(struct drop_event), 0);
}

static __always_inline long stack_id(void *ctx)
{
	return bpf_get_stackid(ctx, &stacks, 0);
}

#else /* TCPDROP_BCC: the same maps and settings, in bcc's terms */

/* The loader's settings, as a C initializer: compiled in, folded away. */
static const struct probe_config cfg = TCPDROP_CFG;

BPF_PERCPU_HASH(drops, struct drop_key, struct drop_count, TCPDROP_MAX_KEYS);
BPF_PERCPU_ARRAY(hot_slots, struct hot_slot, HOT_SLOTS);
BPF_ARRAY(hot_epochs, __u32, HOT_SLOTS);
BPF_RINGBUF_OUTPUT(events, TCPDROP_RINGBUF_PAGES);
BPF_STACK_TRACE(stacks, TCPDROP_MAX_STACKS);
BPF_PERCPU_ARRAY(counters, __u64, COUNTER_MAX);
BPF_PERCPU_ARRAY(budgets, struct budget, 1);

/* Functions, not macros: bcc rewrites map.lookup() only where it is written
 * out ("cannot use map function inside a macro"), and not &map in helpers. */
static __always_inline struct drop_count *drops_lookup(struct drop_key *key)
{
	return drops.lookup(key);
}

static __always_inline long drops_insert(struct drop_key *key, struct drop_count *first)
{
	return drops.insert(key, first);	/* BPF_NOEXIST */
}

static __always_inline struct hot_slot *hot_slot(__u32 *index)
{
	return hot_slots.lookup(index);
}

static __always_inline __u32 *hot_epoch(__u32 *index)
{
	return hot_epochs.lookup(index);
}

static __always_inline __u64 *counter(__u32 *slot)
{
	return counters.lookup(slot);
}

static __always_inline struct budget *budget(__u32 *zero)
{
	return budgets.lookup(zero);
}

static __always_inline struct drop_event *event_reserve(void)
{
	return events.ringbuf_reserve(sizeof(struct drop_event));
}

static __always_inline long stack_id(void *ctx)
{
	return stacks.get_stackid(ctx, 0);
}

#define SEC(name)	/* bcc gives each program its own section */

/* No BTF, so no CO-RE: the headers' offsets are this kernel's already. */
#define BPF_CORE_READ(src, field) ({					\
	typeof((src)->field) __val = 0;					\
	bpf_probe_read_kernel((void *)&__val, sizeof(__val), (const void *)&(src)->field); \
	__val; })
#define bpf_htons(x) htons(x)
#define bpf_ntohs(x) ntohs(x)
#endif /* TCPDROP_BCC */

#define NETWORK_HEADER_UNSET 0xffff	/* skb->network_header before it is set */

/* Wire formats, not kernel structs: these never move. */
struct tcp_head {		/* the first 14 bytes of a TCP header */
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff;
	__u8 flags;
};

struct ipv4_head {
	__u8 version_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__be16 check;
	__be32 saddr;
	__be32 daddr;
};

struct ipv6_head {
	__u8 version_class;
	__u8 class_flow[3];
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* IP and TCP headers without options: what one probe read fetches. */
union packet {
	struct {
		struct ipv4_head ip;
		struct tcp_head tcp;
	} v4;
	struct {
		struct ipv6_head ip;
		struct tcp_head tcp;
	} v6;
};

/* IPv6 extension headers that may stand between the IPv6 and TCP headers. */
#define NEXTHDR_HOP	0
#define NEXTHDR_ROUTING	43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH	51
#define NEXTHDR_DEST	60
#define MAX_IPV6_EXT	6

static __always_inline void count(enum counter slot, __u64 n)
{
	__u32 key = slot;
	__u64 *value = counter(&key);

	if (value)
		*value += n;
}

/* Per-CPU budget of events per second: a drop storm must not become an
 * event storm. What is over budget is counted, not lost silently. */
static __always_inline bool over_budget(void)
{
	__u32 zero = 0;
	struct budget *b;
	__u64 now;

	if (!cfg.events_per_sec)
		return false;
	b = budget(&zero);
	if (!b)
		return true;
	now = bpf_ktime_get_ns();
	if (now - b->window_start >= NSEC_PER_SEC) {
		b->window_start = now;
		b->used = 0;
	}
	if (b->used >= cfg.events_per_sec)
		return true;
	b->used++;
	return false;
}

static __always_inline bool reason_wanted(__u32 reason)
{
	__u64 word;

	/* Constant indices only: a computed one loses its bounds to the verifier. */
	if (reason < 64)
		word = cfg.reason_mask[0];
	else if (reason < 128)
		word = cfg.reason_mask[1];
	else if (reason < 192)
		word = cfg.reason_mask[2];
	else if (reason < 256)
		word = cfg.reason_mask[3];
	else
		return cfg.other_reasons;
	return word & (1ULL << (reason & 63));
}

static __always_inline __u16 port_tag(__u16 port, __u8 *ephemeral, __u8 bit)
{
	if (cfg.port_tags == PORT_TAGS_NONE)
		return 0;
	if (cfg.port_tags == PORT_TAGS_BUCKETED &&
	    port >= cfg.ephemeral_low && port <= cfg.ephemeral_high) {
		*ephemeral |= bit;
		return 0;
	}
	return port;
}

static __always_inline bool same_key(const struct drop_key *a, const struct drop_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2];	/* 24 bytes, no padding */
}

/* The key's slot index: a multiplicative hash of its fields. */
static __always_inline __u32 hot_index(const struct drop_key *key)
{
	const __u64 *x = (const __u64 *)key;

	return ((x[0] ^ x[1] ^ x[2]) * 0x9E3779B97F4A7C15ULL) >> (64 - HOT_SLOT_BITS);
}

static __always_inline void count_drop(struct drop_key *key, __u32 bytes)
{
	__u32 index = hot_index(key);
	struct hot_slot *hot = hot_slot(&index);
	__u32 *epoch = hot_epoch(&index);
	struct drop_count *c;
	bool hot_free;

	if (!hot || !epoch)
		return;
	hot_free = !hot->claimed || hot->epoch != *epoch;
	if (!hot_free && same_key(&hot->key, key)) {
		hot->count.drops += 1;
		hot->count.bytes += bytes;
		return;
	}

	c = drops_lookup(key);
	if (!c) {
		struct drop_count first = { .drops = 1, .bytes = bytes };
		long err = drops_insert(key, &first);

		if (!err)
			goto claim;
		/* -EEXIST: another CPU added the key first; else the map is full */
		if (err == -EEXIST)
			c = drops_lookup(key);
		if (!c) {
			count(COUNTER_OVERFLOW_DROPS, 1);
			count(COUNTER_OVERFLOW_BYTES, bytes);
			return;
		}
	}
	c->drops += 1;
	c->bytes += bytes;
claim:
	/* Only a key the map holds takes a slot: --max-keys still bounds the
	 * tag sets. The slot counts from zero; user space adds both. */
	if (hot_free) {
		hot->claimed = 0;
		hot->key = *key;
		hot->count.drops = 0;
		hot->count.bytes = 0;
		hot->epoch = *epoch;
		hot->claimed = 1;	/* last: a reader skips a slot being claimed */
	}
}

/* Offset of the TCP header after the IPv6 header, or 0 if this is not a
 * TCP packet with its TCP header (non-first fragments have none). */
static __always_inline __u32 ipv6_tcp_offset(unsigned char *nh, __u8 nexthdr)
{
	__u32 off = sizeof(struct ipv6_head);
	struct { __u8 nexthdr; __u8 len; __be16 frag_off; } ext;

	for (int i = 0; i < MAX_IPV6_EXT; i++) {
		if (nexthdr == IPPROTO_TCP)
			return off;
		if (nexthdr != NEXTHDR_HOP && nexthdr != NEXTHDR_ROUTING &&
		    nexthdr != NEXTHDR_FRAGMENT && nexthdr != NEXTHDR_AUTH &&
		    nexthdr != NEXTHDR_DEST)
			return 0;
		if (bpf_probe_read_kernel(&ext, sizeof(ext), nh + off))
			return 0;
		if (nexthdr == NEXTHDR_FRAGMENT) {
			if (ext.frag_off & bpf_htons(0xfff8))
				return 0;
			off += 8;
		} else if (nexthdr == NEXTHDR_AUTH) {
			off += (ext.len + 2) * 4;
		} else {
			off += (ext.len + 1) * 8;
		}
		nexthdr = ext.nexthdr;
	}
	return 0;
}

/* The rarer half of a drop's details: only the event path reads them. */
static __always_inline void send_event(void *ctx, struct sk_buff *skb, struct sock *sk,
				       struct drop_key *key, union packet *pkt,
				       __u16 sport, __u16 dport, bool btf)
{
	struct net_device *dev;
	struct net *net = NULL;
	struct drop_event *e;

	if (over_budget()) {
		count(COUNTER_RATELIMITED, 1);
		return;
	}
	e = event_reserve();
	if (!e) {
		count(COUNTER_LOST, 1);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));	/* reserved memory is not zeroed */
	e->location = key->location;
	e->reason = key->reason;
	e->family = key->family;
	e->state = key->state;
	e->flags = key->flags;
	e->sport = sport;
	e->dport = dport;
	if (key->family == 4) {
		__builtin_memcpy(e->saddr, &pkt->v4.ip.saddr, 4);
		__builtin_memcpy(e->daddr, &pkt->v4.ip.daddr, 4);
	} else {
		__builtin_memcpy(e->saddr, pkt->v6.ip.saddr, 16);
		__builtin_memcpy(e->daddr, pkt->v6.ip.daddr, 16);
	}
	e->len = btf ? skb->len : BPF_CORE_READ(skb, len);
	/* The netns of the device the packet came in on (or goes out of);
	 * the socket's where there is no device yet. */
	dev = btf ? skb->dev : BPF_CORE_READ(skb, dev);
	if (dev)
		net = btf ? dev->nd_net.net : BPF_CORE_READ(dev, nd_net.net);
	else if (sk)
		net = btf ? sk->__sk_common.skc_net.net
			  : BPF_CORE_READ(sk, __sk_common.skc_net.net);
	if (net)
		e->netns = btf ? net->ns.inum : BPF_CORE_READ(net, ns.inum);
	e->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->stack_id = stack_id(ctx);
	bpf_ringbuf_submit(e, 0);
}

/*
 * The handler every hook calls. @btf is a compile-time constant at each call
 * site: true where the hook hands us BTF-typed pointers (direct loads, which
 * the verifier makes fault-safe), false where they are plain addresses and
 * each field costs a probe read.
 */
static __always_inline int handle_drop(void *ctx, struct sk_buff *skb,
				       struct sock *sk, __u64 location,
				       __u32 reason, bool btf)
{
	struct drop_key key = { .location = location, .reason = reason };
	union packet pkt;
	struct tcp_head tcp;
	unsigned char *nh;
	__be16 protocol;
	__u16 network_header, sport, dport;
	__u32 tcp_off, bytes;

	/* Most drops are not TCP: decide that with as little work as possible. */
	protocol = btf ? skb->protocol : BPF_CORE_READ(skb, protocol);
	if (protocol == bpf_htons(ETH_P_IP))
		key.family = 4;
	else if (protocol == bpf_htons(ETH_P_IPV6))
		key.family = 6;
	else
		return 0;
	if (cfg.family && cfg.family != key.family)
		return 0;
	if (!reason_wanted(reason))
		return 0;

	network_header = btf ? skb->network_header : BPF_CORE_READ(skb, network_header);
	if (network_header == NETWORK_HEADER_UNSET)
		return 0;
	nh = (btf ? skb->head : BPF_CORE_READ(skb, head)) + network_header;
	if (bpf_probe_read_kernel(&pkt, sizeof(pkt), nh))
		return 0;

	if (key.family == 4) {
		__u32 ihl = (pkt.v4.ip.version_ihl & 0x0f) * 4;

		if (pkt.v4.ip.version_ihl >> 4 != 4 || pkt.v4.ip.protocol != IPPROTO_TCP)
			return 0;
		if (pkt.v4.ip.frag_off & bpf_htons(0x1fff))
			return 0;	/* a non-first fragment: no TCP header */
		if (ihl == sizeof(struct ipv4_head))
			tcp = pkt.v4.tcp;
		else if (ihl < sizeof(struct ipv4_head) ||
			 bpf_probe_read_kernel(&tcp, sizeof(tcp), nh + ihl))
			return 0;
		bytes = bpf_ntohs(pkt.v4.ip.tot_len);
	} else {
		if (pkt.v6.ip.version_class >> 4 != 6)
			return 0;
		tcp_off = ipv6_tcp_offset(nh, pkt.v6.ip.nexthdr);
		if (!tcp_off)
			return 0;
		if (tcp_off == sizeof(struct ipv6_head))
			tcp = pkt.v6.tcp;
		else if (bpf_probe_read_kernel(&tcp, sizeof(tcp), nh + tcp_off))
			return 0;
		bytes = sizeof(struct ipv6_head) + bpf_ntohs(pkt.v6.ip.payload_len);
	}

	sport = bpf_ntohs(tcp.source);
	dport = bpf_ntohs(tcp.dest);
	if (cfg.port && sport != cfg.port && dport != cfg.port)
		return 0;
	key.flags = tcp.flags;
	if (sk)
		key.state = btf ? sk->__sk_common.skc_state
				: BPF_CORE_READ(sk, __sk_common.skc_state);

	if (cfg.aggregate) {
		key.sport = port_tag(sport, &key.ephemeral, EPHEMERAL_SPORT);
		key.dport = port_tag(dport, &key.ephemeral, EPHEMERAL_DPORT);
		count_drop(&key, bytes);
	}
	if (cfg.events)
		send_event(ctx, skb, sk, &key, &pkt, sport, dport, btf);
	return 0;
}

#ifndef TCPDROP_BCC	/* tp_btf needs BTF, which is why bcc is here */
SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb_btf, struct sk_buff *skb, void *location)
{
	__u32 reason = REASON_UNKNOWN;
	struct sock *sk = skb->sk;	/* on receive, the sender's socket or none */

	/* ctx[2] exists from 5.17 (reason), ctx[3] from 6.11 (rx_sk): the
	 * checks fold to constants at load, so older kernels never see the
	 * out-of-range reads. */
	if (bpf_core_field_exists(struct trace_event_raw_kfree_skb, reason))
		reason = (__u32)ctx[2];
	if (bpf_core_field_exists(struct trace_event_raw_kfree_skb, rx_sk)) {
		struct sock *rx_sk = (struct sock *)ctx[3];

		if (rx_sk)
			sk = rx_sk;
	}
	return handle_drop(ctx, skb, sk, (__u64)location, reason, true);
}
#endif

/* The classic record's fields differ by kernel: reason came in 5.17, rx_sk in
 * 6.11. CO-RE asks the kernel's BTF at load; bcc's loader reads the
 * tracepoint's format file and defines TP_HAS_REASON and TP_HAS_RX_SK. */
#ifndef TCPDROP_BCC
#define TP_REASON(args)	(bpf_core_field_exists(args->reason) ? args->reason : REASON_UNKNOWN)
#define TP_RX_SK(args)	(bpf_core_field_exists(args->rx_sk) ? args->rx_sk : NULL)
#else
/* bcc builds the record's struct from the format file for this name. */
#define kfree_skb_tp tracepoint__skb__kfree_skb
#define trace_event_raw_kfree_skb tracepoint__skb__kfree_skb
#ifdef TP_HAS_REASON
#define TP_REASON(args)	(args->reason)
#else
#define TP_REASON(args)	REASON_UNKNOWN
#endif
#ifdef TP_HAS_RX_SK
#define TP_RX_SK(args)	((struct sock *)args->rx_sk)
#else
#define TP_RX_SK(args)	NULL
#endif
#endif

#if !defined(TCPDROP_BCC) || defined(TCPDROP_HOOK_TRACEPOINT)
SEC("tracepoint/skb/kfree_skb")
int kfree_skb_tp(struct trace_event_raw_kfree_skb *args)
{
	struct sk_buff *skb = (struct sk_buff *)args->skbaddr;
	struct sock *sk = TP_RX_SK(args);

	if (!sk)
		sk = BPF_CORE_READ(skb, sk);
	return handle_drop(args, skb, sk, (__u64)args->location, TP_REASON(args), false);
}
#endif

#if !defined(TCPDROP_BCC) || defined(TCPDROP_HOOK_KPROBE)
#ifndef TCPDROP_BCC
SEC("kprobe/tcp_drop")
int BPF_KPROBE(tcp_drop, struct sock *sk, struct sk_buff *skb)
#else
int tcp_drop(struct pt_regs *ctx, struct sock *sk, struct sk_buff *skb)
#endif
{
	__u64 caller = 0;

	/* At function entry the return address is on top of the stack:
	 * that is the drop site, as the tracepoint's location would be. */
	bpf_probe_read_kernel(&caller, sizeof(caller), (void *)PT_REGS_SP(ctx));
	return handle_drop(ctx, skb, sk, caller, REASON_UNKNOWN, false);
}
#endif
