"""The outputs' own logic, without a server: buffer bounds, backoff, answers,
the StatsD packets as a socket of the test's own receives them."""
import io
import socket

import pytest
import urllib3
from influxdb_client.rest import ApiException

from telegraf_tcpdrop.emit import Backoff, Gauge, Point, PointBuffer, merge, retry_after_seconds
from telegraf_tcpdrop.influx_output import InfluxOutput
from telegraf_tcpdrop.statsd_output import StatsdOutput, statsd_lines


def point(t, reason="NO_SOCKET", drops=1, nbytes=60):
    return Point("tcpdrop", {"reason": reason}, {"drops": drops, "bytes": nbytes}, t)


def agent(t, keys, lost):
    return Point("tcpdrop_agent", {}, {"keys": Gauge(keys), "events_lost": lost}, t)


def test_merge_adds_counts_and_keeps_levels():
    merged = merge(agent(1, keys=5, lost=2), agent(2, keys=7, lost=3))
    assert merged == agent(2, keys=7, lost=5)


def test_buffer_over_its_bound_merges_the_oldest_half_per_series():
    buffer = PointBuffer(max_points=4)
    buffer.add([point(1), point(2, "NETFILTER_DROP"), point(3), point(4, drops=2)])
    buffer.add([point(5)])  # 5 > 4: the oldest 2 merge... but they are two series
    assert len(buffer) == 4 and buffer.dropped == 1 and buffer.merged == 0
    buffer = PointBuffer(max_points=4)
    buffer.add([point(1), point(2), point(3, "NETFILTER_DROP"), point(4, drops=2)])
    buffer.add([point(5)])
    assert list(buffer.points) == [point(2, drops=2, nbytes=120), point(3, "NETFILTER_DROP"),
                                   point(4, drops=2), point(5)]
    assert (buffer.merged, buffer.dropped) == (1, 0)
    # Totals survive merging exactly.
    assert sum(p.fields["drops"] for p in buffer.points if p.tags["reason"] == "NO_SOCKET") == 5


def test_backoff_doubles_up_to_its_cap_with_full_jitter_and_retry_after_wins():
    now, draws = [0.0], []

    def top_of_range(low, high):  # the jitter's highest draw: the delay is the bound itself
        draws.append((low, high))
        return high
    b = Backoff(first=1.0, cap=8.0, clock=lambda: now[0], uniform=top_of_range)
    delays = []
    for _ in range(6):
        b.failed()
        delays.append(b.until - now[0])
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert draws == [(0, d) for d in delays]  # full jitter: anywhere from 0 to the bound
    b.failed(retry_after=30.0)
    assert b.until == 30.0 and not b.ready()
    b.failed(floor=60.0)
    assert b.until == 60.0
    b.succeeded()
    assert b.ready() and b.failures == 0


def test_backoff_stays_at_its_cap_through_a_days_long_outage():
    b = Backoff(first=1.0, cap=300.0, clock=lambda: 0.0, uniform=lambda low, high: high)
    for _ in range(2000):  # 2**1024 is past a float's range
        b.failed()
    assert b.until == 300.0


def test_retry_after_is_read_in_seconds_or_as_an_http_date():
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None


class WriteApi:
    """Answers each write as told: None = accepted, else an HTTP status (with headers)."""

    def __init__(self, *answers):
        self.answers, self.written = list(answers), []

    def write(self, bucket, org, record, write_precision):
        answer = self.answers.pop(0) if self.answers else None
        if answer is None:
            self.written += record
            return
        if answer == "refused":
            raise urllib3.exceptions.NewConnectionError(None, "Connection refused")
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        response = urllib3.response.HTTPResponse(body=io.BytesIO(b'{"message":"nope"}'),
                                                 status=status, headers=headers, reason="R",
                                                 preload_content=True)
        raise ApiException(http_resp=response)


def influx(*answers, now=None):
    clock = now or [0.0]
    return InfluxOutput("http://x", "org", "b", "t", 100, write_api=WriteApi(*answers),
                        clock=lambda: clock[0]), clock


def test_outage_keeps_points_and_delivers_them_in_order(capsys):
    out, now = influx("refused", (503, {"Retry-After": "20"}))
    out.write([point(1)])                     # refused: kept
    now[0] = 1000.0
    out.write([point(2)])                     # 503, Retry-After 20 s: kept
    now[0] = 1010.0
    out.write([point(3)])                     # too early: not even tried
    assert out._write_api.written == [] and len(out.buffer) == 3
    now[0] = 1021.0
    out.write([point(4)])
    assert [line.split()[-1] for line in out._write_api.written] == ["1", "2", "3", "4"]
    health = out.health()
    assert health["write_errors"] == 2 and len(out.buffer) == 0
    assert isinstance(health["buffered_points"], Gauge)  # a level: merging keeps the newer
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("W! InfluxDB unreachable (Connection refused)")
    assert err[1] == "W! InfluxDB answered 503: keeping the points, retrying"
    assert err[2] == "I! InfluxDB takes writes again: 4 buffered points delivered"


def test_rejected_data_is_halved_down_to_the_refused_points_which_alone_are_dropped(capsys):
    out, _ = influx(400, None, 400, 400, None)  # all; 1; 2 and 3; 2; 3
    out.write([point(1), point(2), point(3)])
    assert [line.split()[-1] for line in out._write_api.written] == ["1", "3"]
    assert len(out.buffer) == 0 and out.health()["rejected_points"] == 1
    # One line, and no "takes writes again": the server never failed, it refused the data.
    assert capsys.readouterr().err == 'E! InfluxDB rejected 1 point (400): {"message":"nope"}\n'


