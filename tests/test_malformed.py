"""Crafted frames, sent raw (AF_PACKET) from a client namespace over a veth into a
server namespace: the probe reads only what each dropped packet holds.

`len` (trace) and `bytes` (metrics) are the IP packet's bytes the kernel held at
the drop site, never what its header claims; flags are TRUNCATED where the TCP
header ends before its flags byte, FRAGMENT for a non-first fragment, and ports
are shown only where the packet holds them. Each case is checked against the
server's own counter of what happened to those frames (nstat), exactly.
"""
from dataclasses import dataclass

import pytest

import traffic
from conftest import eventually

pytestmark = pytest.mark.kernel

COUNT = 3  # frames per case
DPORT = 9  # closed in the server namespace
# The six extension headers of issue #12 are the first six; the kernel walks all eight.
IPV6_HEADERS = ["hop", "dest", "routing", "fragment", "dest", "dest", "dest", "dest"]


@dataclass
class Case:
    """A crafted frame (tests/traffic.py arguments before sport, dport, count),
    and what each of its drops must be."""
    kind: tuple
    family: int
    length: int  # IP header to the packet's end, as sent and as the kernel holds it
    flags: str
    reason: str
    frame: str  # the drop site's function
    counter: str  # the server's nstat counter of these drops (or of these frames)
    ports: bool = True
    state: str = "NONE"


def syn(kind, family, length):
    """A whole SYN to a closed port: NO_SOCKET where TCP looks it up, answered by a RST."""
    return Case(kind, family, length, "SYN", "NO_SOCKET", f"tcp_v{family}_rcv", "TcpOutRsts")


def ip_noproto(headers, length):
    """A SYN behind IPv6 headers that end at one no protocol handler takes."""
    return Case(("syn-behind-ipv6-headers", headers), 6, length, "SYN", "IP_NOPROTO", "ip6_input_finish",
                "Ip6InUnknownProtos")


CASES = {
    # The header claims 1500 bytes: ip_rcv_core()/ip6_rcv_core() drop a packet
    # of 40 (60). State NONE: veth keeps skb->sk, the client's AF_PACKET socket,
    # across namespaces until ip(6)_rcv_core() orphans the packet, after these
    # checks; a socket of another namespace than the packet's is not the drop's.
    "ipv4-claims-1500-bytes": Case(("lying-length", 4), 4, 40, "SYN", "PKT_TOO_SMALL", "ip_rcv_core",
                                   "IpExtInTruncatedPkts"),
    "ipv6-claims-1500-bytes": Case(("lying-length", 6), 6, 60, "SYN", "PKT_TOO_SMALL", "ip6_rcv_core",
                                   "Ip6InTruncatedPkts"),
    # TCP cannot pull a whole header: NOT_SPECIFIED, no counter of its own
    # (TcpInSegs counts them; no RST leaves). Ports need 4 bytes, flags 14.
    **{f"ipv{family}-tcp-{size}-bytes": Case(("short-tcp", family, size), family,
                                              (20 if family == 4 else 40) + size, "TRUNCATED",
                                              "NOT_SPECIFIED", f"tcp_v{family}_rcv", "TcpInSegs",
                                              ports=size >= 4)
       for family in (4, 6) for size in (2, 4, 13)},
    **{f"ipv{family}-tcp-20-bytes": syn(("short-tcp", family, 20), family, 40 if family == 4 else 60)
       for family in (4, 6)},
    # IPv4 options: the TCP header is after them (IHL 6, and 15, the most).
    **{f"ipv4-{size}-bytes-of-options": syn(("syn-behind-ip-options", size), 4, 40 + size)
       for size in (4, 40)},
    # IPv6 extension headers the kernel walks to TCP (8 bytes each).
    **{f"ipv6-{n}-extension-headers": syn(("syn-behind-ipv6-headers", ",".join(IPV6_HEADERS[:n]) or "none"),
                                          6, 60 + 8 * n)
       for n in range(len(IPV6_HEADERS) + 1)},
    # Headers this kernel has no handler for: IP_NOPROTO (and an ICMPv6
    # parameter problem back), still a TCP packet's drop. The probe walks AH by
    # its length in 4 bytes, HIP (40 bytes) and Shim6 by the generic format.
    "ipv6-ah": ip_noproto("hop,ah", 40 + 8 + 16 + 20),
    "ipv6-hip": ip_noproto("hop,dest,hip", 40 + 8 + 8 + 40 + 20),
    "ipv6-shim6-sixth": ip_noproto("hop,dest,routing,fragment,dest,shim6", 40 + 6 * 8 + 20),
    # Fragments never completed, freed at the reassembly timeout. The first
    # carries the TCP header (the SYN and 4 bytes of data); a later one none.
    "ipv4-first-fragment": Case(("fragment", 4, "first"), 4, 20 + 24, "SYN", "FRAG_REASM_TIMEOUT",
                                "ip_expire", "IpReasmFails"),
    "ipv4-later-fragment": Case(("fragment", 4, "later"), 4, 20 + 20, "FRAGMENT", "FRAG_REASM_TIMEOUT",
                                "inet_frag_rbtree_purge", "IpReasmFails", ports=False),
    "ipv6-first-fragment": Case(("fragment", 6, "first"), 6, 40 + 8 + 24, "SYN", "FRAG_REASM_TIMEOUT",
                                "ip6_frag_expire", "Ip6ReasmFails"),
    "ipv6-later-fragment": Case(("fragment", 6, "later"), 6, 40 + 8 + 20, "FRAGMENT", "FRAG_REASM_TIMEOUT",
                                "inet_frag_rbtree_purge", "Ip6ReasmFails", ports=False),
}
# Below the ephemeral range: no other test's connection on this host has them.
SPORTS = {name: 23000 + i for i, name in enumerate(CASES)}


