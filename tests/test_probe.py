"""The loader and the probe's in-kernel filters and budgets, on real drops."""
import ctypes

import pytest

from conftest import eventually
from telegraf_tcpdrop import host, libbpf
from telegraf_tcpdrop.btf import Btf, BtfError
from telegraf_tcpdrop.startup import mount_tracefs
from telegraf_tcpdrop.event import COUNTER_LOST, COUNTER_RATELIMITED, COUNTER_STACKS_LOST, ProbeConfig
from telegraf_tcpdrop.names import DropReasons
from telegraf_tcpdrop.probe import CoreLoader, Probe, ProbeError, tcp_drop_needs_kprobe

pytestmark = pytest.mark.kernel


def reasons():
    with Btf.vmlinux(libbpf.load()) as btf:
        return DropReasons.from_btf(btf)


class Capture:
    """A probe and the events it delivered from one namespace."""

    def __init__(self, ns, hooks=("tp_btf",), **config):
        self.ns, self.events = ns, []
        self.probe = Probe(CoreLoader(host.probe_object()), event_config(**config), hooks)
        self.probe.on_event(self._on_event)

    def _on_event(self, e):
        if e.netns == self.ns.inode:
            self.events.append(e)

    def wait(self, count, timeout=5.0):
        def enough():
            self.probe.poll(50)
            return len(self.events) >= count
        eventually(enough, timeout, interval=0)
        return self.events

    def settle(self):
        """Everything already in the ring buffer."""
        self.probe.poll(200)
        return self.events


@pytest.fixture
def capture(netns):
    captures = []

    def start(**kwargs):
        captures.append(Capture(netns, **kwargs))
        return captures[-1]
    yield start
    for c in captures:
        c.probe.close()


def event_config(**fields):
    """Events on, every reason unless the test picks some."""
    config = ProbeConfig(**{"events": 1, "other_reasons": 1, **fields})
    if "reason_mask" not in fields:
        config.reason_mask[:] = [2**64 - 1] * 4
    return config


def fields(e):
    return (bytes(e.key), bytes(e.saddr), bytes(e.daddr), e.sport, e.dport, e.netns, e.len)


def test_classic_tracepoint_reports_what_tp_btf_reports(netns, capture):
    mount_tracefs()
    btf, classic = capture(hooks=("tp_btf",), port=7100), capture(hooks=("tracepoint",), port=7100)
    assert (btf.probe.hook, classic.probe.hook) == ("tp_btf", "tracepoint")
    netns.traffic("syn", "::1", 7100, 40010)
    [a], [b] = btf.wait(1), classic.wait(1)
    assert fields(a) == fields(b)
    assert a.key.reason == reasons().number("NO_SOCKET")


def test_events_carry_their_kernel_stack_when_asked(netns, capture):
    with_stack, without = capture(port=7107, stacks=1), capture(port=7107)
    netns.traffic("syn", "127.0.0.1", 7107, 40017)
    [a], [b] = with_stack.wait(1), without.wait(1)
    assert a.key.location in a.stack_ips()  # the drop site, below the tracing frames
    assert (b.stack_size, b.stack_ips()) == (0, [])
    assert with_stack.probe.counters()[COUNTER_STACKS_LOST] == 0


NOT_SEEN = (False, "drops in tcp_drop() not seen: it frees with __kfree_skb(), and it is inlined")


@pytest.mark.parametrize("reasons, symbol, expected", [
    ({}, True, (True, None)),  # 5.10: no drop reasons at all
    ({2: "NO_SOCKET"}, True, (True, None)),  # 5.17: reasons, but tcp_drop() still __kfree_skb()s
    ({}, False, NOT_SEEN),  # Debian's 5.10: tcp_drop() is inlined
    # tcp_drop() frees with kfree_skb_reason() (the series that brought TCP's
    # reasons): the tracepoint sees it, whatever the version says (RHEL 9's 5.14)
    ({2: "NO_SOCKET", 39: "TCP_OFOMERGE"}, True, (False, None)),
    ({2: "NO_SOCKET", 39: "TCP_OFOMERGE"}, False, (False, None))])
def test_tcp_drop_gets_its_kprobe_where_no_tracepoint_sees_its_drops(reasons, symbol, expected):
    spans = {"tcp_drop": (0xFFFFFFFF81000400, 0x400)} if symbol else {}
    assert tcp_drop_needs_kprobe(DropReasons(reasons), spans) == expected


