"""Exact in-kernel counts of real drops, as `metrics` emits them."""
import os
import subprocess
import sys
import threading

import pytest

from conftest import TESTS, eventually


pytestmark = pytest.mark.kernel


def test_a_thousand_syns_counted_exactly(netns, metrics):
    m = metrics("--interval", "200ms", "--port", "7300")
    netns.traffic("raw-syns", 7300, 1000, 40000)
    syns = dict(dport="7300", sport="ephemeral", flags="SYN", reason="NO_SOCKET", state="NONE",
                family="4", frame="tcp_v4_rcv")
    assert m.wait_total(1000, **syns) == 1000
    assert m.total("bytes", **syns) == 1000 * 40  # IP + TCP headers, no options
    # Each SYN got a RST back, to a port where no one listens: dropped too.
    assert m.wait_total(1000, sport="7300", flags="RST|ACK", reason="NO_SOCKET") == 1000
    m.stop()
    assert m.total(**syns) == 1000  # and not one more after the last interval


def test_flood_from_random_ports_stays_one_tag_set(netns, metrics):
    m = metrics("--interval", "200ms", "--port", "7301")
    netns.traffic("raw-syns", 7301, 5000)
    assert m.wait_total(5000, dport="7301", flags="SYN") == 5000
    syn_tag_sets = {tuple(sorted(t.items())) for meas, t, f, _ in m.points
                    if meas == "tcpdrop" and t["dport"] == "7301"}
    assert len(syn_tag_sets) == 1 and dict(syn_tag_sets.pop())["sport"] == "ephemeral"
    assert max(f["keys"] for meas, t, f, _ in m.points if meas == "tcpdrop_agent") <= 2


def test_a_full_map_keeps_the_why_and_drops_the_ports(netns, metrics):
    """--max-keys 4 (room for 4 // 8 -> 1 tag set without ports): 20 SYNs from
    20 ports, then 5 over IPv6. The first 4 keep their ports; the other 16
    IPv4 SYNs are counted under one tag set whose ports are "overflow", with
    their reason, flags, state and drop site; the IPv6 ones find that room
    taken too, and are counted without any tag."""
    m = metrics("--interval", "60s", "--port", "7302", "--port-tags", "all", "--max-keys", "4")
    netns.traffic("syns", "127.0.0.1", 7302, 41000, 20)
    netns.traffic("syns", "::1", 7302, 42000, 5)
    assert m.stop() == 0  # one interval, ended here: the maps filled in it
    assert m.total("map_overflow_drops", "tcpdrop_agent") == 5
    assert m.total() == 20
    assert m.total(sport="overflow", dport="overflow", reason="NO_SOCKET", flags="SYN", state="NONE",
                   frame="tcp_v4_rcv", family="4") == 16
    assert m.total("map_portless_drops", "tcpdrop_agent") == 16
    assert netns.counter("TcpOutRsts") == 25  # the kernel refused all 25
    assert max(f["keys"] for meas, t, f, _ in m.points if meas == "tcpdrop_agent") == 4
    assert [l for l in m.stderr if l.startswith("W! ")] == [
        "W! the kernel's table of tag sets is full (4 keys): further drops are counted without "
        "their ports (sport, dport: overflow), beyond those in tcpdrop_agent.map_overflow_drops "
        "only; raise --max-keys, or use --port-tags bucketed\n"]


def test_tag_sets_new_after_a_full_interval_keep_their_ports(netns, metrics):
    """An interval fills the table (--max-keys 64: 200 ports' SYNs and RSTs),
    and a stream from 5 ports, begun in it, goes on into the next ones. Once
    swapped out, the full table's mark must not send the next interval's new
    tag sets, which fit, to the portless room: the mark is its generation's."""
    m = metrics("--interval", "500ms", "--port", "7307", "--port-tags", "all", "--max-keys", "64")
    sent = int(netns.traffic("fill-then-stream", 7307, 200, 5, 2.5)["sent"])
    total = 2 * (200 + sent)  # each SYN, and the RST that answers it
    assert m.wait_total(total) == total == 2 * netns.counter("TcpOutRsts")
    agent = [fields for measurement, _, fields, _ in m.points if measurement == "tcpdrop_agent"]
    full = [i for i, fields in enumerate(agent) if fields["keys"] == 64]  # the fill's intervals
    assert full and agent[full[-1]]["map_portless_drops"] > 0
    after = [fields for fields in agent[full[-1] + 1:] if fields["keys"]]
    assert len(after) >= 2  # the stream's intervals after the fill
    assert [fields["map_portless_drops"] for fields in after] == [0] * len(after)