def client_drops(tracer, server, family):
    """The events of packets from the client, since the pair was made (by
    address: a fragment freed from a reassembly queue has no namespace)."""
    source = traffic.CLIENT_V4 if family == 4 else traffic.CLIENT_V6
    return [e for e in tracer.events if e["saddr"] == source and e["time"] >= server.created]


def our_points(m, case, sport):
    """(tags, fields) of the points whose tags say they are this case's drops
    (the metrics count the whole host's): its family, and its ports, or none
    at its drop site."""
    return [(t, f) for meas, t, f, _ in m.points if meas == "tcpdrop" and t["family"] == str(case.family) and
            ((t.get("sport"), t.get("dport")) == (str(sport), str(DPORT)) or
             ("sport" not in t and t["frame"] == case.frame))]


def warnings(tracer):
    """What the tracer said it could not show (a drop storm elsewhere on the host)."""
    return "".join(line for line in tracer.stderr if line.startswith("W! "))


@pytest.mark.parametrize("name", CASES)
def test_a_crafted_frame_is_shown_and_counted_as_it_really_is(tracer, metrics, pair, name):
    """COUNT frames of a case: each drop in trace and metrics exactly as the
    packet was (ports, flags, IP length held), as many as the kernel counted."""
    case, sport = CASES[name], SPORTS[name]
    if name == "ipv6-ah" and has_ah6():
        pytest.skip("this kernel handles AH (ah6): the SYN meets IPsec, not 'no protocol'")
    server, client = pair
    m = metrics("--interval", "200ms", "--port-tags", "all", "--netns-tags", "none")  # (test_netns.py)
    sent = client.traffic(*case.kind, sport, DPORT, COUNT)
    assert (int(sent["sent"]), int(sent["len"])) == (COUNT, case.length)

    # The kernel did drop them, as the case says (fragments: 1 s later).
    assert eventually(lambda: server.counter(case.counter) == COUNT, timeout=10)
    eventually(lambda: len(client_drops(tracer, server, case.family)) >= COUNT, timeout=10)
    eventually(lambda: sum(f["drops"] for t, f in our_points(m, case, sport)) >= COUNT, timeout=10)
    assert m.stop() == 0  # its last interval written: nothing more comes

    tags = {"family": str(case.family), "flags": case.flags, "frame": case.frame, "reason": case.reason,
            "state": case.state, **({"sport": str(sport), "dport": str(DPORT)} if case.ports else {})}
    points = our_points(m, case, sport)
    assert [dict(t) for t in {tuple(sorted(t.items())) for t, f in points}] == [tags]
    assert (sum(f["drops"] for t, f in points), sum(f["bytes"] for t, f in points)) == \
        (COUNT, COUNT * case.length)

    client_ip, server_ip = (traffic.CLIENT_V4, traffic.SERVER_V4) if case.family == 4 else \
        (traffic.CLIENT_V6, traffic.SERVER_V6)
    want = {"family": case.family, "saddr": client_ip, "daddr": server_ip,
            "sport": sport if case.ports else None, "dport": DPORT if case.ports else None,
            "state": case.state, "flags": case.flags, "reason": case.reason, "len": case.length}
    drops = client_drops(tracer, server, case.family)
    assert [{**{k: e[k] for k in want}, "frame": e["location"].split("+")[0]}
            for e in drops] == [{**want, "frame": case.frame}] * COUNT, warnings(tracer)
    # A fragment freed from a reassembly queue, first of its run, has no device
    # (skb->dev shares its storage with the queue's tree node) and no socket:
    # its namespace is unknown (0).
    in_queue = case.frame == "inet_frag_rbtree_purge"
    assert {e["netns"] for e in drops} == {0 if in_queue else server.inode}
    assert server.counter(case.counter) == COUNT  # and not one more
    if case.family == 4:  # only these frames come in over IPv4 unicast: the bytes the kernel took
        assert unicast_octets(server) == COUNT * case.length


