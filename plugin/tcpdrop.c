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
 * Both come in two generations, a and b, and so do the overflow maps below.
 * Each interval user space swaps the other, empty generation's hot slots into
 * hot_now, the one switch: the slots name their generation (slot
 * HOT_GENERATION), and through it the handler finds that generation's maps
 * (drops_maps, overflow_maps). So a run of the handler sees one generation
 * whole: its slots, its "full" mark and its maps. The kernel returns from
 * that map-in-map update only once no program still runs on the old
 * generation (an RCU grace period): the old one is then read whole and
 * quiet, and emptied. No count is read twice or lost, and nothing is ever
 * deleted from a map a program is counting into. The loader sizes the maps
 * for its mode (probe.py, map_sizes).
 *
 * Where the drops map is full (a port scan), a drop is counted without its
 * ports, in room kept for that: the overflow maps. A scan's tag sets differ
 * by their ports alone, so there it keeps its reason, state, flags, drop
 * site and namespace.
 */
struct drops_map {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct drop_key);
	__type(value, struct drop_count);
} drops_a SEC(".maps"), drops_b SEC(".maps"), overflow_a SEC(".maps"), overflow_b SEC(".maps");

struct hot_map {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HOT_SLOTS + 1);	/* and HOT_GENERATION */
	__type(key, __u32);
	__type(value, struct hot_slot);
} hot_a SEC(".maps"), hot_b SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct hot_map);
} hot_now SEC(".maps") = { .values = { &hot_a } };

