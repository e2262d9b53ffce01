"""plugin/event.py mirrors plugin/tcpdrop.h: checked by clang itself, for the BPF target."""
import ctypes
import subprocess
from pathlib import Path

import pytest

from telegraf_tcpdrop import event

PLUGIN = Path(__file__).parents[1] / "plugin"
TYPES = "typedef unsigned char __u8; typedef unsigned short __u16; typedef unsigned int __u32;\n" \
        "typedef int __s32; typedef unsigned long long __u64;\n"


def compile_for_bpf(source):
    """clang's complaints about source, compiled for the BPF target; '' if none."""
    result = subprocess.run(["clang", "-target", "bpf", "-fsyntax-only", "-I", str(PLUGIN), "-x", "c", "-"],
                            input=source, capture_output=True, text=True)
    return result.stderr


def static_asserts(c_name, mirror):
    lines = [f"_Static_assert(sizeof(struct {c_name}) == {ctypes.sizeof(mirror)}, \"size\");"]
    for name, _ in mirror._fields_:
        offset = getattr(mirror, name).offset
        lines.append(f"_Static_assert(__builtin_offsetof(struct {c_name}, {name}) == {offset}, \"{name}\");")
    return "\n".join(lines)


@pytest.mark.parametrize("c_name, mirror", [("drop_event", event.DropEvent),
                                            ("drop_key", event.DropKey),
                                            ("drop_count", event.DropCount),
                                            ("hot_slot", event.HotSlot),
                                            ("netns_task", event.NetnsTask),
                                            ("listen_mib", event.ListenMib),
                                            ("probe_config", event.ProbeConfig)])
def test_ctypes_layout_matches_the_header(c_name, mirror):
    assert compile_for_bpf(f'{TYPES}#include "tcpdrop.h"\n{static_asserts(c_name, mirror)}\n') == ""
    # No hole: a field added to the header in one would keep every offset and the size.
    assert sum(ctypes.sizeof(kind) for _, kind in mirror._fields_) == ctypes.sizeof(mirror)


def test_a_wrong_offset_is_caught():
    source = f'{TYPES}#include "tcpdrop.h"\n' \
             '_Static_assert(__builtin_offsetof(struct drop_event, saddr) == 9, "saddr");\n'
    assert "\"saddr\"" in compile_for_bpf(source)


def test_constants_match_the_header():
    names = ["TASK_COMM_LEN", "MAX_STACK_DEPTH", "MAX_SNAPLEN", "STATE_NONE", "REASON_UNKNOWN",
             "EPHEMERAL_SPORT", "EPHEMERAL_DPORT", "MARK_TRUNCATED", "MARK_FRAGMENT", "MARK_NO_PORTS",
             "MARK_PORTS_OVERFLOW",
             "HOT_SLOTS", "HOT_GENERATION",
             "PORT_TAGS_BUCKETED", "PORT_TAGS_ALL", "PORT_TAGS_NONE",
             "COUNTER_LOST", "COUNTER_RATELIMITED", "COUNTER_OVERFLOW_DROPS",
             "COUNTER_OVERFLOW_BYTES", "COUNTER_LISTEN_UNTRACKED", "COUNTER_STACKS_LOST", "COUNTER_NESTED",
             "COUNTER_UNREADABLE", "COUNTER_MAX",
             "REASON_LISTEN_OVERFLOW", "REASON_SYN_QUEUE_FULL", "REASON_LISTEN_DROP",
             "LISTEN_OFF", "LISTEN_BRACKET", "LISTEN_CHAIN"]
    asserts = "\n".join(f'_Static_assert({n} == {getattr(event, n)}u, "{n}");' for n in names)
    assert compile_for_bpf(f'{TYPES}#include "tcpdrop.h"\n{asserts}\n') == ""