def test_stacks_give_each_tag_set_an_example(netns, metrics):
    m = metrics("--interval", "200ms", "--port", "7303", "--stacks")
    netns.traffic("raw-syns", 7303, 3, 40000)
    assert m.wait_total(3, dport="7303") == 3
    [stack] = [f["stack"] for meas, t, f, _ in m.points if t.get("dport") == "7303" and "stack" in f]
    assert stack.endswith(";ip_local_deliver_finish;ip_protocol_deliver_rcu;tcp_v4_rcv")


def probe_on_port(port, **settings):
    from telegraf_tcpdrop import host
    from telegraf_tcpdrop.event import ProbeConfig
    from telegraf_tcpdrop.probe import CoreLoader, Probe
    config = ProbeConfig(aggregate=1, other_reasons=1, port=port, **settings)
    config.reason_mask[:] = [2**64 - 1] * 4
    return Probe(CoreLoader(host.probe_object()), config, ("tp_btf",))


def test_more_tag_sets_than_one_batch_are_taken_whole_and_summed_over_cpus(netns):
    """1,500 tag sets (> one batch of 1024 keys), each dropped once on every
    CPU: take_counts() sums each key's per-CPU counts, batch after batch."""
    cpus = os.cpu_count()
    with probe_on_port(7304, port_tags=1) as probe:
        for cpu in range(cpus):
            netns.traffic("syns", "127.0.0.1", 7304, 41000, 1500, cpu=cpu)
        counts = probe.take_counts()
        assert len(counts) == 1500
        assert {drops for drops, _ in counts.values()} == {cpus}
        [syn_bytes] = {nbytes for _, nbytes in counts.values()}
        assert syn_bytes % cpus == 0 and syn_bytes // cpus >= 40  # IP + TCP headers at least
        assert probe.take_counts() == {}


def test_hot_slots_count_exactly_and_are_emptied_when_taken(netns):
    """A storm's few tag sets are counted in per-CPU hot slots, after their
    first drop in the map; a take empties both."""
    import ctypes
    from telegraf_tcpdrop.event import HOT_SLOTS, HotSlot

    def claimed(probe, generation):
        slots, fd = (HotSlot * probe.ncpus)(), probe._fds[f"hot_{generation}"]
        held = []
        for index in range(HOT_SLOTS):
            probe._lib.bpf_map_lookup_elem(fd, ctypes.byref(ctypes.c_uint32(index)), slots)
            held += [(slot.key.flags, slot.count.drops) for slot in slots if slot.claimed]
        return sorted(held)

    with probe_on_port(7305, ephemeral_low=32768, ephemeral_high=60999) as probe:
        netns.traffic("raw-syns", 7305, 300, cpu=0)  # one CPU: one slot per key
        held = claimed(probe, "a")  # SYN's and RST|ACK's, unless their slots collide
        assert held in ([(0x02, 299), (0x14, 299)], [(0x02, 299)], [(0x14, 299)])  # but the first
        assert sorted(probe.take_counts().values()) == [(300, 300 * 40)] * 2
        assert claimed(probe, "a") == [] and probe.take_counts() == {}
        netns.traffic("raw-syns", 7305, 5, cpu=0)  # now in generation a again
        assert sorted(probe.take_counts().values()) == [(5, 5 * 40)] * 2


