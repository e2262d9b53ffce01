"""`telegraf-tcpdrop metrics`: the probe's in-kernel counts as points.

A drop travels: kernel -> drops map (a DropKey tag set, counted per CPU) ->
read_counts() once per interval -> the delta since the last read -> a Point
`tcpdrop,<tags> drops=,bytes=` -> an output (plugin/emit.py). Nothing in user
space runs per drop.
"""
import time

from . import log
from .emit import Gauge, Point
from .event import (COUNTER_LISTEN_UNTRACKED, COUNTER_LOST, COUNTER_OVERFLOW_BYTES, COUNTER_OVERFLOW_DROPS,
                    COUNTER_RATELIMITED, EPHEMERAL_DPORT, EPHEMERAL_SPORT, PORT_TAGS_ALL,
                    PORT_TAGS_BUCKETED, PORT_TAGS_NONE, DropKey)
from .names import flag_names, state_name
from .trace import drop_site_stack

PORT_TAGS = {"bucketed": PORT_TAGS_BUCKETED, "all": PORT_TAGS_ALL, "none": PORT_TAGS_NONE}
# A tag set unchanged this many intervals leaves the map, so that a port scan
# does not hold its keys forever (it comes back, from 0, on its next drop).
IDLE_INTERVALS = 30


def ephemeral_range(path="/proc/sys/net/ipv4/ip_local_port_range"):
    with open(path) as f:
        low, high = f.read().split()
    return int(low), int(high)


class Deltas:
    """Turns ever-growing totals per key into what changed since last time."""

    def __init__(self, idle_intervals=IDLE_INTERVALS):
        self.idle_intervals = idle_intervals
        self._last = {}  # key -> (drops, bytes, intervals unchanged)

    def update(self, totals):
        """(changed {key: (drops, bytes)}, keys idle long enough to evict)."""
        changed, idle, last = {}, [], {}
        for key, (drops, nbytes) in totals.items():
            old_drops, old_bytes, unchanged = self._last.get(key, (0, 0, 0))
            if drops != old_drops:
                changed[key] = (drops - old_drops, nbytes - old_bytes)
                unchanged = 0
            else:
                unchanged += 1
            if unchanged >= self.idle_intervals:
                idle.append(key)
            last[key] = (drops, nbytes, unchanged)
        self._last = last
        return changed, idle

    def forget(self, keys):
        """The kernel dropped these keys: a next drop counts from 0 again."""
        for key in keys:
            self._last.pop(key, None)


class Collector:
    """Reads the probe each interval and makes that interval's points."""

    def __init__(self, probe, reasons, symbols, port_tags, ephemeral, clock=time.time_ns,
                 stats_enabled=lambda: False, output_health=dict, host=None):
        self.probe, self.reasons, self.symbols = probe, reasons, symbols
        self.port_tags, self.ephemeral = port_tags, ephemeral
        self.clock, self.stats_enabled, self.output_health = clock, stats_enabled, output_health
        self._tags = {}  # key -> its tags, made once: buffered points share them
        self._host = {"host": host} if host else {}
        self.deltas = Deltas()
        self.examples = {}  # key -> folded stack of one drop this interval (--stacks)
        self._counters = [0] * len(probe.counters())
        self._runs = probe.run_stats()
        self._last_time = clock()
        self._warned_full = False

    def on_event(self, event):
        """One sampled drop (--stacks): keep its stack as its tag set's example."""
        key = self.key_of(event)
        if key not in self.examples:
            ips = drop_site_stack(self.probe.stack(event.stack_id), event.location, self.symbols.function)
            if ips:
                self.examples[key] = ";".join(self.symbols.function(ip) for ip in reversed(ips))

    def key_of(self, event):
        """The DropKey bytes the kernel counted this event's drop under."""
        key = DropKey(location=event.location, reason=event.reason, family=event.family,
                      state=event.state, flags=event.flags)
        key.sport, key.dport = event.sport, event.dport
        if self.port_tags == PORT_TAGS_NONE:
            key.sport = key.dport = 0
        elif self.port_tags == PORT_TAGS_BUCKETED:
            low, high = self.ephemeral
            if low <= event.sport <= high:
                key.sport, key.ephemeral = 0, key.ephemeral | EPHEMERAL_SPORT
            if low <= event.dport <= high:
                key.dport, key.ephemeral = 0, key.ephemeral | EPHEMERAL_DPORT
        return bytes(key)

    def tags(self, key):
        tags = {
            **self._host,
            "family": str(key.family),
            "flags": flag_names(key.flags) or "NONE",
            "frame": self.symbols.function(key.location),
            "reason": self.reasons.name(key.reason),
            "state": state_name(key.state),
        }
        if self.port_tags != PORT_TAGS_NONE:
            tags["sport"] = "ephemeral" if key.ephemeral & EPHEMERAL_SPORT else str(key.sport)
            tags["dport"] = "ephemeral" if key.ephemeral & EPHEMERAL_DPORT else str(key.dport)
        return tags

    def collect(self):
        """The points of the interval that ends now."""
        now = self.clock()
        totals = self.probe.read_counts()
        changed, idle = self.deltas.update(totals)
        evicted = self.probe.delete_keys(idle)
        self.deltas.forget(evicted)
        for key in evicted:
            self._tags.pop(key, None)
        points = []
        for raw, (drops, nbytes) in changed.items():
            fields = {"drops": drops, "bytes": nbytes}
            if raw in self.examples:
                fields["stack"] = self.examples[raw]
            if raw not in self._tags:
                self._tags[raw] = self.tags(DropKey.from_buffer_copy(raw))
            points.append(Point("tcpdrop", self._tags[raw], fields, now))
        self.examples.clear()
        health = self.agent_fields(now, len(totals), len(evicted))
        points.append(Point("tcpdrop_agent", self._host, health, now))
        self._last_time = now
        return points

    def agent_fields(self, now, keys, evicted):
        """The monitor's own health over the interval: what it could not count or show."""
        counters = self.probe.counters()
        delta = [new - old for new, old in zip(counters, self._counters)]
        self._counters = counters
        if delta[COUNTER_OVERFLOW_DROPS] and not self._warned_full:
            log.warn(f"the kernel's table of tag sets is full ({keys} keys): further drops are "
                     "counted in tcpdrop_agent.map_overflow_drops only; raise --max-keys, or use "
                     "--port-tags bucketed")
            self._warned_full = True
        fields = {
            "events_lost": delta[COUNTER_LOST],
            "events_ratelimited": delta[COUNTER_RATELIMITED],
            "map_overflow_drops": delta[COUNTER_OVERFLOW_DROPS],
            "map_overflow_bytes": delta[COUNTER_OVERFLOW_BYTES],
            "listen_untracked": delta[COUNTER_LISTEN_UNTRACKED],
            "keys": Gauge(keys),
            "keys_evicted": evicted,
            "interval_ns": now - self._last_time,
        }
        fields.update(self.output_health())
        runs, run_time, misses = self.probe.run_stats()
        fields["probe_misses"] = misses - self._runs[2]
        if self.stats_enabled():
            fields["probe_runs"] = runs - self._runs[0]
            fields["probe_run_time_ns"] = run_time - self._runs[1]
        self._runs = (runs, run_time, misses)
        return fields