def test_no_program_loaded_where_the_kernel_lacks_bpf_rdonly_cast_calls_a_kfunc(netns):
    """5.13-5.17 reject a call to a kfunc they cannot resolve even in code
    that never runs (libbpf before 1.2 leaves one in as a call to id 0): where
    the kernel has no bpf_rdonly_cast(), the loader loads no program that
    calls it. Checked in the instructions the kernel got, hook by hook; the
    same check finds the calls where the loader is told the kernel has it."""
    lib = libbpf.load()
    lib.bpf_program__insns.restype, lib.bpf_program__insns.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    lib.bpf_program__insn_cnt.restype, lib.bpf_program__insn_cnt.argtypes = ctypes.c_size_t, [ctypes.c_void_p]

    def kfunc_calls(probe, loader):
        calls = 0
        for name in probe._programs:
            program = loader._program(name)
            insns = ctypes.string_at(lib.bpf_program__insns(program), lib.bpf_program__insn_cnt(program) * 8)
            # BPF_JMP | BPF_CALL with src_reg BPF_PSEUDO_KFUNC_CALL (2)
            calls += sum(1 for at in range(0, len(insns), 8) if insns[at] == 0x85 and insns[at + 1] >> 4 == 2)
        return calls

    mount_tracefs()
    for hook in ("tp_btf", "tracepoint"):
        for direct, expected in ((False, 0), (True, None)):
            loader = CoreLoader(host.probe_object(), direct_loads=direct)
            with Probe(loader, event_config(), (hook,)) as probe:
                calls = kfunc_calls(probe, loader)
                if expected is None:
                    assert calls > 0, (hook, "direct loads, but no kfunc call found")
                else:
                    assert calls == expected, (hook, sorted(probe._programs))


def test_a_global_the_object_lacks_is_a_one_line_error():
    """What the loader asks of the object's BTF (its settings global), when it is not there."""
    with Btf.parse(libbpf.load(), host.probe_object()) as btf:
        assert btf.datasec_offset(".rodata", "cfg") >= 0
        with pytest.raises(BtfError) as missing:
            btf.datasec_offset(".rodata", "no_such_global")
        with pytest.raises(BtfError) as no_section:
            btf.datasec_offset(".no_such_section", "cfg")
    assert str(missing.value) == (
        "the BPF object's BTF has no global no_such_global in section .rodata: the object was "
        "not built from this version's source; rebuild it (make probe) or reinstall the package")
    assert str(no_section.value).startswith(
        "the BPF object's BTF has no section .no_such_section, where its global cfg should be: ")
    assert "\n" not in str(missing.value) + str(no_section.value)


def test_kprobe_hook_fails_clearly_where_tcp_drop_cannot_be_probed():
    with open("/proc/kallsyms") as f:
        if any(line.split()[2] == "tcp_drop" for line in f):
            pytest.skip("this kernel has tcp_drop(): the kprobe may attach")
    with pytest.raises(ProbeError, match="kprobe/tcp_drop"):
        Probe(CoreLoader(host.probe_object()), event_config(), hooks=("kprobe",))


def test_port_filter_matches_either_side(netns, capture):
    c = capture(port=7101)
    netns.traffic("syn", "127.0.0.1", 7102, 40011)  # neither port
    netns.traffic("syn", "127.0.0.1", 7101, 40012)  # destination
    netns.traffic("syn", "127.0.0.1", 9, 7101)      # source
    c.wait(2)
    assert sorted((e.sport, e.dport) for e in c.settle()) == [(7101, 9), (40012, 7101)]


def test_family_filter(netns, capture):
    c = capture(family=6, port=7103)
    netns.traffic("syn", "127.0.0.1", 7103, 40013)
    netns.traffic("syn", "::1", 7103, 40014)
    c.wait(1)
    assert [(e.key.family, e.sport) for e in c.settle()] == [(6, 40014)]


def test_reason_filter(netns, capture):
    netfilter_drop = reasons().number("NETFILTER_DROP")
    mask = (ctypes.c_uint64 * 4)()
    mask[netfilter_drop >> 6] |= 1 << (netfilter_drop & 63)
    c = capture(reason_mask=mask, other_reasons=0)
    netns.drop_input_port(7104)
    netns.traffic("syn", "127.0.0.1", 7105, 40015)  # closed port: NO_SOCKET, filtered out
    netns.traffic("syn", "127.0.0.1", 7104, 40016, 0.2)
    c.wait(1)
    assert {(e.dport, e.key.reason) for e in c.settle()} == {(7104, netfilter_drop)}


def test_rate_limit_counts_what_it_holds_back(netns, capture):
    c = capture(port=7106, events_per_sec=5)
    # One CPU, so one per-CPU budget: the SYNs are dropped in softirq on the sender's CPU.
    netns.traffic("syns", "127.0.0.1", 7106, 41000, 20, cpu=0)
    c.wait(5)
    counters = c.probe.counters()
    assert (len(c.settle()), counters[COUNTER_RATELIMITED], counters[COUNTER_LOST]) == (5, 15, 0)
    assert [e.sport for e in c.events] == list(range(41000, 41005))

