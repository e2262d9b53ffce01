"""ctypes mirrors of plugin/tcpdrop.h, field for field.

tests/test_event.py compiles the header and compares every offset and size.
"""
import ctypes

TASK_COMM_LEN = 16
MAX_STACK_DEPTH = 64
MAX_SNAPLEN = 2048
STATE_NONE = 0
REASON_UNKNOWN = 0xFFFFFFFF
REASON_LISTEN_OVERFLOW, REASON_SYN_QUEUE_FULL, REASON_LISTEN_DROP = 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFC
REASON_OURS_FIRST = REASON_LISTEN_DROP

# enum listen_mode
LISTEN_OFF, LISTEN_BRACKET, LISTEN_CHAIN = 0, 1, 2

# drop_key.marks
EPHEMERAL_SPORT, EPHEMERAL_DPORT, MARK_TRUNCATED, MARK_FRAGMENT, MARK_NO_PORTS = 1, 2, 4, 8, 16
MARK_PORTS_OVERFLOW = 32

# enum port_tags
PORT_TAGS_BUCKETED, PORT_TAGS_ALL, PORT_TAGS_NONE = 0, 1, 2

# enum counter
(COUNTER_LOST, COUNTER_RATELIMITED, COUNTER_OVERFLOW_DROPS, COUNTER_OVERFLOW_BYTES,
 COUNTER_LISTEN_UNTRACKED, COUNTER_STACKS_LOST, COUNTER_NESTED, COUNTER_UNREADABLE,
 COUNTER_MAX) = range(9)


class DropKey(ctypes.Structure):
    _fields_ = [
        ("location", ctypes.c_uint64),
        ("reason", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("state", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("marks", ctypes.c_uint8),
        ("netns", ctypes.c_uint32),
    ]


class DropEvent(ctypes.Structure):
    _fields_ = [
        ("key", DropKey),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("len", ctypes.c_uint32),
        ("netns", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("stack_size", ctypes.c_int32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("comm", ctypes.c_char * TASK_COMM_LEN),
        ("stack_align", ctypes.c_uint32),
        ("stack", ctypes.c_uint64 * MAX_STACK_DEPTH),
        ("time_ns", ctypes.c_uint64),
        ("caplen", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("packet", ctypes.c_uint8 * MAX_SNAPLEN),
    ]

    def ports(self):
        """(sport, dport) as read from the packet; (None, None) if it ended before them."""
        if self.key.marks & MARK_NO_PORTS:
            return None, None
        return self.sport, self.dport

    def stack_ips(self):
        """The kernel stack's return addresses, innermost first; [] if none."""
        return list(self.stack[:max(self.stack_size, 0) // 8])

    def packet_bytes(self):
        """The packet's first bytes the probe copied (from its IP header on)."""
        return bytes(self.packet[:self.caplen])


class DropCount(ctypes.Structure):
    _fields_ = [("drops", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class ListenMib(ctypes.Structure):
    _fields_ = [("drops", ctypes.c_uint64), ("overflows", ctypes.c_uint64), ("synq_full", ctypes.c_uint64)]


class NetnsTask(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint32), ("netns", ctypes.c_uint32)]


HOT_SLOTS = 64
HOT_GENERATION = HOT_SLOTS  # the slot after them: the map's generation, and "its drops map is full"


class HotSlot(ctypes.Structure):
    _fields_ = [
        ("key", DropKey),
        ("count", DropCount),
        ("claimed", ctypes.c_uint32),
        ("generation", ctypes.c_uint32),
    ]


class ProbeConfig(ctypes.Structure):
    _fields_ = [
        ("reason_mask", ctypes.c_uint64 * 4),
        ("events_per_sec", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("ephemeral_low", ctypes.c_uint16),
        ("ephemeral_high", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("other_reasons", ctypes.c_uint8),
        ("aggregate", ctypes.c_uint8),
        ("events", ctypes.c_uint8),
        ("port_tags", ctypes.c_uint8),
        ("listen", ctypes.c_uint8),
        ("key_netns", ctypes.c_uint8),
        ("stacks", ctypes.c_uint8),
        ("guard_nesting", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 5),
        ("conn_request", ctypes.c_uint64),
        ("syn_site", ctypes.c_uint64),
        ("syn_site_len", ctypes.c_uint64),
        ("icmp_site", ctypes.c_uint64),
        ("icmp_site_len", ctypes.c_uint64),
        ("icmp6_site", ctypes.c_uint64),
        ("icmp6_site_len", ctypes.c_uint64),
        ("page_offset_base", ctypes.c_uint64),
        ("vmemmap_base", ctypes.c_uint64),
        ("mib_listen_drops", ctypes.c_uint32),
        ("mib_listen_overflows", ctypes.c_uint32),
        ("mib_synq_full", ctypes.c_uint32),
        ("listen_overflow_reason", ctypes.c_uint32),
        ("ncpus", ctypes.c_uint32),
        ("own_reasons", ctypes.c_uint32),
        ("snaplen", ctypes.c_uint32),
        ("pad_end", ctypes.c_uint32),
    ]