/* Each generation's maps, by its number: never changed. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct drops_map);
} drops_maps SEC(".maps") = { .values = { &drops_a, &drops_b } };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct drops_map);
} overflow_maps SEC(".maps") = { .values = { &overflow_a, &overflow_b } };

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
static __always_inline void *hot_current(__u32 *zero)
{
	return bpf_map_lookup_elem(&hot_now, zero);
}

static __always_inline void *drops_of(__u32 *generation)
{
	return bpf_map_lookup_elem(&drops_maps, generation);
}

static __always_inline void *overflow_of(__u32 *generation)
{
	return bpf_map_lookup_elem(&overflow_maps, generation);
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
BPF_ARRAY_OF_MAPS(hot_now, "hot_a", 1);	/* the loader sets them before attaching */
BPF_ARRAY_OF_MAPS(drops_maps, "drops_a", 2);
BPF_ARRAY_OF_MAPS(overflow_maps, "overflow_a", 2);
BPF_RINGBUF_OUTPUT(events, TCPDROP_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(counters, __u64, COUNTER_MAX);
BPF_PERCPU_ARRAY(budgets, struct budget, 1);

/* Functions, not macros: bcc rewrites map.lookup() only where it is written
 * out ("cannot use map function inside a macro"), and not &map in helpers. */
static __always_inline void *hot_current(__u32 *zero)
{
	return hot_now.lookup(zero);
}

static __always_inline void *drops_of(__u32 *generation)
{
	return drops_maps.lookup(generation);
}

static __always_inline void *overflow_of(__u32 *generation)
{
	return overflow_maps.lookup(generation);
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
 * are direct and fault-safe: a load each, not a helper call. Only the
 * programs the loader loads where the kernel has it call it (the hooks'
 * *_direct twins, LISTEN_CHAIN's): weak, so that the object still opens
 * where it cannot be resolved. */
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

/* The drops map of @generation is full: @key's drop counted without its
 * ports, or where the overflow map is full too, without any tag
 * (COUNTER_OVERFLOW_*). A scan's drops share one portless key, which
 * @hot_slots (if given) then counts. */
static __noinline void count_overflow(struct drop_key *key, __u32 bytes, __u32 generation,
				      void *hot_slots)
{
	void *overflow = overflow_of(&generation);
	struct drop_key portless = *key;
	struct hot_slot *hot = NULL;
	__u32 index;
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
 * Once the generation's drops map is full, which it stays until it is
 * swapped out, its slot HOT_GENERATION is claimed: a key not in the map goes
 * straight to count_overflow(), and a scan's drop costs about what a hit
 * does, not a failed insert each. */
static __always_inline void count_drop(struct drop_key *key, __u32 bytes, bool hot_ok)
{
	__u32 zero = 0, index = hot_index(key), generation_index = HOT_GENERATION, generation;
	void *drops, *hot_slots = hot_current(&zero);
	struct hot_slot *hot = NULL, *full = NULL, *slot;
	struct drop_count *c;
	long err;

	if (!hot_slots)
		return;
	if (hot_ok) {
		hot = bpf_map_lookup_elem(hot_slots, &index);
		if (hot && hot->claimed && same_key(&hot->key, key)) {
			hot->count.drops += 1;
			hot->count.bytes += bytes;
			return;
		}
	}
	/* past the hit: a storm's drops never look at the generation, nor the map */
	slot = bpf_map_lookup_elem(hot_slots, &generation_index);
	if (!slot)
		return;
	generation = slot->generation;
	if (hot_ok)
		full = slot;
	else
		hot_slots = NULL;
	drops = drops_of(&generation);
	if (!drops)
		return;
	if (full && full->claimed) {
		c = bpf_map_lookup_elem(drops, key);
		if (c) {
			c->drops += 1;
			c->bytes += bytes;
		} else {
			count_overflow(key, bytes, generation, hot_slots);
		}
		return;
	}
	err = count_in(drops, key, bytes);
	if (err == -E2BIG) {
		if (full)
			full->claimed = 1;
		count_overflow(key, bytes, generation, hot_slots);
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
 * bytes are the packet's: 0 if this is not a TCP packet, -1 if that cannot
 * be told (its extension headers are not all there). A non-first fragment
 * has no TCP header: marked. */
static __always_inline __s32 ipv6_tcp_offset(unsigned char *nh, __u8 nexthdr, __s64 readable,
					     struct drop *d)
{
	__s32 off = sizeof(struct ipv6_head);
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
			return -1;
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

#ifndef TCPDROP_BCC
/* Where the linear data ends at the IP header, the packet goes on in the
 * pages of frags[]: some drivers hand over whole frames so (the GRO frags
 * path, tun's IFF_NAPI_FRAGS), and IP pulls the headers in only after the
 * checks that may drop it (ip_rcv_core(): not for this host). The first
 * frag's address, and into @readable its length; NULL where it cannot be
 * worked out: only x86-64's direct map is placed by variables kallsyms
 * names (page_offset_base, vmemmap_base; with CONFIG_KALLSYMS_ALL), and a
 * net_iov (device memory) is in no map. */
static __always_inline unsigned char *first_frag(struct sk_buff *skb, unsigned char *head, bool btf,
						 __s64 *readable)
{
	struct skb_shared_info *shinfo;
	__u64 page, offset_base, vmemmap;
	__u32 offset, len;
	__u8 frags;

	if (!cfg.page_offset_base || !cfg.vmemmap_base)
		return NULL;
	shinfo = (void *)(head + (btf ? skb->end : BPF_CORE_READ(skb, end)));
	if (bpf_probe_read_kernel(&frags, sizeof(frags), &shinfo->nr_frags) || !frags)
		return NULL;
	if (bpf_core_field_exists(shinfo->frags[0].netmem)) {
		if (bpf_probe_read_kernel(&page, sizeof(page), &shinfo->frags[0].netmem) ||
		    bpf_probe_read_kernel(&offset, sizeof(offset), &shinfo->frags[0].offset) ||
		    bpf_probe_read_kernel(&len, sizeof(len), &shinfo->frags[0].len) || (page & 1))
			return NULL;
	} else {
		struct skb_shared_info___bio_vec *old = (void *)shinfo;

		if (bpf_probe_read_kernel(&page, sizeof(page), &old->frags[0].bv_page) ||
		    bpf_probe_read_kernel(&offset, sizeof(offset), &old->frags[0].bv_offset) ||
		    bpf_probe_read_kernel(&len, sizeof(len), &old->frags[0].bv_len))
			return NULL;
	}
	if (bpf_probe_read_kernel(&offset_base, sizeof(offset_base), (void *)cfg.page_offset_base) ||
	    bpf_probe_read_kernel(&vmemmap, sizeof(vmemmap), (void *)cfg.vmemmap_base) ||
	    page < vmemmap)
		return NULL;
	*readable = len;
	/* page_address(): a page's index in the vmemmap is its frame's in the direct map */
	return (unsigned char *)(offset_base + (page - vmemmap) / bpf_core_type_size(struct page) * 4096 +
				 offset);
}
#endif

/* Reads the packet's IP and TCP headers into @d: false if it is not a TCP
 * packet, or not of the family asked for, or if that cannot be told (its
 * headers are not where they can be read: counted, COUNTER_UNREADABLE). @btf and @direct are compile-time
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
	__u32 tail, len, ihl;
	__s64 held, readable;
	__s32 tcp_off;

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
#ifndef TCPDROP_BCC
	if (readable <= 0 && held > 0 && !(nh = first_frag(skb, head, btf, &readable)))
		goto unreadable;
#endif
	if (readable > held)
		readable = held;
	if (direct)
		read_headers_direct(nh, d);
	else if (bpf_probe_read_kernel(&d->pkt, sizeof(d->pkt), nh))
		goto unreadable;

	/* An IP header not all there: TCP or not cannot be told. */
	if (d->key.family == 4) {
		if (readable < (__s64)sizeof(struct ipv4_head))
			goto unreadable;
		ihl = (d->pkt.v4.ip.version_ihl & 0x0f) * 4;
		if (d->pkt.v4.ip.version_ihl >> 4 != 4 || d->pkt.v4.ip.protocol != IPPROTO_TCP ||
		    ihl < sizeof(struct ipv4_head))
			return false;
		if (d->pkt.v4.ip.frag_off & bpf_htons(0x1fff))
			d->key.marks |= MARK_FRAGMENT | MARK_NO_PORTS;	/* no TCP header */
		tcp = &d->pkt.v4.tcp;
		tcp_off = ihl;
	} else {
		if (readable < (__s64)sizeof(struct ipv6_head))
			goto unreadable;
		if (d->pkt.v6.ip.version_class >> 4 != 6)
			return false;
		tcp_off = ipv6_tcp_offset(nh, d->pkt.v6.ip.nexthdr, readable, d);
		if (tcp_off < 0)
			goto unreadable;
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
			goto unreadable;
		tcp = &after_options;
	}
	d->sport = bpf_ntohs(tcp->source);
	d->dport = bpf_ntohs(tcp->dest);
	if (!(d->key.marks & MARK_TRUNCATED))
		d->key.flags = tcp->flags;
	return true;
unreadable:
	count(COUNTER_UNREADABLE, 1);
	return false;
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
 * charged the drop to, where it says (rx_sk, 6.11+; tcp_drop()'s argument).
 * @btf, @direct: as read_packet()'s. */
static __always_inline int handle_drop(void *ctx, struct sk_buff *skb,
				       struct sock *charged, __u64 location,
				       __u32 reason, bool btf, bool direct)
{
	struct drop d;	/* read_packet() fills the rest: zeroing it all would cost every drop */
	struct sock *sk = charged;
	struct net *packet_net = NULL, *socket_net = NULL;

	if (!reason_wanted(reason))
		return 0;
	d.key = (struct drop_key){ .location = location, .reason = reason };
	d.sport = d.dport = 0;
	d.netns = 0;
	if (!read_packet(skb, &d, btf, direct))
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
					    __u32 reason, bool btf, bool direct)
{
#ifndef TCPDROP_BCC	/* bcc has tracepoint and kprobe hooks only, which the kernel keeps apart */
	__u32 *run;

	if (cfg.guard_nesting) {
		if (!(run = enter_once()))
			return 0;
		handle_drop(ctx, skb, charged, location, reason, btf, direct);
		barrier();
		*run = 0;
		return 0;
	}
#endif
	return handle_drop(ctx, skb, charged, location, reason, btf, direct);
}

/*
 * Listen-queue drops. A SYN that a listener cannot take (accept queue full,
 * SYN queue full without syncookies, no memory, no route) is refused in
 * tcp_conn_request(), counted in the namespace's ListenDrops and then freed
 * with consume_skb(), not kfree_skb(): no drop tracepoint fires. ListenDrops
 * (and ListenOverflows, TCPReqQFullDrop, which say why) are per-CPU counters
 * of the namespace, and a CPU handles one packet at a time, so a rise of this
 * CPU's ListenDrops across the listener's handling of one SYN is that SYN's
 * drop. ListenDrops also rises where no SYN is refused: the handshake's last
 * ACK, or a cookie's, that finds the accept queue full (which kfree_skb()
 * drops, and the drop hooks count), and an ICMP error that aborts a request
 * (tcp_req_err). Each rise is read where it happens, so that none is taken
 * for another's, and counted per namespace for `audit` (listen_rises). Two
 * ways to find "before" and "after":
 *
 *   LISTEN_BRACKET  fentry/fexit around each call that may raise them:
 *                   tcp_rcv_state_process() (a SYN), tcp_check_req() (the
 *                   handshake's last ACK), cookie_v4_check() and
 *                   cookie_v6_check() (a cookie's ACK), tcp_req_err() (an
 *                   ICMP error). A softirq may open one inside another's on
 *                   this CPU (one around a listener's backlog, in process
 *                   context): brackets stack, and what one inside took is
 *                   taken from the one around it.
 *   LISTEN_CHAIN    tracepoints only (6.11+): "after" is the SYN's
 *                   consume_skb() in tcp_rcv_state_process(), "before" the
 *                   last time this CPU's counters of that namespace were read.
 *                   Every other rise is read where it happens: at a
 *                   kfree_skb() charged to a listener (rx_sk: the ACKs above;
 *                   the same 6.11 series that added rx_sk made the cookie
 *                   checks pass it) and at an ICMP error's consume_skb() in
 *                   icmp_rcv(), icmpv6_rcv(). The first "before" of a
 *                   namespace is read on every CPU when a task in it calls
 *                   listen(2) (no SYN can be refused before; or as a socket
 *                   starts listening), and for the namespaces of all tasks at
 *                   start-up (listen_baselines_walk). A SYN with no "before"
 *                   (a namespace no task was in at start-up) only gives one,
 *                   and is counted in COUNTER_LISTEN_UNTRACKED.
 */
#ifndef TCPDROP_BCC	/* bcc: no listen-queue drops (no per-CPU offsets, no fentry) */
#define BRACKETS 4	/* open at once on a CPU: process context and a softirq need 2 */

/* LISTEN_BRACKET: a call that may raise the listen counters, under way. */
struct bracket {
	__u64 id;		/* its packet (its request, for tcp_req_err); 0 while being opened */
	struct listen_mib before;	/* this CPU's counters at its entry, less what brackets
					 * inside it took */
	__u32 netns;		/* its namespace's inode */
	__u32 pad;
	struct drop d;		/* tcp_rcv_state_process(): the SYN, read at entry (it is
				 * freed before the exit) */
};

struct listen_stash {
	__u64 cpu_offset;	/* of this CPU's per-CPU memory; 0 until worked out */
	__u64 number;		/* a pointer, stored here to be loaded back as a number */
	__u64 cached_cookie;	/* LISTEN_CHAIN: the namespace whose "before" is here, */
	struct listen_mib cached;	/* kept out of listen_baselines while it is */
	__u32 depth;		/* LISTEN_BRACKET: brackets open, */
	__u32 pad;
	struct bracket brackets[BRACKETS];	/* innermost last */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct listen_stash);
} listen_stash SEC(".maps");

/* LISTEN_CHAIN's "before" of each namespace and CPU, sized by the loader for
 * so many namespaces on every possible CPU. Least recently used first out:
 * namespaces come and go, and one pushed out only costs its next SYN on that
 * CPU a COUNTER_LISTEN_UNTRACKED. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct baseline_key);
	__type(value, struct listen_mib);
} listen_baselines SEC(".maps");

/* LISTEN_CHAIN: the ids of the possible CPUs, set by the loader (a host's may
 * have gaps), one entry each. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} cpu_ids SEC(".maps");

/* The rises of the listen counters read, per network namespace (inode): what
 * the kernel's counters cover, for `telegraf-tcpdrop audit`. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct listen_mib);
} listen_rises SEC(".maps");

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

/* Atomic: the listen-queue programs may interrupt each other on a CPU. */
static __always_inline void count_listen_rises(__u32 netns, struct listen_mib *rise)
{
	struct listen_mib *value;

	if (!cfg.key_netns)	/* audit's, and metrics' by namespace */
		return;
	value = bpf_map_lookup_elem(&listen_rises, &netns);
	/* -EEXIST: another CPU added the namespace first; the rise goes to its entry */
	if (!value && bpf_map_update_elem(&listen_rises, &netns, rise, BPF_NOEXIST) != -EEXIST)
		return;
	if (!value)
		value = bpf_map_lookup_elem(&listen_rises, &netns);
	if (!value)
		return;
	__sync_fetch_and_add(&value->drops, rise->drops);
	__sync_fetch_and_add(&value->overflows, rise->overflows);
	__sync_fetch_and_add(&value->synq_full, rise->synq_full);
}

/* A SYN the listener dropped, its namespace's counters having risen by
 * @rise: why, from which counters rose with ListenDrops, and where it was
 * decided. */
static __always_inline void listen_drop(void *ctx, struct drop *d, struct listen_mib *rise)
{
	if (rise->overflows) {
		d->key.reason = cfg.listen_overflow_reason;
		d->key.location = cfg.conn_request;
	} else if (rise->synq_full) {
		d->key.reason = REASON_SYN_QUEUE_FULL;
		d->key.location = cfg.conn_request;
	} else {
		d->key.reason = REASON_LISTEN_DROP;
	}
	d->key.state = TCP_LISTEN;
	if (reason_wanted(d->key.reason))
		account(ctx, d, false);
}

/* LISTEN_BRACKET: opens a bracket around the call handling @id in @net:
 * this CPU's counters now. Its slot is taken first, so that a softirq that
 * interrupts the opening opens the next one. */
static __always_inline struct bracket *bracket_open(struct listen_stash *stash, struct net *net,
						    __u64 id)
{
	__u32 depth = stash->depth;
	struct bracket *b;

	if (depth >= BRACKETS) {
		count(COUNTER_LISTEN_UNTRACKED, 1);
		return NULL;
	}
	stash->depth = depth + 1;
	b = &stash->brackets[depth];
	b->id = 0;
	barrier();
	if (!listen_mib_read(listen_mibs(net, stash->cpu_offset), &b->before)) {
		stash->depth = depth;
		return NULL;
	}
	b->netns = BPF_CORE_READ(net, ns.inum);
	barrier();
	b->id = id;
	return b;
}

/* LISTEN_BRACKET: closes the bracket of the call handling @id, if it is
 * open, into @rise: this CPU's counters now less those at its entry. The
 * rise is counted for audit, and taken from the bracket around it (in the
 * same namespace), whose call it is not. Returns its place on the stack,
 * 1 for the outermost (0: @id has none), for bracket_pop() once the caller
 * is done with it: a softirq that interrupts meanwhile opens one above it. */
static __always_inline __u32 bracket_close(struct listen_stash *stash, struct net *net, __u64 id,
					   struct listen_mib *rise)
{
	struct bracket *b = NULL, *outer;
	struct listen_mib after;
	__u32 depth = stash->depth, i;

	for (i = BRACKETS; i > 0; i--) {
		if (i <= depth && stash->brackets[i - 1].id == id) {
			b = &stash->brackets[i - 1];
			break;
		}
	}
	if (!b)
		return 0;
	if (!listen_mib_read(listen_mibs(net, stash->cpu_offset), &after))
		return i;
	rise->drops = after.drops - b->before.drops;
	rise->overflows = after.overflows - b->before.overflows;
	rise->synq_full = after.synq_full - b->before.synq_full;
	if (!rise->drops && !rise->overflows)
		return i;
	count_listen_rises(b->netns, rise);
	if (i >= 2 && i - 2 < BRACKETS) {
		outer = &stash->brackets[i - 2];
		if (outer->id && outer->netns == b->netns) {
			outer->before.drops += rise->drops;
			outer->before.overflows += rise->overflows;
			outer->before.synq_full += rise->synq_full;
		}
	}
	return i;
}

/* Lets go of the bracket at @place and any left open above it (their exits
 * skipped, as the kernel skips a program that would run inside itself). */
static __always_inline void bracket_pop(struct listen_stash *stash, __u32 place)
{
	__u32 depth = stash->depth;

	if (!place || place > depth)
		return;
	if (place < depth)
		count(COUNTER_LISTEN_UNTRACKED, depth - place);
	if (place - 1 < BRACKETS)
		stash->brackets[place - 1].id = 0;
	stash->depth = place - 1;
}

/* A listener's SYN (or any packet it is handed): the bracket, and the SYN. */
SEC("fentry/tcp_rcv_state_process")
int BPF_PROG(listen_enter, struct sock *sk, struct sk_buff *skb)
{
	struct listen_stash *stash;
	struct bracket *b;

	if (sk->__sk_common.skc_state != TCP_LISTEN || !(stash = stash_here()))
		return 0;
	b = bracket_open(stash, sk->__sk_common.skc_net.net, (__u64)skb);
	if (!b)
		return 0;
	/* Read now: the SYN is freed before tcp_rcv_state_process() returns. */
	__builtin_memset(&b->d, 0, sizeof(b->d));
	b->d.key.location = cfg.syn_site;
	if (!read_packet(skb, &b->d, true, false))
		b->d.key.family = 0;	/* not a TCP packet we can tell: no drop to count */
	b->d.netns = b->netns;
	return 0;
}

SEC("fexit/tcp_rcv_state_process")
int BPF_PROG(listen_exit, struct sock *sk, struct sk_buff *skb, int ret)
{
	struct listen_stash *stash = stash_here();
	struct listen_mib rise = {};
	struct bracket *b;
	__u32 place;

	if (!stash)
		return 0;
	place = bracket_close(stash, sk->__sk_common.skc_net.net, (__u64)skb, &rise);
	if (rise.drops && place && place - 1 < BRACKETS) {
		b = &stash->brackets[place - 1];
		if (b->d.key.family) {
			b->d.readable = 0;	/* the SYN is freed by now: no bytes of it to send */
			listen_drop(ctx, &b->d, &rise);
		}
	}
	bracket_pop(stash, place);
	return 0;
}

/* The other calls that may raise them: their rises are only counted (the
 * ACKs they refuse are dropped by kfree_skb(), and counted there). */
static __always_inline void aside_enter(struct sock *sk, __u64 id)
{
	struct listen_stash *stash = stash_here();

	if (stash)
		bracket_open(stash, BPF_CORE_READ(sk, __sk_common.skc_net.net), id);
}

static __always_inline void aside_exit(struct sock *sk, __u64 id)
{
	struct listen_stash *stash = stash_here();
	struct listen_mib rise;

	if (stash)
		bracket_pop(stash, bracket_close(stash, BPF_CORE_READ(sk, __sk_common.skc_net.net), id,
						 &rise));
}

SEC("fentry/tcp_check_req")
int BPF_PROG(check_req_enter, struct sock *sk, struct sk_buff *skb)
{
	aside_enter(sk, (__u64)skb);
	return 0;
}

SEC("fexit/tcp_check_req")
int BPF_PROG(check_req_exit, struct sock *sk, struct sk_buff *skb)
{
	aside_exit(sk, (__u64)skb);
	return 0;
}

SEC("fentry/cookie_v4_check")
int BPF_PROG(cookie_v4_enter, struct sock *sk, struct sk_buff *skb)
{
	aside_enter(sk, (__u64)skb);
	return 0;
}

SEC("fexit/cookie_v4_check")
int BPF_PROG(cookie_v4_exit, struct sock *sk, struct sk_buff *skb)
{
	aside_exit(sk, (__u64)skb);
	return 0;
}

SEC("fentry/cookie_v6_check")
int BPF_PROG(cookie_v6_enter, struct sock *sk, struct sk_buff *skb)
{
	aside_enter(sk, (__u64)skb);
	return 0;
}

SEC("fexit/cookie_v6_check")
int BPF_PROG(cookie_v6_exit, struct sock *sk, struct sk_buff *skb)
{
	aside_exit(sk, (__u64)skb);
	return 0;
}

/* @sk: the request the ICMP error is about, in its listener's namespace. */
SEC("fentry/tcp_req_err")
int BPF_PROG(req_err_enter, struct sock *sk)
{
	aside_enter(sk, (__u64)sk);
	return 0;
}

SEC("fexit/tcp_req_err")
int BPF_PROG(req_err_exit, struct sock *sk)
{
	aside_exit(sk, (__u64)sk);
	return 0;
}

/* LISTEN_CHAIN: the first "before" of @net, on every CPU. */
struct baselines_of {
	struct net *net;
	__u64 net_cookie;
};

static long baseline_of_cpu(__u32 index, struct baselines_of *of)
{
	__u32 zero = 0, *cpu = bpf_map_lookup_elem(&cpu_ids, &index);
	struct baseline_key key = { .net_cookie = of->net_cookie };
	struct listen_mib m;
	__u64 offset;

	if (!cpu)
		return 1;
	key.cpu = *cpu;
	if (per_cpu_offset(bpf_map_lookup_percpu_elem(&counters, &zero, *cpu), &offset) &&
	    listen_mib_read(listen_mibs(of->net, offset), &m))
		bpf_map_update_elem(&listen_baselines, &key, &m, BPF_NOEXIST);
	return 0;
}

static __always_inline void first_baselines(struct net *net)
{
	struct baselines_of of = { .net = net, .net_cookie = BPF_CORE_READ(net, net_cookie) };
	struct baseline_key first = { .net_cookie = of.net_cookie };
	__u32 zero = 0, *cpu = bpf_map_lookup_elem(&cpu_ids, &zero);

	/* the first possible CPU's, as all are added at once */
	if (cpu && (first.cpu = *cpu, !bpf_map_lookup_elem(&listen_baselines, &first)))
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

/* LISTEN_CHAIN: the rise of this CPU's counters of @net since they were
 * last read, into @rise, counted for audit; false if there is none. The
 * others are read only if ListenDrops rose: they rise only with it. */
static __always_inline bool listen_rise(struct net *net, struct listen_mib *rise)
{
	struct listen_stash *stash = stash_here();
	struct listen_mib *last, after;
	struct baseline_key key;
	struct linux_mib *mib;

	if (!stash)
		return false;
	/* Through the stash, the pointer comes back a number, to which the
	 * offset can be added: the verifier allows no arithmetic on it. */
	stash->number = (__u64)net->mib.net_statistics;
	mib = rdonly_cast(struct linux_mib, *(volatile __u64 *)&stash->number + stash->cpu_offset);
	after.drops = mib->mibs[cfg.mib_listen_drops];
	key = (struct baseline_key){ .net_cookie = net->net_cookie };
	if (stash->cached_cookie != key.net_cookie) {	/* another namespace than last time */
		struct baseline_key put_back = { .net_cookie = stash->cached_cookie };

		key.cpu = put_back.cpu = bpf_get_smp_processor_id();
		if (put_back.net_cookie)
			bpf_map_update_elem(&listen_baselines, &put_back, &stash->cached, BPF_ANY);
		stash->cached_cookie = 0;
		last = bpf_map_lookup_elem(&listen_baselines, &key);
		if (!last) {	/* no "before": this one becomes it */
			after.overflows = mib->mibs[cfg.mib_listen_overflows];
			after.synq_full = mib->mibs[cfg.mib_synq_full];
			count(COUNTER_LISTEN_UNTRACKED, 1);
			bpf_map_update_elem(&listen_baselines, &key, &after, BPF_NOEXIST);
			return false;
		}
		stash->cached = *last;
		stash->cached_cookie = key.net_cookie;
	}
	last = &stash->cached;
	if (last->drops == after.drops)
		return false;
	after.overflows = mib->mibs[cfg.mib_listen_overflows];
	after.synq_full = mib->mibs[cfg.mib_synq_full];
	rise->drops = after.drops - last->drops;
	rise->overflows = after.overflows - last->overflows;
	rise->synq_full = after.synq_full - last->synq_full;
	*last = after;
	count_listen_rises(net->ns.inum, rise);
	return true;
}

/* A rise that is not a SYN's: counted for audit, kept from the next SYN.
 * Out of line: the drop hooks call it rarely, and carry less code for it. */
static __noinline void listen_absorb(struct net *net)
{
	struct listen_mib rise;

	if (net)
		listen_rise(net, &rise);
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
	struct listen_mib rise;
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
	if (!net || !listen_rise(net, &rise))
		return 0;
	d.key = (struct drop_key){ .location = location };
	d.sport = d.dport = 0;
	if (!read_packet(skb, &d, true, true))
		return 0;
	d.netns = net->ns.inum;
	listen_drop(ctx, &d, &rise);
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

/*
 * Each tracepoint hook comes twice: as itself, and as *_direct, which also
 * makes direct loads through bpf_rdonly_cast() (6.2+: the packet's headers,
 * and LISTEN_CHAIN's counters). The loader loads the second only where the
 * kernel has that kfunc: 5.13-5.17 reject a call to a kfunc they cannot
 * resolve even in code that never runs (as libbpf before 1.2 leaves it), so
 * no program loaded there may hold one, not even behind a constant.
 */
#ifndef TCPDROP_BCC	/* tp_btf needs BTF, which is why bcc is here */
/* ctx[2] exists from 5.17 (reason), ctx[3] from 6.11 (rx_sk): the checks
 * fold to constants at load, so older kernels never see the out-of-range
 * reads. */
static __always_inline int kfree_skb_typed(unsigned long long *ctx, struct sk_buff *skb,
					   void *location, bool direct)
{
	__u32 reason = REASON_UNKNOWN;
	struct sock *rx_sk = NULL;

	if (bpf_core_field_exists(struct trace_event_raw_kfree_skb, reason))
		reason = (__u32)ctx[2];
	if (bpf_core_field_exists(struct trace_event_raw_kfree_skb, rx_sk))
		rx_sk = (struct sock *)ctx[3];
	/* LISTEN_CHAIN runs only where rx_sk is (6.11+): a listener is charged there. */
	if (direct && cfg.listen == LISTEN_CHAIN && rx_sk && rx_sk->__sk_common.skc_state == TCP_LISTEN)
		listen_absorb(rx_sk->__sk_common.skc_net.net);
	return handle_drop_once(ctx, skb, rx_sk, (__u64)location, reason, true, direct);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb_btf, struct sk_buff *skb, void *location)
{
	return kfree_skb_typed(ctx, skb, location, false);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb_btf_direct, struct sk_buff *skb, void *location)
{
	return kfree_skb_typed(ctx, skb, location, true);
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
/* The record's fields are taken by the programs themselves: bcc defines the
 * record's struct just before the first function that takes it. */
static __always_inline int kfree_skb_record(void *ctx, struct sk_buff *skb, struct sock *rx_sk,
					    __u64 location, __u32 reason, bool direct)
{
#ifndef TCPDROP_BCC	/* bcc: no listen-queue drops */
	if (direct && cfg.listen == LISTEN_CHAIN && rx_sk &&
	    BPF_CORE_READ(rx_sk, __sk_common.skc_state) == TCP_LISTEN)
		listen_absorb(rdonly_cast(struct net, BPF_CORE_READ(rx_sk, __sk_common.skc_net.net)));
#endif
	/* probe reads only: the record's pointers are plain addresses */
	return handle_drop_once(ctx, skb, rx_sk, location, reason, false, false);
}

SEC("tracepoint/skb/kfree_skb")
int kfree_skb_tp(struct trace_event_raw_kfree_skb *args)
{
	return kfree_skb_record(args, (struct sk_buff *)args->skbaddr, TP_RX_SK(args),
				(__u64)args->location, TP_REASON(args), false);
}
#endif

#ifndef TCPDROP_BCC
SEC("tracepoint/skb/kfree_skb")
int kfree_skb_tp_direct(struct trace_event_raw_kfree_skb *args)
{
	return kfree_skb_record(args, (struct sk_buff *)args->skbaddr, TP_RX_SK(args),
				(__u64)args->location, TP_REASON(args), true);
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
	return handle_drop_once(ctx, skb, sk, caller, REASON_UNKNOWN, false, false);
}
#endif
