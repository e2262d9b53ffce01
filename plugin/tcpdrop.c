// SPDX-License-Identifier: GPL-2.0
/*
 * tcpdrop: every TCP packet the Linux kernel drops, and why.
 *
 * One handler, three hooks, tried in this order by the loader:
 *   tp_btf/kfree_skb            typed pointers: direct loads, the cheapest
 *   tracepoint/skb/kfree_skb    the classic record: probe reads
 *   kprobe/tcp_drop             4.7-5.17, beside one of the above: there
 *                               tcp_drop() frees with __kfree_skb(), which
 *                               fires no tracepoint
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

/*
 * Drop counts per tag set, per CPU: no atomics, no cache line ping-pong in a
 * drop storm. User space sums the CPUs. A drop storm is a few tag sets
 * counted millions of times: their counts go to a slot of a per-CPU array
 * (an index and a compare) instead of a hash lookup each.
 *
 * Both come in two generations, a and b. The handler finds the current one
 * through drops_now and hot_now; each interval, user space swaps in the
 * other, empty generation, and the kernel returns from that map-in-map update
 * only once no program still runs on the old one (an RCU grace period). So
 * the old generation is read whole and quiet, then emptied: no count is read
 * twice or lost, and nothing is ever deleted from a map a program is
 * counting into. The loader sizes the maps for its mode (probe.py, map_sizes).
 *
 * Where the drops map is full (a port scan), a drop is counted without its
 * ports, in room kept for that: the overflow maps, in generations too. A
 * scan's tag sets differ by their ports alone, so there it keeps its reason,
 * state, flags, drop site and namespace.
 */
struct drops_map {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct drop_key);
	__type(value, struct drop_count);
} drops_a SEC(".maps"), drops_b SEC(".maps"), overflow_a SEC(".maps"), overflow_b SEC(".maps");

struct hot_map {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HOT_SLOTS + 1);	/* and HOT_FULL */
	__type(key, __u32);
	__type(value, struct hot_slot);
} hot_a SEC(".maps"), hot_b SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct drops_map);
} drops_now SEC(".maps") = { .values = { &drops_a } };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct hot_map);
} hot_now SEC(".maps") = { .values = { &hot_a } };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct drops_map);
} overflow_now SEC(".maps") = { .values = { &overflow_a } };

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

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

/* 1 while a kfree_skb hook counts a drop on this CPU (cfg.guard_nesting, enter_once). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} running SEC(".maps");

/* Each map operation the handler does, in libbpf's terms (bcc's below). */
static __always_inline void *drops_current(__u32 *zero)
{
	return bpf_map_lookup_elem(&drops_now, zero);
}

static __always_inline void *hot_current(__u32 *zero)
{
	return bpf_map_lookup_elem(&hot_now, zero);
}

