"""Where each interval's points go: the outputs, and the formats they write.

Every output has the same three calls: write(points) once per interval,
close() once at the end, and health() -> fields about itself for that
interval's tcpdrop_agent point.

- StdoutOutput: line protocol for Telegraf's inputs.execd.
- InfluxOutput: InfluxDB's v2 write API (influxdb-client); keeps what it could
  not deliver, within a bound, and delivers it when the server is back.
- StatsdOutput (statsd_output.py): StatsD counters and gauges, UDP or TCP.
"""
import email.utils
import functools
import logging
import random
import sys
import time
from collections import deque
from typing import NamedTuple

from . import log


class Point(NamedTuple):
    measurement: str
    tags: dict
    fields: dict
    time_ns: int


def _escaper(specials):
    """Backslash before each special character; a line break (which line
    protocol cannot carry) becomes a space, itself escaped where special."""
    table = {c: "\\" + c for c in specials}
    table["\n"] = table["\r"] = table.get(" ", " ")
    table = str.maketrans(table)
    return lambda text: text.translate(table)


def _name_escaper(specials):
    """As _escaper, trailing backslashes trimmed: InfluxDB's parser takes a
    separator after a backslash as escaped, whatever precedes the backslash,
    so no escaping can end a name or tag value with one ("a trailing backslash
    can't be round-tripped", influxdata/line-protocol); Telegraf trims them too."""
    escape = _escaper(specials)
    return lambda text: escape(text).rstrip("\\")


# https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/#special-characters
# A backslash is escaped in string field values only: elsewhere parsers keep it as is.
_measurement = functools.lru_cache(maxsize=64)(_name_escaper(", "))  # a few, in every point
# Tag keys, tag values, field keys: most recur in every point, and in every
# tag set made (a scan's tag sets differ by a port): the recent ones escaped once.
_key = functools.lru_cache(maxsize=4096)(_name_escaper(",= "))
_string = _escaper('\\"')


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


WRITE_SLICE = 1000  # points encoded per write


class StdoutOutput:
    """Line protocol on stdout, for Telegraf's inputs.execd (data_format = "influx")."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def write(self, points):
        if not points:
            return
        # In slices: the text of 10,000 points at once is megabytes held at the peak.
        for start in range(0, len(points), WRITE_SLICE):
            self.stream.write("\n".join(map(encode, points[start:start + WRITE_SLICE])) + "\n")
        self.stream.flush()

    def health(self):
        return {}

    def close(self):
        pass


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
        delay = self.uniform(0, min(self.cap, self.first * 2 ** (self.failures - 1)))
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


class InfluxOutput:
    """InfluxDB's v2 write API through influxdb-client: InfluxDB 2.x, 3.x and
    Cloud, and 1.8+ (token "user:password", bucket "database/retention-policy").

    Nothing is lost while the server is away: points stay in a PointBuffer and
    go out, oldest first, at the next interval the backoff allows.
    """

    CHUNK = 5000  # points per request
    # Client errors that a later retry can fix on the server's side (a token
    # or bucket created, rights granted): the points are kept.
    FIXABLE = {401: "the token is not valid (INFLUX_TOKEN or --influx-token-file)",
               403: "the token may not write to this bucket",
               404: "no such bucket or organization (--influx-bucket, --influx-org)"}

    def __init__(self, url, org, bucket, token, max_points, write_api=None, clock=time.monotonic):
        self.bucket, self.org = bucket, org
        self.buffer = PointBuffer(max_points)
        self.backoff = Backoff(clock=clock)
        self.write_errors = self.rejected = 0
        self._reported = {"merged": 0, "dropped": 0, "write_errors": 0, "rejected": 0}
        self._problem = None  # what the last E!/W! line said, so it is said once
        self._client = None
        if write_api is None:
            from influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS
            logging.getLogger("influxdb_client").setLevel(logging.CRITICAL)  # we report
            self._client = InfluxDBClient(url=url, token=token, org=org, enable_gzip=True,
                                          timeout=10_000)
            write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._write_api = write_api

    def write(self, points):
        self.buffer.add(points)
        if self.backoff.ready():
            self.flush()

    def flush(self):
        """Sends what is buffered, oldest first, until done or the server fails."""
        buffered, rejected = len(self.buffer), self.rejected
        while len(self.buffer):
            if not self._send(min(self.CHUNK, len(self.buffer))):
                return
        if self.backoff.failures:  # back from failing (a refusal is no failure)
            delivered = buffered - (self.rejected - rejected)
            log.info(f"InfluxDB takes writes again: {delivered} buffered points delivered")
            self._problem = None
        self.backoff.succeeded()

    def _send(self, n):
        """Sends the n oldest points. True when they are done with (written, or
        refused for good) and out of the buffer; False when kept for a retry."""
        from influxdb_client.rest import ApiException
        try:
            self._write_api.write(bucket=self.bucket, org=self.org,
                                  record=[encode(p) for p in self.buffer.first(n)],
                                  write_precision="ns")
        except ApiException as e:
            status, headers = e.status, e.headers or {}
            self.write_errors += 1
            if status == 413 and n > 1:  # too large for the server: each half on its own
                return self._send(n // 2) and self._send(n - n // 2)
            if status in (400, 413, 422):
                # The data itself is refused (e.g. a field type conflict, a point
                # too large even alone): retrying cannot help.
                self.rejected += n
                self._say(log.error, f"InfluxDB rejected {n} point{'s' * (n > 1)} ({status}): "
                                     f"{_body(e)}")
                self.buffer.remove_first(n)
                return True
            if status in self.FIXABLE:
                self._say(log.error, f"InfluxDB answered {status}: {self.FIXABLE[status]}; "
                                     "keeping the points and retrying every few minutes")
                self.backoff.failed(floor=60.0)
                return False
            if status in (408, 429) or status >= 500:
                self._say(log.warn, f"InfluxDB answered {status}: keeping the points, retrying")
                self.backoff.failed(retry_after_seconds(headers.get("Retry-After")))
                return False
            self._say(log.error, f"InfluxDB answered {status}: {_body(e)}")
            self.backoff.failed(floor=60.0)
            return False
        except Exception as e:  # no answer: refused, reset, timed out, DNS...
            self.write_errors += 1
            self._say(log.warn, f"InfluxDB unreachable ({_reason(e)}): keeping the points, retrying")
            self.backoff.failed()
            return False
        self.buffer.remove_first(n)
        return True

    def _say(self, level, message):
        kind = message.split(":")[0]
        if kind != self._problem:
            level(message)
            self._problem = kind

    def health(self):
        now = {"merged": self.buffer.merged, "dropped": self.buffer.dropped,
               "write_errors": self.write_errors, "rejected": self.rejected}
        delta = {k: now[k] - self._reported[k] for k in now}
        self._reported = now
        return {"buffered_points": Gauge(len(self.buffer)), "merged_points": delta["merged"],
                "dropped_points": delta["dropped"], "rejected_points": delta["rejected"],
                "write_errors": delta["write_errors"]}

    def close(self):
        self.flush()
        if len(self.buffer):
            log.error(f"{len(self.buffer)} points could not be delivered to InfluxDB before exit")
        if self._client:
            self._client.close()


def _body(error):
    body = error.body.decode(errors="replace") if isinstance(error.body, bytes) else error.body
    return (body or error.reason or "").strip()


def _reason(error):
    """The innermost cause of a connection error, in a few words."""
    while getattr(error, "reason", None) is not None and isinstance(error.reason, Exception):
        error = error.reason
    return str(error).split(": ")[-1] or type(error).__name__