def test_skipped_runs_of_the_listen_queue_programs_are_no_drops_missed(netns, metrics):
    """consume_skb()'s program runs for every packet freed as normal. Here it
    runs in process context on CPU 0 (a raw socket reading ICMP copies) while
    RPS makes CPU 0's softirq answer echo requests sent from CPU 1, freeing
    each with consume_skb() too: the kernel skips the program's run nested in
    its own. No drop is lost by that: listen_misses, not probe_misses."""
    netns.sh("sh", "-c", "echo 1 > /sys/class/net/lo/queues/rx-0/rps_cpus")  # CPU 0
    m = metrics("--interval", "500ms")
    assert "listen-queue drops: tracepoints" in m.stderr[-1]
    readers = [threading.Thread(target=netns.traffic, args=(kind, 8), kwargs={"cpu": cpu})
               for kind, cpu in (("icmp-copies", 0), ("echo-requests", 1))]
    for reader in readers:
        reader.start()
    missed = eventually(lambda: m.total("listen_misses", "tcpdrop_agent"), timeout=12)
    for reader in readers:
        reader.join()
    assert missed > 0, "no nested run to skip: the test made none"
    m.stop()
    assert m.total("probe_misses", "tcpdrop_agent") == 0


def test_a_drop_whose_handling_interrupts_another_is_counted_as_a_miss_where_the_probe_guards(netns):
    """Before 6.1 the kernel runs tp_btf nested: a drop in a softirq that
    interrupted the handling of another on its CPU. The probe then guards
    itself (forced on here, where the kernel would not nest): a drop that
    finds the guard held, as that softirq's would, is not counted by tag set,
    whose counts the interrupted run is writing, but as a skipped run; once
    released, drops count by tag set again."""
    import ctypes
    from telegraf_tcpdrop.event import COUNTER_NESTED

    def hold(probe, value):  # a per-CPU __u32 takes 8 bytes a CPU from user space
        values, zero = (ctypes.c_uint64 * probe.ncpus)(*[value] * probe.ncpus), ctypes.c_uint32(0)
        assert probe._lib.bpf_map_update_elem(probe._fds["running"], ctypes.byref(zero), values, 0) == 0

    with probe_on_port(7306, guard_nesting=1, ephemeral_low=32768, ephemeral_high=60999) as probe:
        assert probe.nested_runs == "skipped by the probe"
        hold(probe, 1)
        netns.traffic("raw-syns", 7306, 5)  # each SYN and the RST|ACK refusing it: 10 drops
        assert (probe.take_counts(), probe.counters()[COUNTER_NESTED]) == ({}, 10)
        hold(probe, 0)
        netns.traffic("raw-syns", 7306, 5)
        assert sorted(probe.take_counts().values()) == [(5, 5 * 40)] * 2
        assert probe.counters()[COUNTER_NESTED] == 10


def test_the_kernel_skips_nested_runs_itself_from_6_1(netns):
    """This kernel has bpf_prog_inc_misses_counter (6.1+): no guard in the probe."""
    with probe_on_port(7307) as probe:
        assert (probe.config.guard_nesting, probe.nested_runs) == (0, "skipped by the kernel")


STRESS_SECONDS = float(os.environ.get("TCPDROP_STRESS_SECONDS", "60"))


def test_counts_stay_exact_while_tag_sets_churn_on_every_cpu(netns, metrics):
    """Tag sets come and go on every CPU, more than the map holds in an
    interval, half of them idle for phases about as long as the 30 intervals
    after which a tag set's tags are let go, while the maps are swapped every
    100 ms: every drop is counted once, in a tag set or as overflow, and the
    kernel's own count of RSTs agrees."""
    m = metrics("--interval", "100ms", "--port", "7307", "--port-tags", "all", "--max-keys", "300")
    senders = [subprocess.Popen(["ip", "netns", "exec", netns.name, "taskset", "-c", str(cpu),
                                 sys.executable, str(TESTS / "traffic.py"), "syn-churn", "7307",
                                 str(STRESS_SECONDS), "400", "3.05"], stdout=subprocess.PIPE, text=True)
               for cpu in range(os.cpu_count())]
    sent = sum(int(s.communicate(timeout=STRESS_SECONDS + 60)[0].split("=")[1]) for s in senders)
    assert netns.counter("TcpOutRsts") == sent  # each SYN got its RST
    expected = 2 * sent  # the SYN, and the RST, which no socket takes either

    def counted():
        return m.total() + m.total("map_overflow_drops", "tcpdrop_agent")
    eventually(lambda: counted() >= expected, timeout=10)
    m.stop()
    portless = m.total(sport="overflow")
    overflow = m.total("map_overflow_drops", "tcpdrop_agent")
    assert counted() == expected and 0 < portless < expected and overflow == 0, \
        (sent, m.total(), portless, overflow)
