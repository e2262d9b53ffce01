"""Decoding and printing one drop, from a DropEvent made by hand."""
import io
import ipaddress
import json
from datetime import datetime, timezone

from telegraf_tcpdrop.event import COUNTER_MAX, MARK_NO_PORTS, MARK_TRUNCATED, DropEvent, DropKey
from telegraf_tcpdrop.names import DropReasons
from telegraf_tcpdrop.symbols import drop_site_stack
from telegraf_tcpdrop.trace import HEADER, Tracer, decode, format_line

REASONS = DropReasons({2: "NO_SOCKET", 41: "TCP_OLD_SEQUENCE"})
NOW = datetime(2026, 11, 23, 19, 45, 39, 734507, tzinfo=timezone.utc)
RCV, DELIVER, BPF, TRACE_RUN = 0xFFFF0099, 0xFFFF1028, 0xFFFF5000, 0xFFFF6000
CONSUME, STATE_PROCESS, CONN_REQUEST = 0xFFFF7000, 0xFFFF8000, 0xFFFF9000


class FakeSymbols:
    """Names addresses without reading kallsyms."""
    NAMES = {RCV: "tcp_v4_rcv+0x99", DELIVER: "ip_protocol_deliver_rcu+0x28",
             BPF: "bpf_prog_abc_kfree_skb_btf+0x5bf", TRACE_RUN: "bpf_trace_run4+0x10d"}

    def format(self, addr):
        return self.NAMES[addr]

    def function(self, addr):
        return {CONSUME: "consume_skb", STATE_PROCESS: "tcp_rcv_state_process"}.get(
            addr, self.NAMES.get(addr, "?").split("+")[0])


def event(family=4, saddr="10.0.0.1", daddr="10.0.0.2", flags=0x02, marks=0, stack_size=32):
    key = DropKey(location=RCV, reason=2, family=family, state=0, flags=flags, marks=marks)
    e = DropEvent(key=key, len=32, netns=4026531833, pid=3061, stack_size=stack_size,
                  sport=40001, dport=443, comm=b"curl")
    e.saddr[:len(ipaddress.ip_address(saddr).packed)] = ipaddress.ip_address(saddr).packed
    e.daddr[:len(ipaddress.ip_address(daddr).packed)] = ipaddress.ip_address(daddr).packed
    e.stack[:4] = [BPF, TRACE_RUN, RCV, DELIVER]
    return e


def test_stack_starts_at_the_drop_site():
    function = FakeSymbols().function
    assert drop_site_stack([BPF, TRACE_RUN, RCV, DELIVER], RCV, function) == [RCV, DELIVER]
    assert drop_site_stack([BPF, DELIVER], RCV, function) == [BPF, DELIVER]  # not found: all of it


def test_a_refused_syn_stack_starts_below_consume_skb():
    """Its drop site, tcp_conn_request(), has returned by the time the SYN is freed."""
    stack = [BPF, TRACE_RUN, CONSUME, STATE_PROCESS, DELIVER]
    assert drop_site_stack(stack, CONN_REQUEST, FakeSymbols().function) == [STATE_PROCESS, DELIVER]


def test_decode_ipv4():
    drop = decode(event(), REASONS, FakeSymbols(), [BPF, TRACE_RUN, RCV, DELIVER], NOW, "web1")
    assert json.loads(json.dumps(drop.__dict__)) == {
        "time": "2026-11-23T19:45:39.734507Z", "pid": 3061, "comm": "curl", "family": 4,
        "saddr": "10.0.0.1", "sport": 40001, "daddr": "10.0.0.2", "dport": 443,
        "state": "NONE", "flags": "SYN", "reason": "NO_SOCKET", "location": "tcp_v4_rcv+0x99",
        "netns": 4026531833, "netns_name": "web1", "len": 32,
        "stack": ["tcp_v4_rcv+0x99", "ip_protocol_deliver_rcu+0x28"]}


