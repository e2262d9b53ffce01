"""From the kernel's totals per tag set to each interval's points, without a kernel."""
from telegraf_tcpdrop.emit import encode
from telegraf_tcpdrop.statsd_output import statsd_lines
from telegraf_tcpdrop.event import (COUNTER_MAX, COUNTER_NESTED, EPHEMERAL_SPORT, MARK_FRAGMENT,
                                    MARK_NO_PORTS, MARK_PORTS_OVERFLOW, MARK_TRUNCATED, PORT_TAGS_ALL,
                                    PORT_TAGS_BUCKETED, PORT_TAGS_NONE, DropEvent, DropKey)
from telegraf_tcpdrop.metrics import Collector
from telegraf_tcpdrop.names import DropReasons
from telegraf_tcpdrop.probe import RunStats
from telegraf_tcpdrop.netns import RESCAN_SECONDS, NetnsNames

REASONS = DropReasons({2: "NO_SOCKET", 12: "NETFILTER_DROP"})
RCV = 0xFFFF0099


class FakeSymbols:
    NAMES = {RCV: "tcp_v4_rcv", 0xFFFF1028: "ip_protocol_deliver_rcu", 0xFFFF5000: "bpf_prog_x"}

    def function(self, addr):
        return self.NAMES[addr]


class StubProbe:
    """The probe's reading side: each interval's counts per key, counters, run
    stats; the counts another run left, and the baselines it wrote."""

    def __init__(self, carried=None, baselines=None):
        self.counts, self.counters_ = {}, [0] * COUNTER_MAX
        self.carried, self.baselines, self.committed = carried or {}, baselines, []

    def read_counts(self):
        counts, self.counts = self.counts, {}
        return counts

    def read_carried(self):
        return self.carried

    def commit(self, baselines=None):
        self.committed.append(baselines)

    def counters(self):
        return list(self.counters_)

    def run_stats(self):
        return RunStats(100, 5000, 0, 0)

    def netns_tasks(self):
        return []


def key(dport=443, sport=0, marks=EPHEMERAL_SPORT, reason=2, flags=0x02):
    return bytes(DropKey(location=RCV, reason=reason, sport=sport, dport=dport, family=4,
                         state=0, flags=flags, marks=marks))


def collector(probe, port_tags=PORT_TAGS_BUCKETED, **options):
    """A Collector whose clock reads 1 s, 2 s, 3 s, ...: each its own."""
    clock = iter(range(10**9, 10**12, 10**9))
    return Collector(probe, REASONS, FakeSymbols(), port_tags, clock=lambda: next(clock), **options)


def test_points_of_an_interval():
    probe = StubProbe()
    c = collector(probe)
    probe.counts = {key(): (3, 180)}
    probe.counters_ = [1, 0, 4, 240, 0, 0, 0, 0]
    points = c.collect()
    assert [encode(p) for p in points] == [
        "tcpdrop,dport=443,family=4,flags=SYN,frame=tcp_v4_rcv,reason=NO_SOCKET,sport=ephemeral,"
        "state=NONE drops=3i,bytes=180i 2000000000",
        "tcpdrop_agent events_lost=1i,events_ratelimited=0i,map_portless_drops=0i,map_overflow_drops=4i,"
        "map_overflow_bytes=240i,listen_untracked=0i,keys=1i,stacks_lost=0i,unreadable=0i,interval_ns=1000000000i,"
        "probe_misses=0i,listen_misses=0i 2000000000"]
    # Nothing new: only the agent's point, with its counters as deltas.
    points = c.collect()
    assert [p.measurement for p in points] == ["tcpdrop_agent"]
    assert points[0].fields["map_overflow_drops"] == 0 and points[0].fields["events_lost"] == 0


def test_the_collector_says_which_agent_fields_are_levels():
    probe = StubProbe()
    probe.counts = {key(): (3, 180)}
    _, agent = collector(probe).collect()
    kinds = {line.split(":")[0]: line.rsplit("|", 1)[1] for line in statsd_lines(agent, "none")}
    assert kinds.pop("tcpdrop_agent.keys") == "g"
    assert set(kinds.values()) == {"c"}, kinds