def test_points_dropped_from_a_full_buffer_are_said_each_interval_and_at_exit(capsys):
    out, _ = influx("refused")
    out.buffer.max_points = 2
    out.write([point(1)])  # refused: kept, and a backoff
    out.write([point(n) for n in range(2, 9)])
    dropped = out.buffer.dropped
    assert dropped > 0
    out.close()  # the server back: what is buffered goes
    assert capsys.readouterr().err.splitlines()[1:] == [
        f"W! InfluxDB output: {dropped} points dropped, the buffer full (2 points, "
        "--max-buffered-points) while the server does not take them",
        "I! InfluxDB takes writes again: 2 buffered points delivered",
        f"E! {dropped} points not delivered to InfluxDB: 0 still buffered at exit, {dropped} "
        "dropped from a full buffer, 0 refused by the server"]


def test_bad_token_is_said_once_and_retried_slowly(capsys):
    out, now = influx(401, 401, 401)
    out.write([point(1)])
    now[0] = 30.0
    out.write([point(2)])  # within the 60 s floor: no request
    now[0] = 61.0
    out.write([point(3)])
    assert len(out._write_api.answers) == 1 and len(out.buffer) == 3
    assert capsys.readouterr().err.count("E! InfluxDB answered 401: the token is not valid") == 1


@pytest.mark.parametrize("style, lines", [
    ("influx", ["tcpdrop.drops,flags=RST_ACK,reason=NO_SOCKET:3|c",
                "tcpdrop.bytes,flags=RST_ACK,reason=NO_SOCKET:120|c"]),
    ("dogstatsd", ["tcpdrop.drops:3|c|#flags:RST_ACK,reason:NO_SOCKET",
                   "tcpdrop.bytes:120|c|#flags:RST_ACK,reason:NO_SOCKET"]),
    ("none", ["tcpdrop.RST_ACK.NO_SOCKET.drops:3|c", "tcpdrop.RST_ACK.NO_SOCKET.bytes:120|c"]),
])
def test_statsd_lines(style, lines):
    p = Point("tcpdrop", {"reason": "NO_SOCKET", "flags": "RST|ACK"},
              {"drops": 3, "bytes": 120, "stack": "a;b"}, 1)
    assert statsd_lines(p, style) == lines


def test_statsd_none_style_keeps_one_level_per_tag():
    p = Point("tcpdrop", {"frame": "do_softirq.part.0", "host": "web1.example.com"}, {"drops": 1}, 1)
    assert statsd_lines(p, "none") == ["tcpdrop.do_softirq_part_0.web1_example_com.drops:1|c"]


def test_statsd_names_any_bytes_as_utf8_of_one_line():
    name = b"a\tb\xff\nc".decode("utf-8", "surrogateescape")  # `ip netns add` takes any bytes
    [line] = statsd_lines(Point("tcpdrop", {"netns": name}, {"drops": 1}, 1), "influx")
    assert line.encode("utf-8") == "tcpdrop.drops,netns=a_b\ufffd_c:1|c".encode("utf-8")
    [line] = statsd_lines(Point("tcpdrop", {"netns": "x" * 65536}, {"drops": 1}, 1), "influx")
    assert line == f"tcpdrop.drops,netns={'x' * 1024}:1|c"


def test_statsd_levels_are_gauges():
    assert statsd_lines(agent(1, keys=4, lost=0), "none") == ["tcpdrop_agent.keys:4|g",
                                                                "tcpdrop_agent.events_lost:0|c"]


@pytest.mark.parametrize("family, host", [(socket.AF_INET6, "::1"), (socket.AF_INET, "localhost")])
def test_statsd_over_udp_reaches_an_ipv6_address_and_prefers_ipv4_for_a_name(family, host):
    receiver = socket.socket(family, socket.SOCK_DGRAM)
    receiver.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    receiver.settimeout(5)
    out = StatsdOutput(host, receiver.getsockname()[1])
    out.write([Point("tcpdrop", {"reason": "NO_SOCKET"}, {"drops": 3}, 1)])
    assert receiver.recv(65535) == b"tcpdrop.drops,reason=NO_SOCKET:3|c"
    out.close()


def test_statsd_packets_are_utf8_whole_lines_within_the_limit():
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    out = StatsdOutput("127.0.0.1", receiver.getsockname()[1], max_packet=200)
    # Lines of 55 characters but 68 bytes: three fit in 200 characters, not in 200 bytes.
    points = [Point("tcpdrop", {"host": "café-1", "frame": f"Größe_{n:02}_" + "é" * 10},
                    {"drops": n}, 1) for n in range(20)]
    points.insert(7, Point("tcpdrop", {"frame": "x" * 300}, {"drops": 1}, 1))  # over 200 bytes alone
    out.write(points)
    lines = [line.encode() for p in points for line in statsd_lines(p, "influx")]
    packets = []
    while sum(p.count(b"\n") + 1 for p in packets) < len(lines):
        packets.append(receiver.recv(65535))
    assert b"\n".join(packets) == b"\n".join(lines)
    assert lines[0] == "tcpdrop.drops,frame=Größe_00_éééééééééé,host=café-1:0|c".encode()
    assert [len(p) for p in packets if len(p) > 200] == [len(lines[7])]  # the long line, alone
    # Packed: no packet could have taken the next one's first line.
    assert all(len(p) + 1 + len(q.split(b"\n")[0]) > 200 for p, q in zip(packets, packets[1:]))
    assert out.health() == {"send_errors": 0}
    out.close()
