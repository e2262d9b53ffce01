"""Names for the numbers a drop carries: TCP flags, TCP states, drop reasons.

Flags and states are wire format and stable ABI. Drop reasons are not: the
kernel renumbers enum skb_drop_reason between versions, so their names are
read from the running kernel (BTF, or the tracepoint's format file).
"""
import re

from .event import (MARK_FRAGMENT, MARK_TRUNCATED, REASON_LISTEN_DROP, REASON_LISTEN_OVERFLOW,
                    REASON_SYN_QUEUE_FULL, REASON_UNKNOWN, STATE_NONE)

# TCP header flag bits, in bit order (RFC 9293, RFC 3168).
TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")

# include/net/tcp_states.h; the same numbers are UAPI as BPF_TCP_* in linux/bpf.h.
TCP_STATES = {
    STATE_NONE: "NONE",
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
    13: "BOUND_INACTIVE",
}

REASON_PREFIX = "SKB_DROP_REASON_"

# Reasons the probe gives where the kernel has none (plugin/tcpdrop.h). Ours
# are lowercase with hyphens: no C identifier, so no kernel reason, is spelled
# like them. UNKNOWN: a kernel without drop reasons (before 5.17).
OWN_REASONS = {
    REASON_UNKNOWN: "UNKNOWN",
    REASON_LISTEN_OVERFLOW: "listen-overflow",
    REASON_SYN_QUEUE_FULL: "syn-queue-full",
    REASON_LISTEN_DROP: "listen-drop",
}


def flag_names(flags):
    """'SYN|ACK' for 0x12; '' for no flag set."""
    return "|".join(name for bit, name in enumerate(TCP_FLAGS) if flags & (1 << bit))


def flags_tag(flags, marks):
    """The flags as tagged: 'SYN|ACK'; 'NONE' for no flag set; FRAGMENT or
    TRUNCATED where the packet held no flags byte to read (drop_key.marks)."""
    if marks & MARK_FRAGMENT:
        return "FRAGMENT"
    if marks & MARK_TRUNCATED:
        return "TRUNCATED"
    return flag_names(flags) or "NONE"


def state_name(state):
    return TCP_STATES.get(state, f"STATE_{state}")


class DropReasons:
    """Maps the numeric reason of a drop to the kernel's name for it."""

    def __init__(self, names):
        self.names = dict(names)

    @classmethod
    def from_btf(cls, btf):
        """From `enum skb_drop_reason` in BTF; None on kernels without it (< 5.17)."""
        values = btf.enum("skb_drop_reason")
        if values is None:
            return None
        return cls({value: _short(name) for value, name in values.items()})

    @classmethod
    def from_format(cls, text):
        """From the __print_symbolic() table of skb/kfree_skb's tracefs format file."""
        pairs = re.findall(r'\{\s*(\d+)\s*,\s*"([A-Z0-9_]+)"\s*\}', text)
        return cls({int(value): name for value, name in pairs})

    def name(self, reason):
        if reason in OWN_REASONS:
            return OWN_REASONS[reason]
        return self.names.get(reason, f"REASON_{reason}")

    def number(self, name):
        """The value of a reason name (with or without SKB_DROP_REASON_); KeyError if none."""
        for value, own in OWN_REASONS.items():
            if own.lower() == name.lower():
                return value
        wanted = _short(name.upper())
        for value, known in self.names.items():
            if known == wanted:
                return value
        raise KeyError(name)


def _short(name):
    """SKB_DROP_REASON_NO_SOCKET -> NO_SOCKET; SKB_CONSUMED -> CONSUMED."""
    if name.startswith(REASON_PREFIX):
        return name[len(REASON_PREFIX):]
    return name.removeprefix("SKB_")
