"""Points, their line protocol, and what the outputs share.

A point is one line: `tcpdrop,<tags> drops=..i,bytes=..i <ns>`. Each output is
a module of its own that only sends (outputs.py lists them), made by
from_args(args), with three calls: write(points) once per interval, close()
once at the end, and health() -> fields about itself for that interval's
tcpdrop_agent point.
Here: the point model and its encoding, and the bounded buffer and backoff an
output that can fail (InfluxDB) keeps points in while it does.
"""
import email.utils
import functools
import random
import time
from collections import deque
from typing import NamedTuple


class Point(NamedTuple):
    measurement: str
    tags: dict
    fields: dict
    time_ns: int


# What no parser takes as is: control characters (a line break ends the line;
# Telegraf rejects a tab in a tag), and lone surrogates, which are not text
# (Python's stand-ins for bytes that are not UTF-8: a name from a file or a
# process table is any bytes) and which no encoder to UTF-8 takes.
CONTROLS = [*range(0x20), 0x7F]
SURROGATES = range(0xD800, 0xE000)
REPLACEMENT = "\ufffd"
# Longer is cut (characters): InfluxDB refuses a series key or a string field
# over 64 KiB, and Telegraf's execd a line over 64 KiB, whole; the names and
# stacks written here are far shorter (a name is at most 255 bytes, a kernel
# symbol 512, a stack 127 of them). At 4 bytes a character, escaped, a line
# stays well within.
MAX_NAME = 1024
MAX_STRING = 8192


def _escaper(specials):
    """Backslash before each special character; a control character becomes
    a space (itself escaped where special), a lone surrogate U+FFFD: every
    string is then one line of valid UTF-8."""
    table = {ord(c): "\\" + c for c in specials}
    table.update((c, table.get(ord(" "), " ")) for c in CONTROLS)
    table.update((c, REPLACEMENT) for c in SURROGATES)
    return lambda text: text.translate(table)


def _name_escaper(specials):
    """As _escaper, trailing backslashes trimmed: InfluxDB's parser takes a
    separator after a backslash as escaped, whatever precedes the backslash,
    so no escaping can end a name or tag value with one ("a trailing backslash
    can't be round-tripped", influxdata/line-protocol); Telegraf trims them too."""
    escape = _escaper(specials)
    return lambda text: escape(text[:MAX_NAME]).rstrip("\\")


# A name as shown anywhere (a tag, trace's lines, top's table): one line of
# text, no control character to move a terminal's cursor.
printable = _escaper("")

# https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/#special-characters
# A backslash is escaped in string field values only: elsewhere parsers keep it as is.
_measurement = functools.lru_cache(maxsize=64)(_name_escaper(", "))  # a few, in every point
# Tag keys, tag values, field keys: most recur in every point, and in every
# tag set made (a scan's tag sets differ by a port): the recent ones escaped once.
_key = functools.lru_cache(maxsize=4096)(_name_escaper(",= "))
_escape_string = _escaper('\\"')


def _string(text):
    return _escape_string(text[:MAX_STRING])


def _field_value(value):
    if type(value) is int:  # nearly every value: tested first
        return f"{value}i"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    return f'"{_string(str(value))}"'


def encode_tags(tags):
    """The tags as line protocol writes them: ",k=v" sorted by key; a tag left
    empty once escaped is left out (line protocol has no empty tag)."""
    escaped = ((_key(k), _key(v)) for k, v in sorted(tags.items()))
    return "".join(f",{k}={v}" for k, v in escaped if k and v)


class TagSet(dict):
    """Tags written in many intervals: encoded once. Escaping was most of the
    monitor's time at 10,000 tag sets (cProfile)."""
    __slots__ = ("_encoded",)

    def encoded(self):
        try:
            return self._encoded
        except AttributeError:
            self._encoded = encode_tags(self)
            return self._encoded


def encode(point):
    """One line of line protocol."""
    tags = point.tags.encoded() if isinstance(point.tags, TagSet) else encode_tags(point.tags)
    fields = ",".join([f"{_key(k)}={_field_value(v)}" for k, v in point.fields.items()])
    return f"{_measurement(point.measurement)}{tags} {fields} {point.time_ns}"


class Gauge(int):
    """A field that is a level (tag sets in the map, points buffered), not a
    count, so marked where the field is made: merging two points keeps the
    newer level, and StatsD sends it as a gauge."""


def merge(older, newer):
    """One point standing for two of the same series: counts add up, levels are the newer's."""
    fields = dict(older.fields)
    for name, value in newer.fields.items():
        if isinstance(value, int) and not isinstance(value, Gauge) and name in fields:
            fields[name] += value
        else:
            fields[name] = value
    return newer._replace(fields=fields)


class PointBuffer:
    """Points not yet delivered, oldest first, at most max_points of them.

    Over the bound, the oldest half is merged per series (one point per tag
    set, at its newest time): drops keep their exact totals and lose only
    their time resolution. Only if that is not enough are the oldest points
    dropped, and counted.
    """

    def __init__(self, max_points):
        self.max_points = max_points
        self.points = deque()
        self.merged = self.dropped = 0

    def __len__(self):
        return len(self.points)

    def add(self, points):
        self.points.extend(points)
        if len(self.points) > self.max_points:
            self._merge_oldest_half()
        while len(self.points) > self.max_points:
            self.points.popleft()
            self.dropped += 1

    def _merge_oldest_half(self):
        oldest = [self.points.popleft() for _ in range(len(self.points) // 2)]
        series = {}
        for point in oldest:
            key = (point.measurement, tuple(sorted(point.tags.items())))
            series[key] = merge(series[key], point) if key in series else point
        self.merged += len(oldest) - len(series)
        self.points.extendleft(sorted(series.values(), key=lambda p: p.time_ns, reverse=True))

    def first(self, n):
        return [self.points[i] for i in range(min(n, len(self.points)))]

    def remove_first(self, n):
        for _ in range(n):
            self.points.popleft()


class Backoff:
    """Exponential, with full jitter: the n-th failure in a row waits a draw of
    uniform(0, min(cap, first * 2**(n-1))) seconds; a server's Retry-After, or
    the caller's floor, wins if longer."""

    def __init__(self, first=1.0, cap=300.0, clock=time.monotonic, uniform=random.uniform):
        self.first, self.cap, self.clock, self.uniform = first, cap, clock, uniform
        self.failures = 0
        self.until = 0.0

    def ready(self):
        return self.clock() >= self.until

    def failed(self, retry_after=None, floor=0.0):
        self.failures += 1
        # The exponent bounded: 2.0 ** 1024 overflows, some 44 h into an outage at a 300 s cap.
        delay = self.uniform(0, min(self.cap, self.first * 2.0 ** min(self.failures - 1, 64)))
        self.until = self.clock() + max(delay, retry_after or 0.0, floor)

    def succeeded(self):
        self.failures, self.until = 0, 0.0


def retry_after_seconds(value):
    """A Retry-After header (seconds, or an HTTP date) in seconds; None if absent or odd."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
