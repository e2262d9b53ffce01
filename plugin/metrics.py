"""`telegraf-tcpdrop metrics`: the probe's in-kernel counts as points.

A drop travels: kernel -> drops map (a DropKey tag set, counted per CPU) ->
take_counts() once per interval: the interval's counts -> a Point
`tcpdrop,<tags> drops=,bytes=` -> an output (plugin/emit.py). Nothing in user
space runs per drop.
"""
import sys
import time

from . import host, log
from .emit import Gauge, Point, TagSet
from .event import (COUNTER_LISTEN_UNTRACKED, COUNTER_LOST, COUNTER_NESTED, COUNTER_OVERFLOW_BYTES,
                    COUNTER_OVERFLOW_DROPS, COUNTER_RATELIMITED, COUNTER_STACKS_LOST, COUNTER_UNREADABLE, EPHEMERAL_DPORT,
                    EPHEMERAL_SPORT, MARK_NO_PORTS, MARK_PORTS_OVERFLOW, PORT_TAGS_NONE, DropKey)
from .execd import Execd
from .names import flags_tag, state_name
from .netns import UNKNOWN, NetnsNames
from .netstat import NetstatPoints
from .outputs import make_output
from .probe import RunStats
from .startup import counting_config, loaded_symbols, open_probe, this_host_name
from .symbols import drop_site_stack

NETNS_AT = DropKey.netns.offset  # of the inode in a key's bytes
MARKS_AT = DropKey.marks.offset
OVERFLOW = "overflow"  # the ports of a drop counted once the table was full
# Intervals without a drop after which a tag set's tags are let go.
IDLE_INTERVALS = 30
STACK_SAMPLES = 20  # per second per CPU, for --stacks


def netns_tagger(netns_tags, names):
    """inode -> the `netns` tag, as --netns-tags asks (name, inode); None for none."""
    if netns_tags == "name":
        return names.name
    if netns_tags == "inode":
        return lambda inode: str(inode) if inode else UNKNOWN
    return None