def test_port_tags_all_and_none():
    probe = StubProbe()
    probe.counts = {key(dport=443, sport=50000, marks=0): (1, 60)}
    [point, _] = collector(probe, PORT_TAGS_ALL).collect()
    assert (point.tags["sport"], point.tags["dport"]) == ("50000", "443")
    probe.counts = {key(dport=0, sport=0, marks=0): (1, 60)}
    [point, _] = collector(probe, PORT_TAGS_NONE).collect()
    assert "sport" not in point.tags and "dport" not in point.tags


def test_flags_without_any_bit_set_are_tagged_none():
    probe = StubProbe()
    probe.counts = {key(flags=0): (1, 40)}
    assert collector(probe).collect()[0].tags["flags"] == "NONE"


def test_probe_run_stats_only_when_the_kernel_measures_them():
    probe = StubProbe()
    c = collector(probe)
    assert "probe_runs" not in c.collect()[-1].fields
    c.stats_enabled = lambda: True
    probe.run_stats = lambda: RunStats(130, 7000, 0, 0)
    fields = c.collect()[-1].fields
    assert (fields["probe_runs"], fields["probe_run_time_ns"]) == (30, 2000)


def test_probe_misses_are_reported_as_deltas_whether_or_not_stats_are_on():
    probe = StubProbe()
    c = collector(probe)
    probe.run_stats = lambda: RunStats(100, 5000, 7, 0)
    assert c.collect()[-1].fields["probe_misses"] == 7
    probe.run_stats = lambda: RunStats(100, 5000, 9, 0)
    assert c.collect()[-1].fields["probe_misses"] == 2
    # and the runs the probe skipped itself (tcpdrop.c, enter_once)
    probe.counters_[COUNTER_NESTED] = 3
    assert c.collect()[-1].fields["probe_misses"] == 3


def test_skipped_listen_queue_runs_are_not_drops_missed():
    """A skipped run of consume_skb's program (run for every packet freed as
    normal) loses no drop: listen_misses, not probe_misses."""
    probe = StubProbe()
    c = collector(probe)
    probe.run_stats = lambda: RunStats(100, 5000, 0, 40)
    fields = c.collect()[-1].fields
    assert (fields["probe_misses"], fields["listen_misses"]) == (0, 40)


def test_a_sampled_event_gives_its_tag_set_a_folded_stack():
    probe = StubProbe()
    c = collector(probe)
    event = DropEvent(key=DropKey.from_buffer_copy(key()), sport=40000, dport=443, stack_size=24)
    event.stack[:3] = [0xFFFF5000, RCV, 0xFFFF1028]
    c.on_event(event)
    probe.counts = {key(): (1, 60)}
    [point, _] = c.collect()
    assert point.fields["stack"] == "ip_protocol_deliver_rcu;tcp_v4_rcv"
    probe.counts = {key(): (2, 120)}
    assert "stack" not in c.collect()[0].fields  # examples are per interval


def test_what_the_packet_did_not_hold_is_not_tagged():
    """Ports the packet does not hold have no value: no tag in line protocol,
    a "-" level in Graphite-style StatsD names, whose levels stay in place."""
    probe = StubProbe()
    probe.counts = {key(marks=MARK_TRUNCATED, flags=0, sport=40000): (1, 44),
                    key(marks=MARK_TRUNCATED | MARK_NO_PORTS, flags=0, dport=0): (1, 22),
                    key(marks=MARK_FRAGMENT | MARK_NO_PORTS, flags=0, dport=0): (1, 60)}
    points = collector(probe, PORT_TAGS_ALL).collect()[:-1]
    assert [encode(p).split(" ")[0] for p in points] == [
        "tcpdrop,dport=443,family=4,flags=TRUNCATED,frame=tcp_v4_rcv,reason=NO_SOCKET,sport=40000,state=NONE",
        "tcpdrop,family=4,flags=TRUNCATED,frame=tcp_v4_rcv,reason=NO_SOCKET,state=NONE",
        "tcpdrop,family=4,flags=FRAGMENT,frame=tcp_v4_rcv,reason=NO_SOCKET,state=NONE"]
    assert [statsd_lines(p, "none")[0] for p in points] == [
        "tcpdrop.443.4.TRUNCATED.tcp_v4_rcv.NO_SOCKET.40000.NONE.drops:1|c",
        "tcpdrop.-.4.TRUNCATED.tcp_v4_rcv.NO_SOCKET.-.NONE.drops:1|c",
        "tcpdrop.-.4.FRAGMENT.tcp_v4_rcv.NO_SOCKET.-.NONE.drops:1|c"]
    probe.counts = {key(marks=MARK_TRUNCATED | MARK_NO_PORTS, flags=0, dport=0): (1, 22),
                    key(marks=MARK_PORTS_OVERFLOW, dport=0): (1, 60)}
    unported = collector(probe, PORT_TAGS_NONE).collect()[:-1]  # no ports tagged: no levels
    assert [statsd_lines(p, "none")[0] for p in unported] == [
        "tcpdrop.4.TRUNCATED.tcp_v4_rcv.NO_SOCKET.NONE.drops:1|c",
        "tcpdrop.4.SYN.tcp_v4_rcv.NO_SOCKET.NONE.drops:1|c"]
    assert statsd_lines(points[1], "influx")[0] == \
        "tcpdrop.drops,family=4,flags=TRUNCATED,frame=tcp_v4_rcv,reason=NO_SOCKET,state=NONE:1|c"