@pytest.mark.parametrize("payload_proto", [59, 6])
def test_mobility_header_is_not_tcp(tracer, pair, payload_proto):
    """A Mobility header ends the chain: its payload proto is 59 (no next header);
    one that says 6 (TCP) before a SYN's bytes is not TCP either: no handler
    takes Mobility, and the kernel never gives what follows it to TCP."""
    server, client = pair
    client.traffic("syn-behind-mobility", payload_proto, 23900, DPORT, COUNT)
    assert eventually(lambda: server.counter("Ip6InUnknownProtos") == COUNT)
    # A TCP drop after them shows the tracer had caught up past them.
    client.traffic("short-tcp", 6, 20, 23901, DPORT, 1)
    assert eventually(lambda: client_drops(tracer, server, 6))
    assert [(e["sport"], e["flags"]) for e in client_drops(tracer, server, 6)] == [(23901, "SYN")]


def unicast_octets(ns):
    """The bytes of the unicast IPv4 packets ns received (ip_rcv_core() counts
    skb->len, before it checks a length)."""
    return ns.counter("IpExtInOctets") - ns.counter("IpExtInMcastOctets") - ns.counter("IpExtInBcastOctets")


def has_ah6():
    with open("/proc/kallsyms") as f:
        return any(line.split()[2] == "ah6_rcv" for line in f)


def direct_map_named():
    """Whether kallsyms names the variables that place x86-64's direct map
    (CONFIG_KALLSYMS_ALL), which the probe needs to read a frag's bytes."""
    with open("/proc/kallsyms") as f:
        return {line.split()[2] for line in f} >= {"page_offset_base", "vmemmap_base"}


@pytest.mark.parametrize("family, length", [("4", 40), ("6", 60)])
def test_a_frame_whose_ip_header_is_in_a_frag_is_read_there_or_counted_unreadable(netns, metrics,
                                                                                  family, length):
    """Frames as the GRO frags path builds them (the linear data ends where
    the IP header begins), dropped by IP before it pulls the header in: read
    from the first frag where the probe can place the direct map, else
    counted in tcpdrop_agent.unreadable, never lost unseen. The device's own
    counter says how many it dropped."""
    m = metrics("--interval", "200ms", "--port", "23950", "--port-tags", "all")
    out = netns.traffic("frames-in-frags", family, 23950, DPORT, COUNT)
    assert int(out["otherhost"]) == int(out["sent"]) == COUNT and int(out["len"]) == length
    syns = dict(sport="23950", dport=str(DPORT), family=family, flags="SYN", reason="OTHERHOST",
                state="NONE")
    if direct_map_named():
        assert m.wait_total(COUNT, **syns) == COUNT
        assert m.total("bytes", **syns) == COUNT * length
        assert m.total("unreadable", "tcpdrop_agent") == 0
    else:
        assert eventually(lambda: m.total("unreadable", "tcpdrop_agent") >= COUNT)
        m.stop()
        assert m.total("unreadable", "tcpdrop_agent") == COUNT
        assert m.total() == 0