class Collector:
    """Reads the probe each interval and makes that interval's points."""

    def __init__(self, probe, reasons, symbols, port_tags, netns_tags="none", netns_names=None,
                 netstat=None, clock=time.time_ns, stats_enabled=lambda: False,
                 output_health=dict, host=None, idle_intervals=IDLE_INTERVALS):
        """netstat: a netstat.NetstatPoints, for each namespace's own TCP drop counters too."""
        self.probe, self.reasons, self.symbols, self.port_tags = probe, reasons, symbols, port_tags
        self.netns_tags = netns_tags
        self.netns_names = netns_names or NetnsNames(probe.netns_tasks)
        self.netns_tag = netns_tagger(netns_tags, self.netns_names)
        self.clock, self.stats_enabled, self.output_health = clock, stats_enabled, output_health
        self.idle_intervals = idle_intervals
        self._tags = {}  # key -> its tags, made once: buffered points share them
        self._intervals = 0  # collected so far
        self._last_seen = {}  # key -> the interval of its last drop
        self._scans_seen = None  # netns_names.scans when the tags were last checked against it
        self._host = {"host": host} if host else {}
        self.netstat = netstat
        self.examples = {}  # key -> folded stack of one drop this interval (--stacks)
        # The self-metrics count from the last interval written, by this run or the one before.
        baselines = probe.baselines or {}
        self._counters = baselines.get("counters") or [0] * len(probe.counters())
        self._runs = RunStats(*baselines["runs"]) if "runs" in baselines else probe.run_stats()
        self._last_time = clock()
        self._warned_full = False

    def on_event(self, event):
        """One sampled drop (--stacks): keep its stack as its tag set's example."""
        key = bytes(event.key)  # the tag set the kernel counted it under
        if key not in self.examples:
            ips = drop_site_stack(event.stack_ips(), event.key.location, self.symbols.function)
            if ips:
                self.examples[key] = ";".join(self.symbols.function(ip) for ip in reversed(ips))

    def tags(self, key):
        tags = {
            **self._host,
            "family": str(key.family),
            "flags": flags_tag(key.flags, key.marks),
            "frame": self.symbols.function(key.location),
            "reason": self.reasons.name(key.reason),
            "state": state_name(key.state),
        }
        if self.netns_tag:
            tags["netns"] = self.netns_tag(key.netns)
        if self.port_tags == PORT_TAGS_NONE:
            pass  # not even "overflow": each Graphite level stays the same tag
        elif key.marks & MARK_PORTS_OVERFLOW:
            tags["sport"] = tags["dport"] = OVERFLOW
        elif key.marks & MARK_NO_PORTS:
            # No value, not a made-up one: line protocol leaves the tags out,
            # and Graphite-style StatsD names keep their place ("-").
            tags["sport"] = tags["dport"] = ""
        else:
            tags["sport"] = "ephemeral" if key.marks & EPHEMERAL_SPORT else str(key.sport)
            tags["dport"] = "ephemeral" if key.marks & EPHEMERAL_DPORT else str(key.dport)
        return tags

    def carried(self):
        """The points of the drops that runs before this one counted and did
        not write (killed), or that a probe this run replaced counted; none
        if there are none. written() once they are out."""
        counts = self.probe.read_carried()
        if not counts:
            return []
        now = self.clock()
        points = [Point("tcpdrop", self._tag_set(raw), {"drops": drops, "bytes": nbytes}, now)
                  for raw, (drops, nbytes) in counts.items()]
        carried = sum(drops for drops, _ in counts.values())
        return points + [Point("tcpdrop_agent", self._host, {"carried_drops": carried}, now)]

    def written(self):
        """The points collected are out: the probe clears what they counted."""
        self.probe.commit({"counters": self._counters, "runs": list(self._runs)})

    def collect(self):
        """The points of the interval that ends now. Per tag set, only dict
        lookups and the point itself: its tags are made once and kept. The
        probe keeps their counts until written()."""
        now = self.clock()
        counts = self.probe.read_counts()
        self._intervals += 1
        self._forget_idle(counts)
        if counts and self.netns_tags == "name":  # no drops, no names to show: no looking
            self._forget_renamed()
        points, portless, portless_keys = [], 0, 0
        tags, examples = self._tags, self.examples
        for raw, (drops, nbytes) in counts.items():
            if raw[MARKS_AT] & MARK_PORTS_OVERFLOW:
                portless, portless_keys = portless + drops, portless_keys + 1
            fields = {"drops": drops, "bytes": nbytes}
            if raw in examples:
                fields["stack"] = examples[raw]
            tag_set = tags.get(raw)
            if tag_set is None:
                tag_set = tags[raw] = self._tag_set(raw)
            points.append(Point("tcpdrop", tag_set, fields, now))
        examples.clear()
        if self.netstat:
            points += self.netstat.points(now)
        health = self.agent_fields(now, len(counts) - portless_keys, portless)
        points.append(Point("tcpdrop_agent", self._host, health, now))
        self._last_time = now
        return points

    def _tag_set(self, raw):
        """The tags of a key, kept while it drops. Their values are interned,
        but for the namespace's name, of which a host may see endless ones:
        one "4", "NONE" or port "443" for all tag sets, not one each (a
        megabyte at 10,000 tag sets)."""
        tags = self.tags(DropKey.from_buffer_copy(raw))
        return TagSet({name: value if name == "netns" else sys.intern(value)
                       for name, value in tags.items()})

    def _forget_idle(self, counts):
        """Tags of a tag set without drops for idle_intervals are let go: a
        port scan must not hold them forever."""
        self._last_seen.update(dict.fromkeys(counts, self._intervals))
        idle_since = self._intervals - self.idle_intervals
        for key in [key for key, seen in self._last_seen.items() if seen <= idle_since]:
            del self._last_seen[key]
            self._tags.pop(key, None)

    def _forget_renamed(self):
        """Tags of tag sets whose namespace goes by another name now (a
        container renamed, or its inode reused by another namespace) are
        made again. Names change only when netns.py looks again (every
        RESCAN_SECONDS, or once a second while new namespaces turn up): only
        then are the kept tag sets read, not at every interval."""
        self.netns_names.rescan_if_due()
        if self.netns_names.scans == self._scans_seen:
            return
        self._scans_seen = self.netns_names.scans
        for raw, tag_set in list(self._tags.items()):
            inode = int.from_bytes(raw[NETNS_AT:NETNS_AT + 4], sys.byteorder)
            if tag_set["netns"] != self.netns_names.known_name(inode):
                del self._tags[raw]

    def agent_fields(self, now, keys, portless):
        """The monitor's own health over the interval: what it could not count
        or show. portless: drops counted without their ports (the table full)."""
        counters = self.probe.counters()
        delta = [new - old for new, old in zip(counters, self._counters)]
        self._counters = counters
        if (portless or delta[COUNTER_OVERFLOW_DROPS]) and not self._warned_full:
            log.warn(f"the kernel's table of tag sets is full ({keys} keys): further drops are "
                     f"counted without their ports (sport, dport: {OVERFLOW}), beyond those in "
                     "tcpdrop_agent.map_overflow_drops only; raise --max-keys, or use "
                     "--port-tags bucketed")
            self._warned_full = True
        fields = {
            "events_lost": delta[COUNTER_LOST],
            "events_ratelimited": delta[COUNTER_RATELIMITED],
            "map_portless_drops": portless,
            "map_overflow_drops": delta[COUNTER_OVERFLOW_DROPS],
            "map_overflow_bytes": delta[COUNTER_OVERFLOW_BYTES],
            "listen_untracked": delta[COUNTER_LISTEN_UNTRACKED],
            "keys": Gauge(keys),
            "stacks_lost": delta[COUNTER_STACKS_LOST],
            "unreadable": delta[COUNTER_UNREADABLE],
            "interval_ns": now - self._last_time,
        }
        fields.update(self.output_health())
        runs, last = self.probe.run_stats(), self._runs
        fields["probe_misses"] = runs.drop_misses - last.drop_misses + delta[COUNTER_NESTED]
        fields["listen_misses"] = runs.listen_misses - last.listen_misses
        if self.stats_enabled():
            fields["probe_runs"] = runs.runs - last.runs
            fields["probe_run_time_ns"] = runs.run_time_ns - last.run_time_ns
        self._runs = runs
        return fields


