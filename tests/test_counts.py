"""Exact in-kernel counts of real drops, as `metrics` emits them."""
import pytest


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


def test_full_map_counts_the_overflow(netns, metrics):
    m = metrics("--interval", "200ms", "--port", "7302", "--port-tags", "all", "--max-keys", "4")
    netns.traffic("syns", "127.0.0.1", 7302, 41000, 20)  # 20 SYNs from 20 ports: 20 tag sets
    assert m.wait_total(16, field="map_overflow_drops", measurement="tcpdrop_agent") == 16
    assert m.total() == 4  # the first four tag sets, one drop each
    assert max(f["keys"] for meas, t, f, _ in m.points if meas == "tcpdrop_agent") == 4
    assert [l for l in m.stderr if l.startswith("W! ")] == [
        "W! the kernel's table of tag sets is full (4 keys): further drops are counted in "
        "tcpdrop_agent.map_overflow_drops only; raise --max-keys, or use --port-tags bucketed\n"]


def test_stacks_give_each_tag_set_an_example(netns, metrics):
    m = metrics("--interval", "200ms", "--port", "7303", "--stacks")
    netns.traffic("raw-syns", 7303, 3, 40000)
    assert m.wait_total(3, dport="7303") == 3
    [stack] = [f["stack"] for meas, t, f, _ in m.points if t.get("dport") == "7303" and "stack" in f]
    assert stack.endswith(";ip_local_deliver_finish;ip_protocol_deliver_rcu;tcp_v4_rcv")


def test_batched_and_one_by_one_map_reads_agree(netns):
    """bpf_map_lookup_batch (5.6+) and the get_next_key walk older kernels use."""
    from telegraf_tcpdrop import check
    from telegraf_tcpdrop.event import ProbeConfig
    from telegraf_tcpdrop.probe import CoreLoader, Probe
    config = ProbeConfig(aggregate=1, other_reasons=1, port=7304, port_tags=1)
    config.reason_mask[:] = [2**64 - 1] * 4
    with Probe(CoreLoader(check.probe_object()), config, ("tp_btf",)) as probe:
        netns.traffic("syns", "127.0.0.1", 7304, 41000, 1500)  # > one batch of 1024 keys
        batched = probe._read_counts_batched()
        assert len(batched) == 1500
        assert batched == probe._read_counts_one_by_one()


def test_hot_slots_count_exactly_and_leave_with_idle_keys(netns):
    """A storm's few tag sets are counted in per-CPU hot slots; once idle they
    leave the kernel, and when they come back they count from zero."""
    from telegraf_tcpdrop import check
    from telegraf_tcpdrop.event import ProbeConfig
    from telegraf_tcpdrop.metrics import Collector, Deltas
    from telegraf_tcpdrop.probe import CoreLoader, Probe
    from telegraf_tcpdrop.symbols import KernelSymbols
    config = ProbeConfig(aggregate=1, other_reasons=1, port=7305, ephemeral_low=32768,
                         ephemeral_high=60999)
    config.reason_mask[:] = [2**64 - 1] * 4

    def drops(points):
        return sorted((p.tags["flags"], p.fields["drops"]) for p in points if p.measurement == "tcpdrop")

    def agent(points, field):
        return next(p.fields[field] for p in points if p.measurement == "tcpdrop_agent")

    with Probe(CoreLoader(check.probe_object()), config, ("tp_btf",)) as probe:
        collector = Collector(probe, check.drop_reasons(check.libbpf()), KernelSymbols(), 0,
                              (32768, 60999))
        collector.deltas = Deltas(idle_intervals=2)
        netns.traffic("raw-syns", 7305, 300, cpu=0)  # one CPU: one slot per key
        assert sum(len(held) for _, held in probe._hot.values()) == 0
        assert drops(collector.collect()) == [("RST|ACK", 300), ("SYN", 300)]
        assert sorted(len(held) for _, held in probe._hot.values()) in ([1, 1], [2])  # SYN's, RST's
        assert probe._read_map() == {key: (1, 40) for key in probe._read_map()}  # the first drop each
        assert drops(collector.collect()) == []
        evicting = collector.collect()
        assert drops(evicting) == [] and agent(evicting, "keys_evicted") == 2
        assert probe._read_map() == {} and probe._read_hot_slots() == {}
        netns.traffic("raw-syns", 7305, 5, cpu=0)
        assert drops(collector.collect()) == [("RST|ACK", 5), ("SYN", 5)]
