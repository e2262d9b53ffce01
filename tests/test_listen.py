"""Listen-queue drops: SYNs a listener refuses, which no drop tracepoint sees,
counted exactly against the kernel's own ListenDrops (nstat)."""
import subprocess
import sys
import threading

import pytest

from conftest import LISTEN_COUNTERS, as_nobody_with, eventually

pytestmark = pytest.mark.kernel

def settled(netns, m, port, timeout=10.0):
    """The namespace's listen counters, once the monitor's LISTEN drops on
    port have caught up with ListenDrops (or timeout)."""
    def caught_up():
        kernel = {name: netns.counter(name) for name in LISTEN_COUNTERS}
        return kernel if m.total(state="LISTEN", dport=str(port)) == kernel["TcpExtListenDrops"] else None
    return eventually(caught_up, timeout) or {name: netns.counter(name) for name in LISTEN_COUNTERS}


@pytest.mark.parametrize("cookies", [1, 0])
@pytest.mark.parametrize("host, family", [("127.0.0.1", "4"), ("::1", "6")])
def test_syns_refused_by_a_full_accept_queue_equal_listen_drops(netns, metrics, host, family, cookies):
    netns.sh("sysctl", "-qw", f"net.ipv4.tcp_syncookies={cookies}")
    m = metrics("--interval", "200ms", "--port", "7400")
    netns.traffic("listen-full", host, 7400, 30)
    kernel = settled(netns, m, 7400)
    assert kernel["TcpExtListenDrops"] >= 28  # the SYNs past the first two, at least once each
    assert m.total(state="LISTEN", dport="7400") == kernel["TcpExtListenDrops"]
    assert m.total(state="LISTEN", dport="7400", flags="SYN", family=family, sport="ephemeral",
                   reason="TCP_LISTEN_OVERFLOW", frame="tcp_conn_request") == kernel["TcpExtListenDrops"]
    assert kernel["TcpExtListenOverflows"] == kernel["TcpExtListenDrops"]
    m.stop()
    assert m.total(state="LISTEN", dport="7400") == kernel["TcpExtListenDrops"]  # not one more


def test_syns_refused_by_a_full_syn_queue_without_cookies(netns, metrics):
    netns.fill_syn_queue()
    m = metrics("--interval", "200ms", "--port", "7401")
    netns.traffic("syn-queue-full", 7401, 50)
    kernel = settled(netns, m, 7401)
    assert kernel["TcpExtTCPReqQFullDrop"] >= 40
    assert kernel["TcpExtListenDrops"] == kernel["TcpExtTCPReqQFullDrop"]
    assert m.total(state="LISTEN", dport="7401", reason="syn-queue-full",
                   frame="tcp_conn_request") == kernel["TcpExtListenDrops"]


def test_exact_with_syns_on_every_cpu_at_once(netns, metrics):
    """Clients on each CPU at once: the listener handles SYNs on both CPUs in
    parallel, each CPU's counters read on their own."""
    m = metrics("--interval", "200ms", "--port", "7402")
    server = subprocess.Popen(["ip", "netns", "exec", netns.name, sys.executable, "-c",
                               "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 7402)); "
                               "s.listen(4); print(flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    server.stdout.readline()  # listening
    clients = [threading.Thread(target=netns.traffic, args=("connect-storm", "127.0.0.1", 7402, 150),
                                kwargs={"cpu": cpu}) for cpu in (0, 1)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    server.communicate("")
    kernel = settled(netns, m, 7402)
    assert kernel["TcpExtListenDrops"] > 100
    assert m.total(state="LISTEN", dport="7402") == kernel["TcpExtListenDrops"]
    assert m.total(state="LISTEN", dport="7402", flags="SYN") > 0


def test_a_handshake_completing_onto_a_full_queue_is_one_drop(netns, metrics):
    """Its segment is dropped with a drop reason (the kfree_skb hook sees it)
    and counted in ListenDrops: once, and not also taken for a refused SYN."""
    m = metrics("--interval", "200ms", "--port", "7404")
    netns.traffic("listen-overflow", 7404)
    overflow = dict(state="LISTEN", dport="7404", reason="TCP_LISTEN_OVERFLOW", frame="tcp_v4_rcv")
    assert eventually(lambda: m.total(**overflow) == netns.counter("TcpExtListenDrops") > 0)
    assert m.total(flags="PSH|ACK", **overflow) == m.total(**overflow)  # the data that completes it
    assert m.total(state="LISTEN", dport="7404", frame="tcp_conn_request") == 0
    assert m.total(state="LISTEN", dport="7404", frame="tcp_rcv_state_process") == 0


def test_refused_cookie_acks_are_drops_and_no_accepted_syn_is_taken_for_one(netns, metrics):
    """Syncookies on: ACKs answering cookies that find the accept queue full
    are refused (ListenOverflows rises) and dropped by kfree_skb(), charged to
    the listener. Connections then accepted on the same CPU: none of their
    SYNs may be taken for a refused one (a rise read at the wrong packet)."""
    netns.sh("sysctl", "-qw", "net.ipv4.tcp_syncookies=2")
    m = metrics("--interval", "200ms", "--port", "7406")
    netns.traffic("cookie-acks", 7406, 5, 5, cpu=0)
    acks = dict(state="LISTEN", dport="7406", flags="ACK", reason="NO_SOCKET", frame="cookie_v4_check")
    assert m.wait_total(5, **acks) == 5
    overflows = netns.counter("TcpExtListenOverflows")
    m.stop()
    assert m.total(state="LISTEN", dport="7406", flags="SYN") == 0
    assert m.total(state="LISTEN", dport="7406", flags="SYN") + m.total(**acks) == overflows == 5
    assert netns.counter("TcpExtListenDrops") == 5


def test_trace_shows_a_refused_syn_with_its_addresses(tracer, netns):
    netns.traffic("listen-full", "::1", 7403, 3, 0.3)
    drops = tracer.wait_for(netns, dport=7403, state="LISTEN")
    assert drops
    for drop in drops:
        assert (drop["family"], drop["saddr"], drop["daddr"], drop["flags"]) == (6, "::1", "::1", "SYN")
        assert drop["reason"] == "TCP_LISTEN_OVERFLOW" and drop["location"] == "tcp_conn_request+0x0"
        assert drop["stack"][0].startswith("tcp_rcv_state_process+")


def test_the_monitor_says_how_it_sees_them(metrics):
    m = metrics("--interval", "1s")
    assert "listen-queue drops: tracepoints skb:consume_skb, skb:kfree_skb and syscalls:sys_enter_listen" in m.stderr[-1]


def test_as_telegrafs_user_where_tracefs_is_closed(netns, metrics):
    """With only CAP_BPF, CAP_PERFMON and CAP_SYSLOG (the package's drop-in),
    tracefs (root's alone) cannot be read: listen(2)'s tracepoint cannot be
    attached, and the socket's state change stands in, as exactly."""
    m = metrics("--interval", "200ms", "--port", "7405",
                prefix=as_nobody_with("bpf", "perfmon", "syslog"))
    assert "listen-queue drops: tracepoints skb:consume_skb, skb:kfree_skb and " \
           "sock:inet_sock_set_state" in m.stderr[-1]
    netns.traffic("listen-full", "127.0.0.1", 7405, 20)
    kernel = settled(netns, m, 7405)
    assert m.total(state="LISTEN", dport="7405") == kernel["TcpExtListenDrops"] >= 18