def test_the_tags_of_idle_tag_sets_are_let_go():
    probe = StubProbe()
    c = collector(probe, idle_intervals=3)
    probe.counts = {key(): (1, 60)}
    c.collect()
    for _ in range(2):
        assert c.collect()[-1].fields["keys"] == 0
        assert key() in c._tags
    c.collect()
    assert key() not in c._tags


def test_a_renamed_namespace_is_tagged_by_its_new_name_from_the_next_scan(tmp_path):
    """Names change only when netns.py looks again (every RESCAN_SECONDS):
    then, and only then, each kept tag set's name is checked; an interval
    without drops shows no names, and looks for none."""
    probe, clock = StubProbe(), [0.0]
    names = NetnsNames(tasks=list, run_netns=tmp_path, clock=lambda: clock[0])
    (tmp_path / "blue").touch()  # stands in for the bind mount `ip netns add blue` makes
    in_blue = bytes(DropKey(location=RCV, reason=2, family=4, netns=(tmp_path / "blue").stat().st_ino))
    c = collector(probe, netns_tags="name", netns_names=names)

    def netns_tags(drops=1):
        probe.counts = {in_blue: (drops, 60 * drops)} if drops else {}
        return [p.tags["netns"] for p in c.collect()[:-1]]

    assert netns_tags() == ["blue"]
    (tmp_path / "blue").rename(tmp_path / "green")
    clock[0] += RESCAN_SECONDS - 1
    assert netns_tags() == ["blue"]  # not looked for again yet
    clock[0] += 1
    assert netns_tags() == ["green"]
    assert names.scans == 2
    (tmp_path / "green").rename(tmp_path / "red")
    for _ in range(3):
        clock[0] += RESCAN_SECONDS
        assert netns_tags(drops=0) == []
    assert names.scans == 2  # idle: not one look
    assert netns_tags() == ["red"]
    assert names.scans == 3


def test_a_run_that_took_over_counts_from_the_baselines_the_run_before_wrote():
    """The counters and run stats are the pinned probe's, since it attached:
    this run's first interval gives their rise since the last one written."""
    probe = StubProbe(baselines={"counters": [0, 0, 0, 0, 0, 0, 1, 5], "runs": [90, 4000, 0, 0]})
    probe.counters_ = [0, 0, 0, 0, 0, 0, 1, 7]
    c = collector(probe)
    fields = c.collect()[-1].fields
    assert fields["unreadable"] == 2 and fields["probe_misses"] == 0
    c.written()
    assert probe.committed == [{"counters": [0, 0, 0, 0, 0, 0, 1, 7], "runs": [100, 5000, 0, 0]}]


def test_drops_another_run_left_are_points_of_their_own():
    probe = StubProbe(carried={key(): (4, 240), key(dport=80): (1, 60)})
    points = collector(probe).carried()
    assert [encode(p) for p in points] == [
        "tcpdrop,dport=443,family=4,flags=SYN,frame=tcp_v4_rcv,reason=NO_SOCKET,sport=ephemeral,"
        "state=NONE drops=4i,bytes=240i 2000000000",
        "tcpdrop,dport=80,family=4,flags=SYN,frame=tcp_v4_rcv,reason=NO_SOCKET,sport=ephemeral,"
        "state=NONE drops=1i,bytes=60i 2000000000",
        "tcpdrop_agent carried_drops=5i 2000000000"]
    assert collector(StubProbe()).carried() == []