def run(args):
    output = make_output(args)
    reasons = host.drop_reasons(host.libbpf())
    probe_settings = counting_config(args, reasons, events=int(args.stacks),
                                     stacks=int(args.stacks), events_per_sec=STACK_SAMPLES)
    # Telegraf adds the host tag to what it reads from stdout.
    host_tag = None if args.output == "stdout" else this_host_name()
    with open_probe(probe_settings, args.backend, args.hook, args.verbose, args.listen_drops,
                    pin_dir=args.pin_dir, max_keys=args.max_keys) as probe:
        names = NetnsNames(probe.netns_tasks)
        netstat = (NetstatPoints(names, host_tag, netns_tagger(args.netns_tags, names))
                   if args.netns_counters else None)
        collector = Collector(probe, reasons, loaded_symbols(), probe_settings.port_tags,
                              netns_tags=args.netns_tags, netns_names=names, netstat=netstat,
                              stats_enabled=host.bpf_stats_enabled, output_health=output.health,
                              host=host_tag)
        if args.stacks:
            probe.on_event(collector.on_event)
        carried = collector.carried()
        if carried:
            log.info(f"{carried[-1].fields['carried_drops']} drops counted before this run and not "
                     "written come now")
            output.write(carried)
        collector.written()
        Execd(collector.collect, output, args.interval, args.signal, written=collector.written,
              events=probe if args.stacks else None).run()
    return 0