static __always_inline void *overflow_current(__u32 *zero)
{
	return bpf_map_lookup_elem(&overflow_now, zero);
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

#else /* TCPDROP_BCC: the same maps and settings, in bcc's terms */

/* The loader's settings, as a C initializer: compiled in, folded away. */
static const struct probe_config cfg = TCPDROP_CFG;

BPF_PERCPU_HASH(drops_a, struct drop_key, struct drop_count, TCPDROP_MAX_KEYS);
BPF_PERCPU_HASH(drops_b, struct drop_key, struct drop_count, TCPDROP_MAX_KEYS);
BPF_PERCPU_HASH(overflow_a, struct drop_key, struct drop_count, TCPDROP_OVERFLOW_KEYS);
BPF_PERCPU_HASH(overflow_b, struct drop_key, struct drop_count, TCPDROP_OVERFLOW_KEYS);
BPF_PERCPU_ARRAY(hot_a, struct hot_slot, HOT_SLOTS + 1);
BPF_PERCPU_ARRAY(hot_b, struct hot_slot, HOT_SLOTS + 1);
BPF_ARRAY_OF_MAPS(drops_now, "drops_a", 1);	/* the loader sets [0] before attaching */
BPF_ARRAY_OF_MAPS(hot_now, "hot_a", 1);
BPF_ARRAY_OF_MAPS(overflow_now, "overflow_a", 1);
BPF_RINGBUF_OUTPUT(events, TCPDROP_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(counters, __u64, COUNTER_MAX);
BPF_PERCPU_ARRAY(budgets, struct budget, 1);

/* Functions, not macros: bcc rewrites map.lookup() only where it is written
 * out ("cannot use map function inside a macro"), and not &map in helpers. */
static __always_inline void *drops_current(__u32 *zero)
{
	return drops_now.lookup(zero);
}

static __always_inline void *hot_current(__u32 *zero)
{
	return hot_now.lookup(zero);
}

static __always_inline void *overflow_current(__u32 *zero)
{
	return overflow_now.lookup(zero);
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

#define SEC(name)	/* bcc gives each program its own section */
/* bcc loads each program alone, with no calls to other BPF functions: what
 * libbpf keeps out of line (__noinline) is inlined here. */
#define __noinline __always_inline

/* No BTF, so no CO-RE: the headers' offsets are this kernel's already. */
#define BPF_CORE_READ(src, field) ({					\
	typeof((src)->field) __val = 0;					\
	bpf_probe_read_kernel((void *)&__val, sizeof(__val), (const void *)&(src)->field); \
	__val; })
#define bpf_htons(x) htons(x)
#define bpf_ntohs(x) ntohs(x)
#endif /* TCPDROP_BCC */

#ifndef TCPDROP_BCC
/* bpf_rdonly_cast() (6.2+) turns an address into a typed pointer whose loads
 * are direct and fault-safe: a load each, not a helper call. Used where the
 * loader knows the kernel has it (cfg.direct_loads; LISTEN_CHAIN is 6.11+).
 * Weak: an object that cannot resolve it still loads, and there the calls
 * are never reached. */
extern void *bpf_rdonly_cast(const void *obj__ign, __u32 btf_id) __ksym __weak;
#define rdonly_cast(type, addr) ((type *)bpf_rdonly_cast((void *)(addr), bpf_core_type_id_kernel(type)))
#endif

/* Wire formats, not kernel structs: these never move. */
struct tcp_head {		/* the first 14 bytes of a TCP header (sizeof: 16, aligned) */
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

/* IPv6 extension headers that may stand between the IPv6 and TCP headers:
 * RFC 8200's, and those of RFC 7045's common format (HIP, Shim6). Mobility's
 * next header is always "none": no TCP behind it. */
#define NEXTHDR_HOP	0
#define NEXTHDR_ROUTING	43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH	51
#define NEXTHDR_DEST	60
#define NEXTHDR_HIP	139
#define NEXTHDR_SHIM6	140
#define MAX_IPV6_EXT	8	/* more, and the packet is not taken for TCP */

#define TCP_FLAGS_END	14	/* the flags byte is byte 13 of the TCP header */
#define TCP_PORTS_END	4

/* Atomic: the listen-queue handlers may interrupt a kfree_skb handler on
 * the same CPU, and these slots are shared; they count rare events only. */
static __always_inline void count(enum counter slot, __u64 n)
{
	__u32 key = slot;
	__u64 *value = counter(&key);

	if (value)
		__sync_fetch_and_add(value, n);
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
	else if (reason >= REASON_OURS_FIRST)
		return cfg.own_reasons & (1U << (REASON_UNKNOWN - reason));
	else
		return cfg.other_reasons;
	return word & (1ULL << (reason & 63));
}

/* A port as tagged; MARK_NO_PORTS: none read, none tagged. */
static __always_inline __u16 port_tag(__u16 port, __u8 *marks, __u8 ephemeral)
{
	if (cfg.port_tags == PORT_TAGS_NONE || (*marks & MARK_NO_PORTS))
		return 0;
	if (cfg.port_tags == PORT_TAGS_BUCKETED &&
	    port >= cfg.ephemeral_low && port <= cfg.ephemeral_high) {
		*marks |= ephemeral;
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

/* Counts a drop under @key in @map, the key added if it is not there: 0,
 * or why not: -E2BIG, the map is full; any other error (-EBUSY, or what newer
 * kernels' bucket locks return): this run interrupted another of the probe's
 * inside an update of the same map on this CPU, which holds the bucket (never
 * full: counted in COUNTER_NESTED). */
static __always_inline long count_in(void *map, struct drop_key *key, __u32 bytes)
{
	struct drop_count *c = bpf_map_lookup_elem(map, key);

	if (!c) {
		struct drop_count first = { .drops = 1, .bytes = bytes };
		long err = bpf_map_update_elem(map, key, &first, BPF_NOEXIST);

		/* -EEXIST: another CPU added the key first */
		if (err != -EEXIST)
			return err;
		c = bpf_map_lookup_elem(map, key);
		if (!c)
			return -E2BIG;
	}
	c->drops += 1;
	c->bytes += bytes;
	return 0;
}

/* Lets @hot, a free slot, count @key from now on. Only a key its map holds
 * takes a slot: --max-keys still bounds the tag sets. The slot counts from
 * zero; user space adds both. */
static __always_inline void claim(struct hot_slot *hot, struct drop_key *key)
{
	hot->key = *key;
	hot->count.drops = 0;
	hot->count.bytes = 0;
	hot->claimed = 1;
}

/* The drops map is full: @key's drop counted without its ports, or where the
 * overflow map is full too, without any tag (COUNTER_OVERFLOW_*). A scan's
 * drops share one portless key, which @hot_slots (if given) then counts. */
static __noinline void count_overflow(struct drop_key *key, __u32 bytes, void *hot_slots)
{
	__u32 zero = 0, index;
	void *overflow = overflow_current(&zero);
	struct drop_key portless = *key;
	struct hot_slot *hot = NULL;
	long err;

	portless.sport = portless.dport = 0;
	portless.marks = (key->marks & ~(EPHEMERAL_SPORT | EPHEMERAL_DPORT)) | MARK_PORTS_OVERFLOW;
	if (hot_slots) {
		index = hot_index(&portless);
		hot = bpf_map_lookup_elem(hot_slots, &index);
		if (hot && hot->claimed && same_key(&hot->key, &portless)) {
			hot->count.drops += 1;
			hot->count.bytes += bytes;
			return;
		}
	}
	err = overflow ? count_in(overflow, &portless, bytes) : -E2BIG;
	if (!err) {
		if (hot && !hot->claimed)
			claim(hot, &portless);
	} else if (err == -E2BIG) {
		count(COUNTER_OVERFLOW_DROPS, 1);
		count(COUNTER_OVERFLOW_BYTES, bytes);
	} else {
		count(COUNTER_NESTED, 1);
	}
}

/* Counts one drop under @key in the current generation. @hot_ok: the caller
 * may use the hot slots; only the kfree_skb handlers do, which never run
 * nested on one CPU (the kernel or enter_once() skips a nested run), so a
 * slot is never half written when read. The listen-queue handlers, which
 * may interrupt them, count in the maps only, under keys of their own.
 *
 * Once the drops map is full, which it stays until the next generation,
 * HOT_FULL says so: a key not in it goes straight to count_overflow(), and
 * a scan's drop costs about what a hit does, not a failed insert each. */
static __always_inline void count_drop(struct drop_key *key, __u32 bytes, bool hot_ok)
{
	__u32 zero = 0, index = hot_index(key), full_index = HOT_FULL;
	void *drops, *hot_slots = NULL;
	struct hot_slot *hot = NULL, *full = NULL;
	struct drop_count *c;
	long err;

	if (hot_ok) {
		hot_slots = hot_current(&zero);
		hot = hot_slots ? bpf_map_lookup_elem(hot_slots, &index) : NULL;
		if (hot && hot->claimed && same_key(&hot->key, key)) {
			hot->count.drops += 1;
			hot->count.bytes += bytes;
			return;
		}
		/* past the hit: a storm's drops never look at the mark, nor the map */
		full = hot_slots ? bpf_map_lookup_elem(hot_slots, &full_index) : NULL;
	}
	drops = drops_current(&zero);
	if (!drops)
		return;
	if (full && full->claimed) {
		c = bpf_map_lookup_elem(drops, key);
		if (c) {
			c->drops += 1;
			c->bytes += bytes;
		} else {
			count_overflow(key, bytes, hot_slots);
		}
		return;
	}
	err = count_in(drops, key, bytes);
	if (err == -E2BIG) {
		if (full)
			full->claimed = 1;
		count_overflow(key, bytes, hot_slots);
		return;
	}
	if (err) {
		count(COUNTER_NESTED, 1);
		return;
	}
	if (hot && !hot->claimed)
		claim(hot, key);
}

/* One dropped packet, read: its tag set and what only events need. */
struct drop {
	struct drop_key key;
	union packet pkt;
	__u16 sport, dport;	/* 0 unless read (key.marks) */
	__u32 bytes;		/* the IP packet as the kernel held it (drop_count.bytes) */
	__u32 netns;		/* events and key_netns only: the namespace's inode, 0 if unknown */
	__u32 readable;		/* of those bytes, how many the linear data holds at nh */
	__u64 nh;		/* the IP header's address (a number: struct drop is kept in a map) */
};

/* Offset of the TCP header after the IPv6 header at @nh, of which @readable
 * bytes are the packet's: 0 if this is not a TCP packet, or its extension
 * headers are not all there. A non-first fragment has no TCP header: marked. */
static __always_inline __u32 ipv6_tcp_offset(unsigned char *nh, __u8 nexthdr, __s64 readable,
					     struct drop *d)
{
	__u32 off = sizeof(struct ipv6_head);
	struct { __u8 nexthdr; __u8 len; __be16 frag_off; } ext;

	for (int i = 0; i <= MAX_IPV6_EXT; i++) {
		if (nexthdr == IPPROTO_TCP)
			return off;
		if (i == MAX_IPV6_EXT ||
		    (nexthdr != NEXTHDR_HOP && nexthdr != NEXTHDR_ROUTING &&
		     nexthdr != NEXTHDR_FRAGMENT && nexthdr != NEXTHDR_AUTH &&
		     nexthdr != NEXTHDR_DEST && nexthdr != NEXTHDR_HIP &&
		     nexthdr != NEXTHDR_SHIM6))
			return 0;
		/* every extension header is 8 bytes or more */
		if (off + 8 > readable || bpf_probe_read_kernel(&ext, sizeof(ext), nh + off))
			return 0;
		if (nexthdr == NEXTHDR_FRAGMENT) {
			if (ext.frag_off & bpf_htons(0xfff8)) {
				if (ext.nexthdr != IPPROTO_TCP)
					return 0;
				d->key.marks |= MARK_FRAGMENT | MARK_NO_PORTS;
				return off + 8;
			}
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

/* The fields of union packet the handler reads, by direct loads: the IP
 * header and the first bytes after a header without options. */
static __always_inline void read_headers_direct(unsigned char *nh, struct drop *d)
{
#ifndef TCPDROP_BCC
	struct tcphdr *tcp;

	if (d->key.family == 4) {
		struct iphdr *ip = rdonly_cast(struct iphdr, nh);

		tcp = rdonly_cast(struct tcphdr, nh + sizeof(struct ipv4_head));
		d->pkt.v4.ip.version_ihl = *(__u8 *)ip;
		d->pkt.v4.ip.protocol = ip->protocol;
		d->pkt.v4.ip.frag_off = ip->frag_off;
		d->pkt.v4.ip.saddr = ip->saddr;
		d->pkt.v4.ip.daddr = ip->daddr;
		d->pkt.v4.tcp.source = tcp->source;
		d->pkt.v4.tcp.dest = tcp->dest;
		d->pkt.v4.tcp.flags = *((__u8 *)tcp + __builtin_offsetof(struct tcp_head, flags));
	} else {
		struct ipv6hdr *ip = rdonly_cast(struct ipv6hdr, nh);

		tcp = rdonly_cast(struct tcphdr, nh + sizeof(struct ipv6_head));
		d->pkt.v6.ip.version_class = *(__u8 *)ip;
		d->pkt.v6.ip.nexthdr = ip->nexthdr;
		__builtin_memcpy(d->pkt.v6.ip.saddr, ip->saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(d->pkt.v6.ip.daddr, ip->daddr.in6_u.u6_addr8, 16);
		d->pkt.v6.tcp.source = tcp->source;
		d->pkt.v6.tcp.dest = tcp->dest;
		d->pkt.v6.tcp.flags = *((__u8 *)tcp + __builtin_offsetof(struct tcp_head, flags));
	}
#endif
}

/* Reads the packet's IP and TCP headers into @d: false if it is not a TCP
 * packet, or not of the family asked for. @btf and @direct are compile-time
 * constants at each call site. @btf: the hook hands us BTF-typed pointers
 * (direct loads, which the verifier makes fault-safe), else plain addresses,
 * and each field costs a probe read. @direct: the headers too are read with
 * direct loads (bpf_rdonly_cast), not a probe read.
 *
 * Only what the packet holds is believed, never a length field of its own:
 * the headers are fetched in one go, and then a byte is used only if it lies
 * within the packet's linear data (head to tail, where the kernel keeps the
 * headers it has looked at). Where the packet ends inside the TCP header,
 * d->key.marks says what is missing, and those fields stay 0. */
static __always_inline bool read_packet(struct sk_buff *skb, struct drop *d, bool btf, bool direct)
{
	struct tcp_head *tcp, after_options;
	unsigned char *head, *data, *nh;
	__be16 protocol;
	__u16 network_header;
	__u32 tail, len, ihl, tcp_off;
	__s64 held, readable;

	/* Most drops are not TCP: decide that with as little work as possible. */
	protocol = btf ? skb->protocol : BPF_CORE_READ(skb, protocol);
	if (protocol == bpf_htons(ETH_P_IP))
		d->key.family = 4;
	else if (protocol == bpf_htons(ETH_P_IPV6))
		d->key.family = 6;
	else
		return false;
	if (cfg.family && cfg.family != d->key.family)
		return false;

	network_header = btf ? skb->network_header : BPF_CORE_READ(skb, network_header);
	head = btf ? skb->head : BPF_CORE_READ(skb, head);
	data = btf ? skb->data : BPF_CORE_READ(skb, data);
	len = btf ? skb->len : BPF_CORE_READ(skb, len);
	tail = btf ? skb->tail : BPF_CORE_READ(skb, tail);
	/* An skb is made with network_header 0, and it is set as the packet
	 * reaches IP (__netif_receive_skb_core(), or the sender's IP output). A
	 * drop before that (the CPU backlog's, behind netif_rx()) has
	 * skb->protocol from eth_type_trans(), which left skb->data at the IP
	 * header: read there, not at the headroom. */
	if (!network_header)
		network_header = data - head;
	nh = head + network_header;
	/* From the IP header on: held, all the packet's bytes (skb->len counts
	 * from skb->data); readable, those in the linear data. */
	held = (__s64)len + (data - nh);
	readable = (__s64)tail - network_header;
	if (readable > held)
		readable = held;
	if (direct)
		read_headers_direct(nh, d);
	else if (bpf_probe_read_kernel(&d->pkt, sizeof(d->pkt), nh))
		return false;

	if (d->key.family == 4) {
		ihl = (d->pkt.v4.ip.version_ihl & 0x0f) * 4;
		/* an IP header not all there is not taken for TCP */
		if (readable < (__s64)sizeof(struct ipv4_head) ||
		    d->pkt.v4.ip.version_ihl >> 4 != 4 || d->pkt.v4.ip.protocol != IPPROTO_TCP ||
		    ihl < sizeof(struct ipv4_head))
			return false;
		if (d->pkt.v4.ip.frag_off & bpf_htons(0x1fff))
			d->key.marks |= MARK_FRAGMENT | MARK_NO_PORTS;	/* no TCP header */
		tcp = &d->pkt.v4.tcp;
		tcp_off = ihl;
	} else {
		if (readable < (__s64)sizeof(struct ipv6_head) || d->pkt.v6.ip.version_class >> 4 != 6)
			return false;
		tcp_off = ipv6_tcp_offset(nh, d->pkt.v6.ip.nexthdr, readable, d);
		if (!tcp_off)
			return false;
		tcp = &d->pkt.v6.tcp;
	}
	d->bytes = held;
	d->readable = readable;
	d->nh = (__u64)nh;
	if (d->key.marks & MARK_FRAGMENT)
		return true;
	if (readable - tcp_off < TCP_FLAGS_END) {
		d->key.marks |= MARK_TRUNCATED;
		if (readable - tcp_off < TCP_PORTS_END) {
			d->key.marks |= MARK_NO_PORTS;
			return true;
		}
	}
	/* After IP options or extension headers: not in the one read. */
	if (tcp_off != (d->key.family == 4 ? sizeof(struct ipv4_head) : sizeof(struct ipv6_head))) {
		if (bpf_probe_read_kernel(&after_options, sizeof(after_options), nh + tcp_off))
			return false;
		tcp = &after_options;
	}
	d->sport = bpf_ntohs(tcp->source);
	d->dport = bpf_ntohs(tcp->dest);
	if (!(d->key.marks & MARK_TRUNCATED))
		d->key.flags = tcp->flags;
	return true;
}

/* The rarer half of a drop's details: only the event path reads them.
 * @key: the tag set the drop was counted under. */
static __always_inline void send_event(void *ctx, struct drop *d, struct drop_key *key)
{
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
	/* Reserved memory is not zeroed; packet[] is read only up to caplen. */
	__builtin_memset(e, 0, __builtin_offsetof(struct drop_event, packet));
	e->time_ns = bpf_ktime_get_ns();
	e->key = *key;
	e->sport = d->sport;
	e->dport = d->dport;
	if (d->key.family == 4) {
		__builtin_memcpy(e->saddr, &d->pkt.v4.ip.saddr, 4);
		__builtin_memcpy(e->daddr, &d->pkt.v4.ip.daddr, 4);
	} else {
		__builtin_memcpy(e->saddr, d->pkt.v6.ip.saddr, 16);
		__builtin_memcpy(e->daddr, d->pkt.v6.ip.daddr, 16);
	}
	e->len = d->bytes;
	e->netns = d->netns;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	if (cfg.stacks) {
		e->stack_size = bpf_get_stack(ctx, e->stack, sizeof(e->stack), 0);
		if (e->stack_size < 0)
			count(COUNTER_STACKS_LOST, 1);
	}
	if (cfg.snaplen) {
		__u32 n = d->readable < cfg.snaplen ? d->readable : cfg.snaplen;

		if (n > MAX_SNAPLEN)	/* the verifier's bound; the loader keeps snaplen under it */
			n = MAX_SNAPLEN;
		if (!bpf_probe_read_kernel(e->packet, n, (void *)d->nh))
			e->caplen = n;
	}
	bpf_ringbuf_submit(e, 0);
}

/* A read drop, past the port filter: counted under its tag set, and sent.
 * @hot_ok: see count_drop(). */
static __always_inline void account(void *ctx, struct drop *d, bool hot_ok)
{
	struct drop_key key = d->key;

	if (cfg.port && d->sport != cfg.port && d->dport != cfg.port)
		return;
	key.sport = port_tag(d->sport, &key.marks, EPHEMERAL_SPORT);
	key.dport = port_tag(d->dport, &key.marks, EPHEMERAL_DPORT);
	if (cfg.key_netns)
		key.netns = d->netns;
	if (cfg.aggregate)
		count_drop(&key, d->bytes, hot_ok);
	if (cfg.events)
		send_event(ctx, d, &key);
}

static __always_inline __u32 netns_inum(struct net *net, bool btf)
{
	if (!net)
		return 0;
	return btf ? net->ns.inum : BPF_CORE_READ(net, ns.inum);
}

/* The handler of every kfree_skb hook: @charged is the socket the kernel
 * charged the drop to, where it says (rx_sk, 6.11+; tcp_drop()'s argument). */
static __always_inline int handle_drop(void *ctx, struct sk_buff *skb,
				       struct sock *charged, __u64 location,
				       __u32 reason, bool btf)
{
	struct drop d;	/* read_packet() fills the rest: zeroing it all would cost every drop */
	struct sock *sk = charged;
	struct net *packet_net = NULL, *socket_net = NULL;

	if (!reason_wanted(reason))
		return 0;
	d.key = (struct drop_key){ .location = location, .reason = reason };
	d.sport = d.dport = 0;
	d.netns = 0;
	if (!read_packet(skb, &d, btf, btf && cfg.direct_loads))
		return 0;
	if (!sk)	/* the packet's own socket: on receive, the sender's or none */
		sk = btf ? skb->sk : BPF_CORE_READ(skb, sk);
	if (sk || cfg.events || cfg.key_netns) {
		/* The namespace of the device the packet came in on (or goes
		 * out of); the socket's where there is no device yet. */
		struct net_device *dev = btf ? skb->dev : BPF_CORE_READ(skb, dev);

		if (dev)
			packet_net = btf ? dev->nd_net.net : BPF_CORE_READ(dev, nd_net.net);
	}
	if (sk) {
		socket_net = btf ? sk->__sk_common.skc_net.net : BPF_CORE_READ(sk, __sk_common.skc_net.net);
		/* A veth keeps the sender's socket on a packet it hands to
		 * another namespace: that socket is not this drop's. */
		if (sk != charged && packet_net && socket_net != packet_net)
			sk = NULL;
		else
			d.key.state = btf ? sk->__sk_common.skc_state
					  : BPF_CORE_READ(sk, __sk_common.skc_state);
	}
	if (cfg.events || cfg.key_netns)
		d.netns = netns_inum(packet_net ? packet_net : (sk ? socket_net : NULL), btf);
	account(ctx, &d, true);
	return 0;
}

#ifndef TCPDROP_BCC
/*
 * From 6.1 the kernel skips a tp_btf program's run that would start while
 * the same program runs on that CPU (a drop in a softirq that interrupted
 * the handling of a drop in process context), and counts it in the
 * program's recursion_misses. Before, it runs it nested, and a nested run
 * would race the outer one's hot slot and per-CPU counts: a lost increment,
 * or a key torn into a tag set no packet had. There (cfg.guard_nesting) the
 * probe skips that run itself, and counts it the same way: every kfree_skb
 * hook takes the guard (the tcp_drop kprobe runs beside tp_btf before 5.18).
 */
static __always_inline __u32 *enter_once(void)
{
	__u32 zero = 0, *run = bpf_map_lookup_elem(&running, &zero);

	if (!run)
		return NULL;
	if (*run) {
		count(COUNTER_NESTED, 1);
		return NULL;
	}
	*run = 1;
	barrier();	/* set before any count: what interrupts from here on sees it */
	return run;
}
#endif

/* handle_drop(), where the kernel would run it nested (cfg.guard_nesting)
 * only once enter_once() lets it. */
static __always_inline int handle_drop_once(void *ctx, struct sk_buff *skb,
					    struct sock *charged, __u64 location,
					    __u32 reason, bool btf)
{
#ifndef TCPDROP_BCC	/* bcc has tracepoint and kprobe hooks only, which the kernel keeps apart */
	__u32 *run;

	if (cfg.guard_nesting) {
		if (!(run = enter_once()))
			return 0;
		handle_drop(ctx, skb, charged, location, reason, btf);
		barrier();
		*run = 0;
		return 0;
	}
#endif
	return handle_drop(ctx, skb, charged, location, reason, btf);
}

/*
 * Listen-queue drops. A SYN that a listener cannot take (accept queue full,
 * SYN queue full without syncookies, no memory, no route) is refused in
 * tcp_conn_request(), counted in the namespace's ListenDrops and then freed
 * with consume_skb(), not kfree_skb(): no drop tracepoint fires. ListenDrops
 * (and ListenOverflows, TCPReqQFullDrop, which say why) are per-CPU counters
 * of the namespace, and a CPU handles one packet at a time, so a rise of this
 * CPU's ListenDrops across the listener's handling of one SYN is that SYN's
 * drop. Two ways to find "before" and "after":
 *
 *   LISTEN_BRACKET  fentry/fexit on tcp_rcv_state_process(): right before and
 *                   after that one SYN (kernels with fentry).
 *   LISTEN_CHAIN    tracepoints only (6.11+): "after" is the SYN's
 *                   consume_skb() in tcp_rcv_state_process(), "before" the
 *                   last time this CPU's counters of that namespace were read.
 *                   Every other rise is read where it happens, so that it is
 *                   not taken for the next SYN's: a kfree_skb() charged to a
 *                   listener (the handshake's last ACK on a full accept queue,
 *                   a drop seen already) and an ICMP error that aborted a
 *                   request (icmp_rcv). The first "before" of a namespace is
 *                   read on every CPU when a task in it calls listen(2) (no
 *                   SYN can be refused before; or as a socket starts
 *                   listening), and for the namespaces of all tasks at
 *                   start-up (listen_baselines_walk). A SYN with
 *                   no "before" (a namespace no task was in at start-up) only
 *                   gives one, and is counted in COUNTER_LISTEN_UNTRACKED.
 */
#ifndef TCPDROP_BCC	/* bcc: no listen-queue drops (no per-CPU offsets, no fentry) */
struct listen_stash {
	__u64 cpu_offset;	/* of this CPU's per-CPU memory; 0 until worked out */
	__u64 number;		/* a pointer, stored here to be loaded back as a number */
	__u64 cached_cookie;	/* LISTEN_CHAIN: the namespace whose "before" is here, */
	struct listen_mib cached;	/* kept out of listen_baselines while it is */
	__u64 skb;		/* LISTEN_BRACKET: the SYN being handled here, 0 if none, */
	struct listen_mib before;	/* this CPU's counters before it, */
	struct drop d;		/* and the SYN, read */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct listen_stash);
} listen_stash SEC(".maps");

/* LISTEN_CHAIN's "before" of each namespace and CPU. Least recently used
 * first out: namespaces come and go, and one pushed out only costs its next
 * SYN on that CPU a COUNTER_LISTEN_UNTRACKED. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct baseline_key);
	__type(value, struct listen_mib);
} listen_baselines SEC(".maps");

/* Rises of ListenDrops seen, per network namespace (inode): what the
 * kernel's counter covers, for `telegraf-tcpdrop audit`. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} listen_drops SEC(".maps");

/* The offset of a CPU's per-CPU memory, from @value, one of that CPU's
 * elements of our own per-CPU map `counters`: the element's address less its
 * per-CPU pointer (struct bpf_array), read as numbers (through memory: the
 * verifier's one way to turn pointers into numbers). The same offset leads
 * from any per-CPU pointer, the kernel's counters too, to that CPU's copy. */
static __always_inline bool per_cpu_offset(__u64 *value, __u64 *offset)
{
	const void *map = &counters;
	__u64 map_addr, value_addr, pptr;

	if (!value ||
	    bpf_probe_read_kernel(&map_addr, sizeof(map_addr), &map) ||
	    bpf_probe_read_kernel(&value_addr, sizeof(value_addr), &value) ||
	    bpf_probe_read_kernel(&pptr, sizeof(pptr),
				  (void *)(map_addr + bpf_core_field_offset(struct bpf_array, pptrs))))
		return false;
	*offset = value_addr - pptr;
	return true;
}

/* This CPU's listen_stash, with this CPU's offset (worked out once). */
static __always_inline struct listen_stash *stash_here(void)
{
	__u32 zero = 0;
	struct listen_stash *stash = bpf_map_lookup_elem(&listen_stash, &zero);

	if (!stash)
		return NULL;
	if (!stash->cpu_offset && !per_cpu_offset(counter(&zero), &stash->cpu_offset))
		return NULL;
	return stash;
}

/* The namespace's listen counters (struct linux_mib) of the CPU @offset leads
 * to, read by probe reads: LISTEN_BRACKET runs where bpf_rdonly_cast() may be
 * missing (5.x), and the start-up walk once. listen_rise(), which runs on
 * 6.11+ only and at every SYN, loads them directly. */
static __always_inline unsigned long *listen_mibs(struct net *net, __u64 offset)
{
	return (unsigned long *)((__u64)BPF_CORE_READ(net, mib.net_statistics) + offset);
}

static __always_inline bool mib_read(unsigned long *mibs, __u32 index, __u64 *value)
{
	return !bpf_probe_read_kernel(value, sizeof(*value), mibs + index);
}

static __always_inline bool listen_mib_read(unsigned long *mibs, struct listen_mib *m)
{
	return mib_read(mibs, cfg.mib_listen_drops, &m->drops) &&
	       mib_read(mibs, cfg.mib_listen_overflows, &m->overflows) &&
	       mib_read(mibs, cfg.mib_synq_full, &m->synq_full);
}

static __always_inline void count_listen_drops(__u32 netns, __u64 n)
{
	__u64 *value = bpf_map_lookup_elem(&listen_drops, &netns);

	/* -EEXIST: another CPU added the namespace first; n goes to its entry */
	if (!value && bpf_map_update_elem(&listen_drops, &netns, &n, BPF_NOEXIST) == -EEXIST)
		value = bpf_map_lookup_elem(&listen_drops, &netns);
	if (value)
		*value += n;
}

/* A SYN the listener dropped, ListenDrops having risen from @before to
 * @after: why, from which counters rose with it, and where it was decided. */
static __always_inline void listen_drop(void *ctx, struct drop *d, struct listen_mib *before,
					struct listen_mib *after)
{
	if (after->overflows != before->overflows) {
		d->key.reason = cfg.listen_overflow_reason;
		d->key.location = cfg.conn_request;
	} else if (after->synq_full != before->synq_full) {
		d->key.reason = REASON_SYN_QUEUE_FULL;
		d->key.location = cfg.conn_request;
	} else {
		d->key.reason = REASON_LISTEN_DROP;
	}
	d->key.state = TCP_LISTEN;
	if (reason_wanted(d->key.reason))
		account(ctx, d, false);
}

SEC("fentry/tcp_rcv_state_process")
int BPF_PROG(listen_enter, struct sock *sk, struct sk_buff *skb)
{
	struct listen_stash *stash;
	struct net *net;

	if (sk->__sk_common.skc_state != TCP_LISTEN || !(stash = stash_here()))
		return 0;
	stash->skb = 0;
	/* Read now: the SYN is freed before tcp_rcv_state_process() returns. */
	__builtin_memset(&stash->d, 0, sizeof(stash->d));
	stash->d.key.location = cfg.syn_site;
	if (!read_packet(skb, &stash->d, true, false))
		return 0;
	net = sk->__sk_common.skc_net.net;
	stash->d.netns = net->ns.inum;
	if (listen_mib_read(listen_mibs(net, stash->cpu_offset), &stash->before))
		stash->skb = (__u64)skb;
	return 0;
}

SEC("fexit/tcp_rcv_state_process")
int BPF_PROG(listen_exit, struct sock *sk, struct sk_buff *skb, int ret)
{
	struct listen_stash *stash = stash_here();
	struct listen_mib after;

	if (!stash || stash->skb != (__u64)skb)
		return 0;
	stash->skb = 0;
	stash->d.readable = 0;	/* the SYN is freed by now: no bytes of it to send */
	if (!listen_mib_read(listen_mibs(sk->__sk_common.skc_net.net, stash->cpu_offset), &after) ||
	    after.drops == stash->before.drops)
		return 0;
	if (cfg.key_netns)
		count_listen_drops(stash->d.netns, after.drops - stash->before.drops);
	listen_drop(ctx, &stash->d, &stash->before, &after);
	return 0;
}

/* LISTEN_CHAIN: the first "before" of @net, on every CPU. */
struct baselines_of {
	struct net *net;
	__u64 net_cookie;
};

static long baseline_of_cpu(__u32 cpu, struct baselines_of *of)
{
	struct baseline_key key = { .net_cookie = of->net_cookie, .cpu = cpu };
	__u32 zero = 0;
	struct listen_mib m;
	__u64 offset;

	if (per_cpu_offset(bpf_map_lookup_percpu_elem(&counters, &zero, cpu), &offset) &&
	    listen_mib_read(listen_mibs(of->net, offset), &m))
		bpf_map_update_elem(&listen_baselines, &key, &m, BPF_NOEXIST);
	return 0;
}

static __always_inline void first_baselines(struct net *net)
{
	struct baselines_of of = { .net = net, .net_cookie = BPF_CORE_READ(net, net_cookie) };
	struct baseline_key first = { .net_cookie = of.net_cookie };

	if (!bpf_map_lookup_elem(&listen_baselines, &first))
		bpf_loop(cfg.ncpus, baseline_of_cpu, &of, 0);
}

/* listen(2): the first "before" of the caller's namespace. */
SEC("tracepoint/syscalls/sys_enter_listen")
int listen_start(void *ctx)
{
	first_baselines(bpf_get_current_task_btf()->nsproxy->net_ns);
	return 0;
}

/* The same where tracefs, which the syscall tracepoint needs, is closed to
 * the monitor: a socket entering LISTEN. Dearer: the state of every TCP
 * socket changes some ten times in its life, and this runs each time. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(listen_start_state, struct sock *sk, int oldstate, int newstate)
{
	if (newstate == TCP_LISTEN)
		first_baselines(sk->__sk_common.skc_net.net);
	return 0;
}

/* Run once at start-up, by reading the iterator: every task's namespace. */
SEC("iter/task")
int listen_baselines_walk(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	struct net *net;

	if (!task)
		return 0;
	net = BPF_CORE_READ(task, nsproxy, net_ns);
	if (net)
		first_baselines(net);
	return 0;
}

/* LISTEN_CHAIN: this CPU's counters of @net, and their rise since the last
 * read (in @before); false if there is none to attribute. ListenDrops alone
 * is read unless it rose: the others rise only with it. */
static __always_inline bool listen_rise(struct net *net, struct listen_mib *before,
					struct listen_mib *after)
{
	struct listen_stash *stash = stash_here();
	struct baseline_key key;
	struct listen_mib *last;
	struct linux_mib *mib;

	if (!stash)
		return false;
	/* Through the stash, the pointer comes back a number, to which the
	 * offset can be added: the verifier allows no arithmetic on it. */
	stash->number = (__u64)net->mib.net_statistics;
	mib = rdonly_cast(struct linux_mib, *(volatile __u64 *)&stash->number + stash->cpu_offset);
	after->drops = mib->mibs[cfg.mib_listen_drops];
	key = (struct baseline_key){ .net_cookie = net->net_cookie };
	if (stash->cached_cookie != key.net_cookie) {	/* another namespace than last time */
		struct baseline_key put_back = { .net_cookie = stash->cached_cookie };

		key.cpu = put_back.cpu = bpf_get_smp_processor_id();
		if (put_back.net_cookie)
			bpf_map_update_elem(&listen_baselines, &put_back, &stash->cached, BPF_ANY);
		stash->cached_cookie = 0;
		last = bpf_map_lookup_elem(&listen_baselines, &key);
		if (!last) {	/* no "before": this one becomes it */
			after->overflows = mib->mibs[cfg.mib_listen_overflows];
			after->synq_full = mib->mibs[cfg.mib_synq_full];
			count(COUNTER_LISTEN_UNTRACKED, 1);
			bpf_map_update_elem(&listen_baselines, &key, after, BPF_NOEXIST);
			return false;
		}
		stash->cached = *last;
		stash->cached_cookie = key.net_cookie;
	}
	last = &stash->cached;
	if (last->drops == after->drops)
		return false;
	after->overflows = mib->mibs[cfg.mib_listen_overflows];
	after->synq_full = mib->mibs[cfg.mib_synq_full];
	*before = *last;
	*last = *after;
	if (cfg.key_netns)
		count_listen_drops(net->ns.inum, after->drops - before->drops);
	return true;
}

/* A rise that is not a SYN's: counted for audit, kept from the next SYN.
 * Out of line: the drop hooks call it rarely, and carry less code for it. */
static __noinline void listen_absorb(struct net *net)
{
	struct listen_mib before, after;

	if (net)
		listen_rise(net, &before, &after);
}

static __always_inline struct net *dst_net(struct sk_buff *skb)
{
	struct dst_entry *dst = rdonly_cast(struct dst_entry, skb->_skb_refdst & ~1UL);

	return dst && dst->dev ? dst->dev->nd_net.net : NULL;
}

static __always_inline bool at(__u64 location, __u64 site, __u64 len)
{
	return location - site < len;
}

SEC("tp_btf/consume_skb")
int BPF_PROG(consume_skb_btf, struct sk_buff *skb)
{
	struct listen_mib before, after;
	struct drop d;
	__u64 location;
	struct net *net;

	/* ctx[1] exists from 6.3 (location); the loader uses this hook only there. */
	if (!bpf_core_field_exists(struct trace_event_raw_consume_skb, location))
		return 0;
	location = ctx[1];
	if (at(location, cfg.icmp_site, cfg.icmp_site_len) ||
	    at(location, cfg.icmp6_site, cfg.icmp6_site_len)) {
		listen_absorb(dst_net(skb));
		return 0;
	}
	if (!at(location, cfg.syn_site, cfg.syn_site_len))
		return 0;
	/* A SYN a listener handled (skb->dev is gone by now: the route's is there). */
	net = dst_net(skb);
	if (!net || !listen_rise(net, &before, &after))
		return 0;
	d.key = (struct drop_key){ .location = location };
	d.sport = d.dport = 0;
	if (!read_packet(skb, &d, true, true))
		return 0;
	d.netns = net->ns.inum;
	listen_drop(ctx, &d, &before, &after);
	return 0;
}
#endif /* !TCPDROP_BCC */

#ifndef TCPDROP_BCC	/* bcc: netns.py reads /proc instead */
/* Read by user space to name namespaces (netns.py): which process is in
 * which namespace. /proc/PID/ns/net tells only the process's own user (or
 * CAP_SYS_PTRACE), and the monitor runs as Telegraf's. A record per process,
 * and per thread whose namespace is not its process's (setns moves one
 * thread). */
SEC("iter/task")
int netns_tasks(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	struct netns_task record;
	struct net *net;

	if (!task)
		return 0;
	net = BPF_CORE_READ(task, nsproxy, net_ns);
	if (!net)	/* exiting */
		return 0;
	if (task->pid != task->tgid && net == BPF_CORE_READ(task, group_leader, nsproxy, net_ns))
		return 0;
	record.pid = task->pid;
	record.netns = BPF_CORE_READ(net, ns.inum);
	bpf_seq_write(ctx->meta->seq, &record, sizeof(record));
	return 0;
}
#endif

#ifndef TCPDROP_BCC	/* tp_btf needs BTF, which is why bcc is here */
SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb_btf, struct sk_buff *skb, void *location)
{
	__u32 reason = REASON_UNKNOWN;
	struct sock *rx_sk = NULL;

	/* ctx[2] exists from 5.17 (reason), ctx[3] from 6.11 (rx_sk): the
	 * checks fold to constants at load, so older kernels never see the
	 * out-of-range reads. */
	if (bpf_core_field_exists(struct trace_event_raw_kfree_skb, reason))
		reason = (__u32)ctx[2];
	if (bpf_core_field_exists(struct trace_event_raw_kfree_skb, rx_sk))
		rx_sk = (struct sock *)ctx[3];
	/* LISTEN_CHAIN runs only where rx_sk is (6.11+): a listener is charged there. */
	if (cfg.listen == LISTEN_CHAIN && rx_sk && rx_sk->__sk_common.skc_state == TCP_LISTEN)
		listen_absorb(rx_sk->__sk_common.skc_net.net);
	return handle_drop_once(ctx, skb, rx_sk, (__u64)location, reason, true);
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
	struct sock *rx_sk = TP_RX_SK(args);

#ifndef TCPDROP_BCC	/* bcc: no listen-queue drops */
	if (cfg.listen == LISTEN_CHAIN && rx_sk && BPF_CORE_READ(rx_sk, __sk_common.skc_state) == TCP_LISTEN)
		listen_absorb(rdonly_cast(struct net, BPF_CORE_READ(rx_sk, __sk_common.skc_net.net)));
#endif
	return handle_drop_once(args, skb, rx_sk, (__u64)args->location, TP_REASON(args), false);
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

	/* At function entry the return address is the drop site, as the
	 * tracepoint's location would be: on top of the stack on x86, in the
	 * link register (x30) on arm64. */
#if defined(__TARGET_ARCH_arm64) || defined(__aarch64__)
	caller = PT_REGS_RET(ctx);
#else
	bpf_probe_read_kernel(&caller, sizeof(caller), (void *)PT_REGS_SP(ctx));
#endif
	return handle_drop_once(ctx, skb, sk, caller, REASON_UNKNOWN, false);
}
#endif