def test_what_the_packet_did_not_hold_is_not_shown():
    truncated = decode(event(flags=0, marks=MARK_TRUNCATED), REASONS, FakeSymbols(), [], NOW, "web1")
    assert (truncated.sport, truncated.dport, truncated.flags) == (40001, 443, "TRUNCATED")
    portless = decode(event(flags=0, marks=MARK_TRUNCATED | MARK_NO_PORTS), REASONS, FakeSymbols(), [], NOW, "web1")
    assert (portless.sport, portless.dport, portless.flags) == (None, None, "TRUNCATED")
    assert format_line(portless).endswith("10.0.0.1:-            > 10.0.0.2:-            "
                                          "NONE (TRUNCATED) NO_SOCKET")


def test_a_stack_the_kernel_could_not_take_is_empty():
    assert event(stack_size=-14).stack_ips() == [] and event(stack_size=16).stack_ips() == [BPF, TRACE_RUN]


def test_line_ipv4_and_ipv6():
    v4 = decode(event(), REASONS, FakeSymbols(), [], NOW, "web1")
    v6 = decode(event(6, "2001:db8::1", "fe80::2"), REASONS, FakeSymbols(), [], NOW, "web1")
    local = NOW.astimezone().strftime("%H:%M:%S")
    assert format_line(v4) == \
        f"{local} 3061    web1         4  10.0.0.1:40001        > 10.0.0.2:443          NONE (SYN) NO_SOCKET"
    assert format_line(v6) == \
        f"{local} 3061    web1         6  [2001:db8::1]:40001   > [fe80::2]:443         NONE (SYN) NO_SOCKET"
    assert HEADER.index("SADDR") == format_line(v4).index("10.0.0.1")
    assert HEADER.index(">") == format_line(v4).index(">")


class FakeNames:
    def name(self, inode):
        return {4026531833: "web1"}.get(inode, f"netns:{inode}")


def test_tracer_prints_only_the_namespace_asked_for():
    out = io.StringIO()
    tracer = Tracer(StubProbe(), REASONS, FakeSymbols(), as_json=True, netns="web1",
                    netns_names=FakeNames(), out=out)
    tracer.on_event(event())
    other = event()
    other.netns = 4026532000
    tracer.on_event(other)
    assert [json.loads(line)["netns_name"] for line in out.getvalue().splitlines()] == ["web1"]


class StubProbe:
    """Stands in for the loaded probe: its counters."""

    def __init__(self):
        self.lost_and_limited = [0] * COUNTER_MAX

    def counters(self):
        return list(self.lost_and_limited)

    def netns_tasks(self):
        return []


def test_tracer_prints_line_then_stack_then_blank():
    out = io.StringIO()
    Tracer(StubProbe(), REASONS, FakeSymbols(), netns_names=FakeNames(), out=out).on_event(event())
    lines = out.getvalue().split("\n")
    assert lines[0].endswith("NONE (SYN) NO_SOCKET")
    assert lines[1:] == ["tcp_v4_rcv+0x99", "ip_protocol_deliver_rcu+0x28", "", ""]


def test_tracer_json_has_the_documented_keys():
    out = io.StringIO()
    Tracer(StubProbe(), REASONS, FakeSymbols(), as_json=True, with_stack=False,
           netns_names=FakeNames(), out=out).on_event(event())
    drop = json.loads(out.getvalue())
    assert list(drop) == ["time", "pid", "comm", "family", "saddr", "sport", "daddr", "dport",
                          "state", "flags", "reason", "location", "netns", "netns_name", "len", "stack"]
    assert drop["stack"] == []


def test_unprinted_drops_are_reported_once(capsys):
    probe = StubProbe()
    tracer = Tracer(probe, REASONS, FakeSymbols(), out=io.StringIO())
    tracer.report_not_shown()
    probe.lost_and_limited = [2, 5, 0, 0, 0, 3]
    tracer.report_not_shown()
    tracer.report_not_shown()
    assert capsys.readouterr().err == \
        "W! 7 drops not shown: 2 lost (ring buffer full), 5 over the rate limit (--rate-limit)\n" \
        "W! 3 drops shown without their kernel stack (the kernel could not take it)\n"
