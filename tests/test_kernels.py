"""The kernel matrix: Debian's 6.12 (Debian 13's: rx_sk), 6.1 (drop reasons,
no rx_sk) and 5.10 (no drop reasons at all), booted under QEMU with the
host's files (tests/peers/kernel_vm.py). In each VM the backends run at
once, CO-RE (on tp_btf, and on the classic tracepoint) and bcc (the classic
tracepoint; chosen by `--backend auto` with the kernel's BTF hidden), each
as `trace` and as `metrics`, and the scenarios of test_drops.py run once
(tests/guest_scenarios.py): the same packets, seen by all. Not bcc on 6.12:
this machine's bcc (Debian 12's 0.26) cannot compile against 6.12's headers
(their bpf.h needs struct bpf_wq and more it does not know), and on Debian
13, whose kernel has BTF, the CO-RE backend is the one that runs.
Slow: a VM boots in 12-19 s, bcc compiles for 30-60 s under emulation.
"""
import json
import sys
from pathlib import Path

import pytest

from conftest import require_root

sys.path.insert(0, str(Path(__file__).parent / "peers"))
import kernel_vm  # noqa: E402

# In the order written, under random order too: its tests share each VM's run
# (a module fixture per kernel), which a shuffle would boot again and again.
pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.random_order(disabled=True)]
TESTS = Path(__file__).parent
# run name: (hook, backend)
BACKENDS = {"core": ("tp_btf/kfree_skb", "core"),
            "core-tracepoint": ("tracepoint/skb/kfree_skb", "core"),
            "bcc": ("tracepoint/skb/kfree_skb", "bcc")}
KERNELS = ("6.12", "6.1", "5.10")
WITH_BCC = ("6.1", "5.10")  # see above


def backends(kernel):
    return [name for name in BACKENDS if name != "bcc" or kernel in WITH_BCC]


# What user space adds to an event when it reads it: each run reads it at its
# own time, and a namespace deleted by then has lost its name.
USER_SPACE = ("time", "netns_name")
LISTEN_SITES = ("tcp_conn_request", "tcp_rcv_state_process")  # of the SYNs listeners refuse
# What each scenario's drops look like, per kernel: (family, saddr, sport,
# daddr, dport, state, flags, reason, drop site). The socket's state is NONE
# for received packets before 6.11: the tracepoint has no rx_sk and the skb
# no socket yet. 5.10 names no reasons, and its tcp_drop() frees with
# __kfree_skb(), which has no tracepoint: those drops are not seen at all.
NO_SOCKET = {"6.12": "NO_SOCKET", "6.1": "NO_SOCKET", "5.10": "UNKNOWN"}
NETFILTER_DROP = {"6.12": "NETFILTER_DROP", "6.1": "NETFILTER_DROP", "5.10": "UNKNOWN"}
EXPECTED = {
    "syn4": lambda k, s: {(4, "127.0.0.1", 40001, "127.0.0.1", 9, "NONE", "SYN", NO_SOCKET[k], "tcp_v4_rcv")},
    "syn6": lambda k, s: {(6, "::1", 40001, "::1", 9, "NONE", "SYN", NO_SOCKET[k], "tcp_v6_rcv")},
    # The SYN, and the RST that answers it, to a port the raw socket never bound.
    "ip-options": lambda k, s: {(4, "127.0.0.1", 40004, "127.0.0.1", 9, "NONE", "SYN", NO_SOCKET[k], "tcp_v4_rcv"),
                                (4, "127.0.0.1", 9, "127.0.0.1", 40004, "NONE", "RST|ACK", NO_SOCKET[k], "tcp_v4_rcv")},
    "ipv6-extensions": lambda k, s: {(6, "::1", 40004, "::1", 9, "NONE", "SYN", NO_SOCKET[k], "tcp_v6_rcv"),
                                     (6, "::1", 9, "::1", 40004, "NONE", "RST|ACK", NO_SOCKET[k], "tcp_v6_rcv")},
    "netfilter4": lambda k, s: {(4, "127.0.0.1", 40002, "127.0.0.1", 8080, "NONE", "SYN",
                                 NETFILTER_DROP[k], "nf_hook_slow")},
    "netfilter6": lambda k, s: {(6, "::1", 40002, "::1", 8080, "NONE", "SYN",
                                 NETFILTER_DROP[k], "nf_hook_slow")},
    # 6.12: rx_sk names the socket it reached, and the reason is finer.
    "old-segment": lambda k, s: {
        "6.12": {(4, "127.0.0.1", int(s["sport"]), "127.0.0.1", 7000, "ESTABLISHED", "PSH|ACK",
                  "TCP_OLD_SEQUENCE", "tcp_validate_incoming")},
        "6.1": {(4, "127.0.0.1", int(s["sport"]), "127.0.0.1", 7000, "NONE", "PSH|ACK",
                 "TCP_INVALID_SEQUENCE", "tcp_validate_incoming")},
        "5.10": set()}[k],
}


