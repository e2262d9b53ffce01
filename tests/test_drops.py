"""Real drops, caused in network namespaces, as `trace --json` reports them."""
import pytest

pytestmark = pytest.mark.kernel


def function(frame):
    return frame.split("+")[0]


@pytest.mark.parametrize("host, rcv", [("127.0.0.1", "tcp_v4_rcv"), ("::1", "tcp_v6_rcv")])
def test_syn_to_closed_port(tracer, netns, host, rcv):
    netns.traffic("syn", host, 9, 40001)
    [drop] = tracer.wait_for(netns, dport=9)
    assert drop["family"] == (6 if ":" in host else 4)
    assert (drop["saddr"], drop["sport"], drop["daddr"], drop["dport"]) == (host, 40001, host, 9)
    assert (drop["state"], drop["flags"], drop["reason"]) == ("NONE", "SYN", "NO_SOCKET")
    assert function(drop["location"]) == rcv
    assert drop["stack"][0] == drop["location"]  # no BPF or tracing frames above the drop site
    assert drop["len"] == (40 if ":" in host else 20) + 32  # the IP packet: its header, the SYN's TCP header with options
    assert drop["comm"] and drop["pid"] > 0


@pytest.mark.parametrize("kind, host", [("syn-with-ip-options", "127.0.0.1"),
                                        ("syn-with-ipv6-extensions", "::1")])
def test_tcp_header_found_behind_ip_options_and_ipv6_extension_headers(tracer, netns, kind, host):
    netns.traffic(kind, 9, 40004)
    [drop] = tracer.wait_for(netns, dport=9)
    assert (drop["saddr"], drop["sport"], drop["daddr"]) == (host, 40004, host)
    assert (drop["state"], drop["flags"], drop["reason"]) == ("NONE", "SYN", "NO_SOCKET")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_netfilter_drop(tracer, netns, host):
    netns.drop_input_port(8080)
    netns.traffic("syn", host, 8080, 40002, 0.3)
    drops = tracer.wait_for(netns, dport=8080)
    assert drops, [(e["sport"], e["flags"], e["reason"]) for e in tracer.events_in(netns)]
    for drop in drops:
        assert (drop["saddr"], drop["sport"], drop["daddr"]) == (host, 40002, host)
        assert (drop["state"], drop["flags"], drop["reason"]) == ("NONE", "SYN", "NETFILTER_DROP")
        # nf_hook_slow() drops on NF_DROP; nftables drops itself since 6.x.
        assert function(drop["location"]) in ("nft_do_chain", "nf_hook_slow")


def test_old_segment_on_established_connection(tracer, netns):
    sport = int(netns.traffic("old-segment", 7000)["sport"])
    [drop] = tracer.wait_for(netns, dport=7000, sport=sport, reason="TCP_OLD_SEQUENCE")
    assert (drop["state"], drop["flags"]) == ("ESTABLISHED", "PSH|ACK")
    assert drop["len"] == 20 + 20 + 10  # IP and TCP headers and the stale payload
    assert function(drop["location"]) == "tcp_validate_incoming"


def test_full_listen_backlog(tracer, netns):
    clients = {int(port) for port in netns.traffic("listen-overflow", 7001)["sports"].split(",")}
    drops = tracer.wait_for(netns, dport=7001, reason="TCP_LISTEN_OVERFLOW")
    assert drops, [(e["sport"], e["flags"], e["reason"]) for e in tracer.events_in(netns)]
    assert {(d["state"], d["flags"]) for d in drops} == {("LISTEN", "PSH|ACK")}
    assert len({d["sport"] for d in drops}) == 1 and drops[0]["sport"] in clients
    assert function(drops[0]["location"]) == "tcp_v4_rcv"
    assert netns.counter("TcpExtListenOverflows") >= 1


def test_udp_and_icmp_drops_are_not_reported(tracer, netns):
    netns.traffic("udp", "127.0.0.1", 9)
    netns.traffic("udp", "::1", 9)
    netns.traffic("icmp-bad-checksum")
    # The kernel did drop them...
    assert netns.counter("UdpNoPorts") == 1 and netns.counter("Udp6NoPorts") == 1
    assert netns.counter("IcmpInCsumErrors") == 1
    # ...and a TCP drop after them shows the tracer had caught up past them.
    netns.traffic("syn", "127.0.0.1", 9, 40003)
    assert tracer.wait_for(netns, dport=9, reason="NO_SOCKET")
    assert [(e["sport"], e["dport"]) for e in tracer.events_in(netns)] == [(40003, 9)]