def in_vm(kernel, script, options="", smp="2"):
    """What tests/SCRIPT, run in a VM of that kernel, wrote as its JSON results."""
    require_root()
    out = kernel_vm.CACHE / "vm-out" / f"{Path(script).stem}-{kernel}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    code, output = kernel_vm.run(kernel, f"cd {TESTS} && {sys.executable} {script} {out}{options}",
                                 timeout=1500, smp=smp)
    assert code == 0 and out.exists(), output[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module", params=KERNELS)
def guest(request):
    """The kernel series and what tests/guest_scenarios.py saw in its VM."""
    kernel = request.param
    return kernel, in_vm(kernel, "guest_scenarios.py", "" if kernel in WITH_BCC else " --no-bcc")


def events(result, backend):
    return [json.loads(line) for line in result["runs"][f"{backend} trace"]["stdout"]]


def drop(event):
    return (event["family"], event["saddr"], event["sport"], event["daddr"], event["dport"],
            event["state"], event["flags"], event["reason"], event["location"].split("+")[0])


# What the monitor says it cannot see on each kernel, after it attached.
UNSEEN = {"6.12": [], "6.1": [], "5.10": ["W! drops in tcp_drop() not seen: it frees with __kfree_skb(), and it is inlined\n"]}


def attached(run):
    """The monitor's start-up line."""
    return next(line for line in run["stderr"] if line.startswith("I! attached to "))


def test_each_backend_starts_on_its_hook(guest):
    kernel, result = guest
    assert result["kernel"].startswith(f"{kernel}.")
    assert sorted(result["runs"]) == sorted(f"{name} {command}" for name in backends(kernel)
                                            for command in ("trace", "metrics"))
    for name in backends(kernel):
        hook, backend = BACKENDS[name]
        for command in ("trace", "metrics"):
            run = result["runs"][f"{name} {command}"]
            assert run["exit"] == 0, run["stderr"]
            assert f"I! attached to {hook} ({backend}) in " in attached(run)
            # the kernel skips a nested tp_btf run from 6.1 (bpf_prog_inc_misses_counter)
            guard = hook == "tp_btf/kfree_skb" and kernel == "5.10"
            assert attached(run).endswith(f"; nested runs: skipped by the {'probe' if guard else 'kernel'}\n")
            assert [line for line in run["stderr"] if not line.startswith("I! ")] == UNSEEN[kernel]


def refused_syn(event):
    """A SYN a listener refused: the CO-RE backend's fentry/fexit sees those, bcc does not."""
    return event["state"] == "LISTEN" and event["location"].split("+")[0] in LISTEN_SITES


def test_all_backends_report_the_same_drops_byte_for_byte(guest):
    kernel, result = guest
    traced = [{json.dumps({k: v for k, v in e.items() if k not in USER_SPACE}, sort_keys=True)
               for e in events(result, name) if name != "bcc" or not refused_syn(e)}
              for name in backends(kernel)]
    refused = {json.dumps({k: v for k, v in e.items() if k not in USER_SPACE}, sort_keys=True)
               for e in events(result, "core") if refused_syn(e)}
    assert refused and traced[0] == traced[1] and len(traced[0]) >= 12
    # line protocol, but for the timestamp
    counted = [sorted(line.rsplit(" ", 1)[0] for line in result["runs"][f"{name} metrics"]["stdout"]
                      if line.startswith("tcpdrop,")) for name in backends(kernel)]
    assert counted[0] == counted[1] and counted[0]
    if kernel in WITH_BCC:  # which sees all but the refused SYNs, and what is in frags
        in_frags = {json.dumps({k: v for k, v in e.items() if k not in USER_SPACE}, sort_keys=True)
                    for e in events(result, "core") if e["netns"] in frag_namespaces(result)}
        assert traced[0] == traced[2] | refused | in_frags
        assert counted[2] == [line for line in counted[0]
                              if not any(f"frame={site}," in line for site in LISTEN_SITES) and
                              not any(f"netns={inode}," in line for inode in frag_namespaces(result))]
    # and the counts in the kernel match the events one by one (every event: a
    # refused SYN's retransmit can be the same as the SYN to the last field)
    assert sum(int(line.split(" drops=")[1].split("i")[0]) for line in counted[0]) == \
        len(events(result, "core"))


@pytest.mark.parametrize("scenario, port", [("listen-full4", 7010), ("listen-full6", 7011),
                                            ("syn-queue-full", 7012)])
def test_refused_syns_equal_the_namespaces_listen_drops(guest, scenario, port):
    """fentry/fexit around tcp_rcv_state_process() on these kernels: the SYNs
    a listener refused, counted as exactly as the kernel's ListenDrops; bcc
    says it does not see them."""
    kernel, result = guest
    seen = result["scenarios"][scenario]
    reason = "syn-queue-full" if scenario == "syn-queue-full" else "listen-overflow"  # no reason in <6.9
    assert seen["TcpExtListenDrops"] >= 18
    for backend in ("core", "core-tracepoint"):
        refused = [e for e in events(result, backend) if e["netns"] == seen["netns"] and refused_syn(e)]
        assert len(refused) == seen["TcpExtListenDrops"], backend
        assert {(e["dport"], e["flags"], e["reason"], e["location"]) for e in refused} == {
            (port, "SYN", reason, "tcp_conn_request+0x0")}
        run = result["runs"][f"{backend} metrics"]
        assert "listen-queue drops: fentry/fexit on tcp_rcv_state_process" in attached(run)
        assert sum(int(line.split(" drops=")[1].split("i")[0]) for line in run["stdout"]
                   if f"dport={port}," in line and "state=LISTEN" in line) == seen["TcpExtListenDrops"]
    if kernel in WITH_BCC:
        assert not [e for e in events(result, "bcc") if e["netns"] == seen["netns"] and refused_syn(e)]
        assert "listen-queue drops: not seen by the bcc backend" in attached(result["runs"]["bcc metrics"])


def scenario_drops(result, backend, scenario):
    seen = result["scenarios"][scenario]
    if scenario == "old-segment":
        # A received segment dropped inside TCP has no device and, before
        # 6.11, no socket: no netns either. Its ports tell it.
        return {drop(e) for e in events(result, backend)
                if (e["sport"], e["dport"]) == (int(seen["sport"]), 7000)}
    return {drop(e) for e in events(result, backend) if e["netns"] == seen["netns"]}


def check_scenario(kernel, result, names, scenario):
    """Each named run saw exactly the scenario's drops on this kernel (also test_arm64.py)."""
    expected = EXPECTED[scenario](kernel, result["scenarios"][scenario])
    for name in names:
        found = scenario_drops(result, name, scenario)
        if scenario.startswith("netfilter"):  # nftables drops itself from 6.x on
            found = {d[:-1] + ("nf_hook_slow",) if d[-1] == "nft_do_chain" else d for d in found}
        assert found == expected, (name, found)


def check_listen_overflow(kernel, result, names):
    """Before 6.x there is no TCP_LISTEN_OVERFLOW reason, and before 6.11 no
    socket state on receive: the drop site and the flags tell it (and nstat's
    ListenOverflows). 6.12 charges the drop to the listener (rx_sk): LISTEN."""
    clients = {int(port) for port in result["scenarios"]["listen-overflow"]["sports"].split(",")}
    reason = {"6.12": "NOT_SPECIFIED", "6.1": "NOT_SPECIFIED", "5.10": "UNKNOWN"}[kernel]
    state = {"6.12": "LISTEN", "6.1": "NONE", "5.10": "NONE"}[kernel]
    for name in names:
        found = scenario_drops(result, name, "listen-overflow")
        overflow = [d for d in found if d[2] in clients and (d[5], d[6]) == (state, "PSH|ACK")]
        assert overflow, found
        assert {d[:2] + d[3:] for d in overflow} == {
            (4, "127.0.0.1", "127.0.0.1", 7001, state, "PSH|ACK", reason, "tcp_v4_rcv")}


def check_udp_and_icmp_unreported(result, names):
    """The kernel dropped them (its own counters rose), and no hook reports them."""
    dropped = {"udp4": "UdpNoPorts", "udp6": "Udp6NoPorts", "icmp": "IcmpInCsumErrors"}
    assert {name: result["scenarios"][name][counter] >= 1 for name, counter in dropped.items()} == \
        dict.fromkeys(dropped, True)
    quiet = {result["scenarios"][name]["netns"] for name in dropped}
    for name in names:
        assert not [e for e in events(result, name) if e["netns"] in quiet]


@pytest.mark.parametrize("scenario", EXPECTED)
def test_every_backend_reports_each_scenarios_drops_exactly(guest, scenario):
    kernel, result = guest
    check_scenario(kernel, result, backends(kernel), scenario)


def test_listen_overflow_is_seen_at_tcp_v4_rcv(guest):
    kernel, result = guest
    check_listen_overflow(kernel, result, backends(kernel))


FRAGS = {"frags4": (4, "10.99.0.1", "10.99.0.2"), "frags6": (6, "fd99::1", "fd99::2")}


def frag_namespaces(result):
    return {result["scenarios"][name]["netns"] for name in FRAGS}


def test_frames_whose_ip_header_is_in_a_frag_are_read_there(guest):
    """Frames built as the GRO frags path builds them, dropped by IP before it
    pulls the header in (OTHERHOST): where kallsyms places the direct map
    (Debian's kernels: CONFIG_KALLSYMS_ALL), the CO-RE backend reads the
    headers from the first frag, exactly; bcc, which does not, counts them
    in tcpdrop_agent.unreadable."""
    kernel, result = guest
    for name, (family, saddr, daddr) in FRAGS.items():
        seen = result["scenarios"][name]
        assert seen["otherhost"] == ("-" if kernel == "5.10" else "3") and seen["sent"] == "3"  # 5.19+
        reason = "UNKNOWN" if kernel == "5.10" else "OTHERHOST"
        for backend in ("core", "core-tracepoint"):
            found = [drop(e) for e in events(result, backend) if e["netns"] == seen["netns"]]
            assert len(found) == 3, (backend, found)
            assert {d[:-1] for d in found} == {(family, saddr, 23950, daddr, 9, "NONE", "SYN", reason)}
    for backend in backends(kernel):
        agent = [line for line in result["runs"][f"{backend} metrics"]["stdout"]
                 if line.startswith("tcpdrop_agent")]
        unreadable = sum(int(line.split("unreadable=")[1].split("i")[0]) for line in agent)
        assert unreadable == (6 if backend == "bcc" else 0), backend


def test_udp_and_icmp_drops_are_not_reported(guest):
    kernel, result = guest
    check_udp_and_icmp_unreported(result, backends(kernel))


def test_tcp_drop_is_no_symbol_and_its_kprobe_says_so(guest):
    """Debian's 5.10 inlines tcp_drop(); 6.1 and 6.12 have none (gone in 5.19)."""
    _, result = guest
    assert result["tcp_drop_symbol"] is False
    assert result["kprobe"]["exit"] == 1
    assert result["kprobe"]["stderr"].startswith("E! no hook could be attached (kprobe/tcp_drop: ")
    assert "failed to create kprobe 'tcp_drop+0x0'" in result["kprobe"]["stderr"]


# The listen counters' rises, wherever the kernel raises them (tests/guest_listen.py).
# 6.12 also runs LISTEN_CHAIN (tracepoints; it has fentry, which it would
# choose), booted with 16 CPUs: the readings of a thousand namespaces on each
# must fit. (Debian 12's qemu gives hotplug CPUs no MADT flag 6.12 takes, and
# boots no more than 16 here under emulation.)
CHAIN_KERNEL, CHAIN_CPUS, CHAIN_NAMESPACES = "6.12", 16, 1100


@pytest.fixture(scope="module", params=("6.12", "6.1"))
def listen_guest(request):
    kernel = request.param
    if kernel == CHAIN_KERNEL:
        return kernel, in_vm(kernel, "guest_listen.py", f" --chain {CHAIN_NAMESPACES}", str(CHAIN_CPUS))
    return kernel, in_vm(kernel, "guest_listen.py")


def test_audit_pairs_every_rise_of_the_listen_counters(listen_guest):
    """Refused SYNs, the handshake's last ACK and cookies' ACKs on a full
    queue, ICMP errors that abort requests: where fentry brackets each call
    that may raise ListenDrops, audit finds the kernel's counters and the
    probe's readings equal."""
    kernel, result = listen_guest
    audit = result["audit"]
    rows = {(row["netns_inode"], row["counter"]): row for row in audit["rows"]}
    for inode in result["namespaces"].values():
        for counter in ("TcpExtListenDrops", "TcpExtListenOverflows"):
            row = rows[inode, counter]
            assert row["kernel"] == row["monitor"] > 0, row
    cookies = result["namespaces"]["cookies"]
    assert rows[cookies, "TcpExtListenOverflows"]["kernel"] == 4
    assert audit["exit"] == 0, audit["stderr"]
    assert any("listen-queue drops: fentry/fexit on tcp_rcv_state_process, tcp_check_req, "
               "cookie_v4_check, cookie_v6_check, tcp_req_err;" in line for line in audit["stderr"])


def chain_lines(result, **tags):
    """The drops of the LISTEN_CHAIN run's tcpdrop lines whose tags include these."""
    found = 0
    for line in result["chain"]["stdout"]:
        if line.startswith("tcpdrop,") and all(f"{k}={v}" in line.split(" ")[0].split(",")
                                               for k, v in tags.items()):
            found += int(line.split(" drops=")[1].split("i")[0])
    return found


def test_cookies_refused_acks_by_tracepoints_make_no_phantom_syn(listen_guest):
    kernel, result = listen_guest
    if kernel != CHAIN_KERNEL:
        pytest.skip(f"LISTEN_CHAIN needs skb:kfree_skb's rx_sk (6.11+): tested on {CHAIN_KERNEL}")
    run, seen = result["chain"], result["chain_cookies"]
    assert run["exit"] == 0, run["stderr"]
    assert "listen-queue drops: tracepoints" in attached(run)
    netns = seen["netns"]
    assert chain_lines(result, netns=netns, state="LISTEN", flags="SYN") == 0
    assert chain_lines(result, netns=netns, state="LISTEN", flags="ACK", reason="NO_SOCKET",
                       frame="cookie_v4_check") == seen["TcpExtListenOverflows"] == 4


def test_every_cpus_readings_fit_on_a_large_host(listen_guest):
    """16 CPUs, 1,100 namespaces whose listeners all listen before any
    refuses a SYN: each namespace's "before" on every CPU is kept (16,384
    readings, before, held 1,024 such namespaces), so every refusal is
    counted, and none goes untracked."""
    kernel, result = listen_guest
    if kernel != CHAIN_KERNEL:
        pytest.skip(f"LISTEN_CHAIN needs skb:kfree_skb's rx_sk (6.11+): tested on {CHAIN_KERNEL}")
    assert result["possible_cpus"] == f"0-{CHAIN_CPUS - 1}"
    namespaces = {int(name.removeprefix("ns")): int(drops)
                  for name, drops in result["many_listeners"].items()}
    assert len(namespaces) == CHAIN_NAMESPACES and all(drops >= 3 for drops in namespaces.values())
    counted = {inode: chain_lines(result, netns=inode, state="LISTEN", flags="SYN") for inode in namespaces}
    assert {inode: drops for inode, drops in counted.items() if drops != namespaces[inode]} == {}
    agent = [line for line in result["chain"]["stdout"] if line.startswith("tcpdrop_agent")]
    assert sum(int(line.split("listen_untracked=")[1].split("i")[0]) for line in agent) == 0
