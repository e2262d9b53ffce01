"""The outputs against real servers on loopback: VictoriaMetrics (InfluxDB's v2
write API), InfluxDB 1.x behind Telegraf, Telegraf's statsd input, Etsy statsd."""
import os
import random
import re
import signal
import socket
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from conftest import Netns, eventually, require_root
from hostile_text import POINTS, as_string, as_tag
from telegraf_tcpdrop.emit import Point
from telegraf_tcpdrop.influx_output import InfluxOutput
from test_telegraf import Telegraf, shipped_drop_in

sys.path.insert(0, str(Path(__file__).parent / "peers"))
from servers import EtsyStatsd, InfluxDB1, InfluxDB2, VictoriaMetrics, free_port  # noqa: E402

pytestmark = pytest.mark.kernel
README = Path(__file__).parents[1] / "README.md"


@pytest.fixture
def servers(tmp_path):
    require_root()
    started = []

    def start(kind, *args):
        workdir = tmp_path / f"{kind.__name__}-{len(started)}"
        workdir.mkdir()
        started.append(kind(workdir, *args).start())
        return started[-1]
    yield start
    for server in started:
        server.stop()


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("INFLUX_TOKEN", "not-checked-by-victoria-metrics")


def influx_args(url):
    return ["--output", "influxdb", "--influx-url", url, "--influx-bucket", "tcpdrop",
            "--interval", "300ms"]


def test_victoria_metrics_receives_exact_counts(servers, metrics, netns, token):
    vm = servers(VictoriaMetrics)
    m = metrics(*influx_args(vm.url), "--port", "7700")
    netns.traffic("raw-syns", 7700, 500, 40000)
    syns = dict(dport="7700", flags="SYN", reason="NO_SOCKET", sport="ephemeral")
    assert eventually(lambda: vm.total("tcpdrop_drops", **syns) == 500, timeout=10), vm.series(
        "tcpdrop_drops")
    assert vm.total("tcpdrop_bytes", **syns) == 500 * 40
    [(labels, _)] = [s for s in vm.series("tcpdrop_drops") if s[0].get("dport") == "7700"]
    assert labels["host"] == os.uname().nodename and labels["frame"] == "tcp_v4_rcv"
    assert m.stderr == [l for l in m.stderr if l.startswith("I! ")]


def test_outage_loses_nothing(servers, metrics, netns, token):
    vm = servers(VictoriaMetrics)
    m = metrics(*influx_args(vm.url), "--port", "7701")
    netns.traffic("raw-syns", 7701, 200, 40000)
    assert eventually(lambda: vm.total("tcpdrop_drops", dport="7701", flags="SYN") == 200, 10)
    vm.stop()
    for _ in range(6):  # drops go on through ~10 intervals of outage
        netns.traffic("raw-syns", 7701, 50, 40000)
        time.sleep(0.5)
    vm.start()
    assert eventually(lambda: vm.total("tcpdrop_drops", dport="7701", flags="SYN") == 500, 40), \
        m.stderr
    # The line is said once the points are written: it can come after they are seen.
    assert eventually(lambda: re.search(r"I! InfluxDB takes writes again: \d+ buffered points "
                                        "delivered", "".join(m.stderr)), timeout=5), m.stderr
    warned = [l for l in m.stderr if l.startswith("W! ")]
    assert len(warned) == 1 and warned[0].startswith("W! InfluxDB unreachable (")
    assert vm.total("tcpdrop_agent_write_errors") >= 1
    assert vm.total("tcpdrop_agent_dropped_points") == 0


def test_a_closed_ssh_session_flushes_the_last_interval_to_influxdb(servers, metrics, netns, token):
    """SIGHUP (the terminal that ran it gone) ends it as SIGTERM does: the
    interval's counts are written before it exits."""
    vm = servers(VictoriaMetrics)
    m = metrics("--output", "influxdb", "--influx-url", vm.url, "--influx-bucket", "tcpdrop",
                "--interval", "1h", "--port", "7709")
    netns.traffic("raw-syns", 7709, 9, 40000)
    assert m.stop(signal.SIGHUP) == 0, m.stderr
    assert eventually(lambda: vm.total("tcpdrop_drops", dport="7709", flags="SYN") == 9, 10)


@pytest.fixture(scope="session")
def influxd18_bin():
    """InfluxDB 1.8, the first 1.x with the v2 write API (tests/peers/build-influxdb1.sh)."""
    return build_peer("build-influxdb1.sh")


def test_influxdb_1_8_with_user_password_token_and_db_rp_bucket(servers, metrics, netns,
                                                                influxd18_bin, monkeypatch):
    """Authentication on: the token USER:PASSWORD is the one user's; a wrong
    password is refused (401), one line, and nothing written."""
    influxdb = servers(InfluxDB1, influxd18_bin, 25_000_000, ("someone", "secret"))
    influxdb.query("CREATE DATABASE tcp", "tcp")
    monkeypatch.setenv("INFLUX_TOKEN", "someone:wrong")
    refused = metrics("--output", "influxdb", "--influx-url", influxdb.url, "--influx-bucket",
                      "tcp/autogen", "--interval", "300ms", "--port", "7702")
    monkeypatch.setenv("INFLUX_TOKEN", "someone:secret")
    metrics("--output", "influxdb", "--influx-url", influxdb.url, "--influx-bucket", "tcp/autogen",
            "--interval", "300ms", "--port", "7702")
    netns.traffic("raw-syns", 7702, 120, 40000)
    query = """SELECT sum("drops") FROM "tcpdrop" WHERE "dport" = '7702' AND "flags" = 'SYN'"""

    def drops():
        series = influxdb.query(query, "tcp")["results"][0].get("series", [])
        return series[0]["values"][0][1] if series else 0
    assert eventually(lambda: drops() == 120, timeout=15), influxdb.query(query, "tcp")
    assert eventually(lambda: any("E! InfluxDB answered 401: the token is not valid" in line
                                  for line in refused.stderr), timeout=5), refused.stderr
    time.sleep(1)  # more intervals: had the refused one written, its drops would be in by now
    assert drops() == 120


def test_readme_drops_per_container_query_on_influxdb_1_8(servers, metrics, influxd18_bin, monkeypatch):
    """SYNs to a closed port in two namespaces: the README's query splits them
    by namespace name (each SYN and its RST, both NO_SOCKET)."""
    influxdb = servers(InfluxDB1, influxd18_bin)
    influxdb.query("CREATE DATABASE telegraf", "telegraf")
    monkeypatch.setenv("INFLUX_TOKEN", "-:-")
    spaces = [Netns(), Netns()]
    try:
        metrics("--output", "influxdb", "--influx-url", influxdb.url, "--influx-bucket",
                "telegraf/autogen", "--interval", "300ms", "--port", "7704")
        spaces[0].traffic("raw-syns", 7704, 7, 40000)
        spaces[1].traffic("raw-syns", 7704, 11, 40000)
        expected = {(spaces[0].name, "NO_SOCKET"): 14, (spaces[1].name, "NO_SOCKET"): 22}

        def per_namespace():
            series = influxdb.query(readme_query("Drops per container"), "telegraf")["results"][0]
            return {(s["tags"]["netns"], s["tags"]["reason"]): s["values"][0][1]
                    for s in series.get("series", [])}
        assert eventually(lambda: per_namespace() == expected, timeout=15), per_namespace()
        assert {s["tags"]["host"] for s in influxdb.query(readme_query("Drops per container"), "telegraf")
                ["results"][0]["series"]} == {os.uname().nodename}
    finally:
        for ns in spaces:
            ns.delete()


def test_a_tag_value_ending_in_a_backslash_leaves_the_next_tag_intact(servers, influxd18_bin):
    influxdb = servers(InfluxDB1, influxd18_bin)
    influxdb.query("CREATE DATABASE tcp", "tcp")
    out = InfluxOutput(influxdb.url, "-", "tcp/autogen", "-:-", max_points=10)
    out.write([Point("tcpdrop", {"frame": "x\\", "host": "web1", "reason": "a\\,b"}, {"drops": 3},
                     1_700_000_000_000_000_000)])
    out.close()
    [series] = influxdb.query('SELECT * FROM "tcpdrop"', "tcp")["results"][0]["series"]
    assert [dict(zip(series["columns"], row)) for row in series["values"]] == [
        {"time": "2023-11-14T22:13:20Z", "drops": 3, "frame": "x", "host": "web1", "reason": "a\\,b"}]


def test_a_request_too_large_is_split_and_a_point_too_large_alone_is_counted(servers, influxd18_bin,
                                                                            capsys):
    """InfluxDB 1.8 answers 413 to a request body over its max-body-size: the
    output halves the request until the parts fit; a point too large alone is
    dropped, counted in rejected_points, and said once."""
    influxdb = servers(InfluxDB1, influxd18_bin, 4000)
    influxdb.query("CREATE DATABASE tcp", "tcp")
    out = InfluxOutput(influxdb.url, "-", "tcp/autogen", "-:-", max_points=1000)
    noise = random.Random(7)  # random text, which gzip cannot shrink below the limit

    def text(length):
        return "".join(noise.choices(string.ascii_letters, k=length))

    def point(n, **stack):
        return Point("tcpdrop", {"frame": text(60), "n": str(n)}, {"drops": n, **stack},
                     1_700_000_000_000_000_000)
    first = [point(n, stack=text(8000)) if n == 120 else point(n) for n in range(200)]
    second = [point(200, stack=text(8000)), point(201)]
    out.write(first)  # ~12 kB gzipped: 413, then in halves
    out.write(second)
    health = out.health()
    out.close()
    stored = influxdb.query('SELECT "drops" FROM "tcpdrop" GROUP BY "n"', "tcp")["results"][0]["series"]
    fitting = {n for n in range(202) if n not in (120, 200)}
    assert {int(s["tags"]["n"]) for s in stored} == fitting
    assert all(s["values"][0][1] == int(s["tags"]["n"]) for s in stored)
    # The store keeps one point per series and time: the server's own count shows none came twice.
    stats = influxdb.http_stats()
    assert stats["pointsWrittenOK"] == len(fitting), stats
    assert (health["rejected_points"], health["buffered_points"]) == (2, 0)
    assert health["write_errors"] == stats["clientError"]  # each 413, on both sides
    assert capsys.readouterr().err == \
        'E! InfluxDB rejected 1 point (413): {"error":"Request Entity Too Large"}\n' \
        "E! 2 points not delivered to InfluxDB: 0 still buffered at exit, 0 dropped from a " \
        "full buffer, 2 refused by the server\n"


def server_and_output(servers, version, influxd18_bin, influxd2_bin):
    """A new InfluxDB of that version (1.8: database tcp; 2.x: its bucket), and
    an InfluxOutput to it."""
    if version == "1.8":
        influxdb = servers(InfluxDB1, influxd18_bin)
        influxdb.query("CREATE DATABASE tcp", "tcp")
        return influxdb, InfluxOutput(influxdb.url, "-", "tcp/autogen", "-:-", max_points=10_000)
    influxdb = servers(InfluxDB2, influxd2_bin)
    return influxdb, InfluxOutput(influxdb.url, InfluxDB2.ORG, InfluxDB2.BUCKET, InfluxDB2.TOKEN,
                                  max_points=10_000)


@pytest.mark.parametrize("version", ["1.8", "2.x"])
def test_one_refused_point_is_dropped_alone(servers, influxd18_bin, influxd2_bin, capsys, version):
    """A point whose field type conflicts with the series' (drops, a string):
    2.x refuses the whole request for it, 1.8 writes the rest and says
    "partial write". Halved down to it, the other 4,999 are stored."""
    def point(n, drops):
        return Point("tcpdrop", {"n": str(n)}, {"drops": drops}, 1_700_000_000_000_000_000)
    influxdb, out = server_and_output(servers, version, influxd18_bin, influxd2_bin)
    out.write([point(0, 1)])  # the series' type: integer
    out.write([point(n, "many" if n == 2500 else n) for n in range(1, 5000)] + [point(5000, 5000)])
    health = out.health()
    out.close()
    if version == "1.8":
        series = influxdb.query('SELECT "drops" FROM "tcpdrop" GROUP BY "n"', "tcp")["results"][0]["series"]
        stored = {int(s["tags"]["n"]): s["values"][0][1] for s in series}
    else:
        rows = influxdb.flux('from(bucket: "telegraf") |> range(start: 0) |> filter(fn: (r) => '
                             'r._measurement == "tcpdrop")')
        stored = {int(row["n"]): int(row["_value"]) for row in rows}
    assert stored == {n: n for n in range(5001) if n != 2500} | {0: 1}
    assert (health["rejected_points"], health["buffered_points"]) == (1, 0)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and re.match(r"E! InfluxDB rejected 1 point \((400|422)\): .*drops", err[0])
    assert err[1] == "E! 1 points not delivered to InfluxDB: 0 still buffered at exit, " \
        "0 dropped from a full buffer, 1 refused by the server"


@settings(max_examples=3, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.data_too_large,
                                 HealthCheck.too_slow])
@given(values=POINTS)
@pytest.mark.parametrize("version", ["1.8", "2.x"])
def test_any_string_as_a_tag_and_a_field_is_stored_as_the_readme_says(servers, influxd18_bin, influxd2_bin,
                                                                        version, values):
    """Each value as a tag and as a string field, a point each, through the
    output to the server's write endpoint: none refused, each stored as
    written or as its documented replacement."""
    influxdb, out = server_and_output(servers, version, influxd18_bin, influxd2_bin)
    out.write([Point("m", {"v": value}, {"i": i, "s": value}, 1_700_000_000_000_000_000 + i)
               for i, value in enumerate(values)])
    health = out.health()
    out.close()
    if version == "1.8":
        [series] = influxdb.query('SELECT "i", "s", "v" FROM "m"', "tcp")["results"][0]["series"]
        stored = {i: (v or "", s) for _, i, s, v in series["values"]}
    else:
        rows = influxdb.flux('from(bucket: "telegraf") |> range(start: 0) |> filter(fn: (r) => '
                             'r._measurement == "m") |> pivot(rowKey: ["_time"], columnKey: ["_field"], '
                             'valueColumn: "_value")')
        stored = {int(row["i"]): (row.get("v", ""), row["s"]) for row in rows}
    influxdb.stop()  # each example has a server of its own
    assert (health["rejected_points"], health["write_errors"]) == (0, 0)
    assert stored == {i: (as_tag(v), as_string(v)) for i, v in enumerate(values)}


def test_client_error_is_one_request_and_one_line(servers, metrics, influxd18_bin, token):
    """A database that does not exist: InfluxDB 1.8 answers 404 to every write,
    and a 404 is not retried for a minute."""
    influxdb = servers(InfluxDB1, influxd18_bin)
    m = metrics("--output", "influxdb", "--influx-url", influxdb.url, "--influx-bucket",
                "nosuchdb/autogen", "--interval", "300ms")
    assert eventually(lambda: influxdb.http_stats()["writeReq"] >= 1, timeout=5)
    time.sleep(2)  # six more intervals: a retry, had there been one, would have come by now
    stats = influxdb.http_stats()
    assert (stats["writeReq"], stats["clientError"]) == (1, 1), stats
    errors = [l for l in m.stderr if l.startswith("E! ")]
    assert errors == ["E! InfluxDB answered 404: no such bucket or organization (--influx-bucket, "
                      "--influx-org); keeping the points and retrying every few minutes\n"]
    assert m.proc.poll() is None


def readme_query(title, language="sql"):
    """The first query in the given language after the README text title."""
    text = README.read_text()
    block = text[text.index(title):]
    return block.split(f"```{language}\n", 1)[1].split("```", 1)[0].strip()


def build_peer(script):
    """A server built from source by tests/peers/SCRIPT (cached): its binary's path."""
    require_root()
    result = subprocess.run(["bash", str(Path(__file__).parent / "peers" / script)],
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def influxd2_bin():
    """InfluxDB 2.x built from its Go module and Flux's crates (build-influxdb2.sh)."""
    return build_peer("build-influxdb2.sh")


def test_influxdb2_receives_exact_counts_and_answers_the_readme_flux_query(
        servers, metrics, netns, influxd2_bin, monkeypatch):
    influxdb = servers(InfluxDB2, influxd2_bin)
    monkeypatch.setenv("INFLUX_TOKEN", InfluxDB2.TOKEN)
    metrics("--output", "influxdb", "--influx-url", influxdb.url, "--influx-org", InfluxDB2.ORG,
            "--influx-bucket", InfluxDB2.BUCKET, "--interval", "300ms", "--port", "7703")
    netns.traffic("raw-syns", 7703, 300, 40000)
    total = ('from(bucket: "telegraf") |> range(start: -1h) |> filter(fn: (r) => '
             'r._measurement == "tcpdrop" and r._field == "drops" and r.dport == "7703" '
             'and r.flags == "SYN") |> group() |> sum()')

    def drops():
        rows = influxdb.flux(total)
        return int(rows[0]["_value"]) if rows else 0
    assert eventually(lambda: drops() == 300, timeout=15), influxdb.flux(total)
    new_sites = influxdb.flux(readme_query("The same with Flux", "flux"))
    assert {(row["frame"], row["host"]) for row in new_sites} >= {("tcp_v4_rcv", os.uname().nodename)}


def test_readme_top_reasons_query_on_influxdb_1_through_telegraf(servers, telegraf_bin, tmp_path,
                                                                  netns):
    influxdb = servers(InfluxDB1)
    influxdb.query("CREATE DATABASE telegraf", "telegraf")
    t = Telegraf(telegraf_bin, tmp_path, shipped_drop_in())
    t.args += ["--config", str(tmp_path / "influx.conf")]
    (tmp_path / "influx.conf").write_text(
        f'[[outputs.influxdb]]\n  urls = ["{influxdb.url}"]\n  database = "telegraf"\n')
    t.start()
    try:
        assert eventually(lambda: "attached" in t.logged(), timeout=15), t.logged()
        netns.drop_input_port(7801)
        netns.traffic("raw-syns", 7800, 30, 40000)          # 30 SYN + 30 RST: NO_SOCKET
        for sport in range(40100, 40105):                    # 5 SYNs: NETFILTER_DROP
            netns.traffic("syn", "127.0.0.1", 7801, sport, 0.1)
        query = readme_query("Top 5 drop reasons per host")

        def reasons():
            result = influxdb.query(query, "telegraf")["results"][0]
            rows = [row for s in result.get("series", []) for row in s["values"]]
            return {row[2]: row[1] for row in rows}  # time, top, reason
        assert eventually(lambda: reasons().get("NO_SOCKET", 0) >= 60 and
                          reasons().get("NETFILTER_DROP", 0) >= 5, timeout=15), reasons()
        top = reasons()
        assert max(top, key=top.get) == "NO_SOCKET"
        assert {"NO_SOCKET", "NETFILTER_DROP"} <= set(top) and len(top) <= 5
    finally:
        t.stop()


STATSD_TELEGRAF = """
[agent]
  interval = "1s"
  flush_interval = "1s"
  omit_hostname = true
[[inputs.statsd]]
  protocol = "{protocol}"
  service_address = "127.0.0.1:{port}"
  datadog_extensions = true
  delete_counters = true
[[outputs.file]]
  files = ["{out}"]
  data_format = "json"
"""


@pytest.mark.parametrize("style, protocol", [("influx", "udp"), ("dogstatsd", "udp"),
                                             ("influx", "tcp")])
def test_telegraf_statsd_input_parses_our_tags(telegraf_bin, tmp_path, metrics, netns, style,
                                               protocol):
    port = free_port()
    t = Telegraf(telegraf_bin, tmp_path, "")
    (tmp_path / "telegraf.conf").write_text(STATSD_TELEGRAF.format(protocol=protocol, port=port,
                                                                   out=t.out))
    t.start()
    try:
        assert eventually(lambda: "Started the statsd service" in t.logged() or
                          "Listening on" in t.logged(), timeout=15), t.logged()
        m = metrics("--output", "statsd", "--statsd-port", str(port), "--statsd-protocol",
                    protocol, "--statsd-tags", style, "--interval", "300ms", "--port", "7900")
        netns.traffic("raw-syns", 7900, 25, 40000)

        def counted():
            return sum(x["fields"]["value"] for x in t.metrics()
                       if x["name"] == "tcpdrop_drops" and x["tags"].get("dport") == "7900"
                       and x["tags"].get("flags") == "SYN")
        assert eventually(lambda: counted() == 25, timeout=15), t.metrics()[-5:]
        [tags] = {tuple(sorted(x["tags"].items())) for x in t.metrics()
                  if x["name"] == "tcpdrop_drops" and x["tags"].get("flags") == "SYN"}
        assert dict(tags) == {"dport": "7900", "family": "4", "flags": "SYN",
                              "frame": "tcp_v4_rcv", "host": os.uname().nodename,
                              "metric_type": "counter", "netns": netns.name,
                              "reason": "NO_SOCKET", "sport": "ephemeral", "state": "NONE"}
        assert m.proc.poll() is None
    finally:
        t.stop()


ETSY_NAMES = {
    "influx": "tcpdrop.dropsdport=7901family=4flags=SYNframe=tcp_v4_rcvhost={host}"
              "netns={netns}reason=NO_SOCKETsport=ephemeralstate=NONE",
    "dogstatsd": "tcpdrop.drops;dport=7901;family=4;flags=SYN;frame=tcp_v4_rcv;host={host};"
                 "netns={netns};reason=NO_SOCKET;sport=ephemeral;state=NONE",
    "none": "tcpdrop.7901.4.SYN.tcp_v4_rcv.{host}.{netns}.NO_SOCKET.ephemeral.NONE.drops",
}


@pytest.mark.parametrize("style", ["influx", "dogstatsd", "none"])
def test_etsy_statsd_counts_every_tag_style(servers, metrics, netns, style):
    etsy = servers(EtsyStatsd)
    metrics("--output", "statsd", "--statsd-port", str(etsy.port), "--statsd-tags", style,
            "--interval", "300ms", "--port", "7901")
    netns.traffic("raw-syns", 7901, 17, 40000)
    name = ETSY_NAMES[style].format(host=os.uname().nodename, netns=netns.name)
    assert eventually(lambda: etsy.counters().get(name) == 17, timeout=10), \
        etsy.counters()


@pytest.mark.parametrize("host, seen", [("café-1", "caf-1"),
                                        ("caf\udce9-2", "caf-2")])  # byte 0xe9 alone: not UTF-8
def test_a_non_ascii_host_name_reaches_etsy_statsd(servers, metrics, netns, host, seen):
    """The host tag is the kernel's host name, any bytes: UTF-8, or not (as
    U+FFFD), in a UTS namespace of the monitor's own. (It raised
    UnicodeEncodeError, ending the monitor.)"""
    etsy = servers(EtsyStatsd)
    metrics("--output", "statsd", "--statsd-port", str(etsy.port), "--statsd-tags", "dogstatsd",
            "--interval", "300ms", "--port", "7903",
            prefix=("unshare", "--uts", "sh", "-c",
                    'printf %s "$0" > /proc/sys/kernel/hostname && exec "$@"', host))
    netns.traffic("raw-syns", 7903, 13, 40000)
    # Etsy statsd keeps only [A-Za-z0-9_.;=-] of a name: café-1 is caf-1 there.
    name = ETSY_NAMES["dogstatsd"].replace("7901", "7903").format(host=seen, netns=netns.name)
    assert eventually(lambda: etsy.counters().get(name) == 13, timeout=10), etsy.counters()


MOVE_STATSD = """
import sys, time
from pathlib import Path
from telegraf_tcpdrop import statsd_output
from telegraf_tcpdrop.emit import Point

statsd_output.RESOLVE_SECONDS = 0.2
out = statsd_output.StatsdOutput("statsd.test", int(sys.argv[2]))
out.write([Point("tcpdrop", {}, {"drops": 1}, 1)])
Path(sys.argv[1]).write_text("127.0.0.2 statsd.test\\n")  # the server moved
time.sleep(0.3)
out.write([Point("tcpdrop", {}, {"drops": 2}, 1)])
"""


def test_statsd_over_udp_follows_its_server_to_a_new_address(tmp_path):
    """The name is looked up again (every RESOLVE_SECONDS; 0.2 s here): the
    datagrams follow a server that moved. The real resolver, reading an
    /etc/hosts of the sender's own (a mount namespace)."""
    require_root()
    port = free_port()
    old, new = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    for receiver, address in ((old, "127.0.0.1"), (new, "127.0.0.2")):
        receiver.bind((address, port))
        receiver.settimeout(10)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 statsd.test\n")
    subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts),
                    sys.executable, "-c", MOVE_STATSD, str(hosts), str(port)], check=True, timeout=30)
    assert (old.recv(100), new.recv(100)) == (b"tcpdrop.drops:1|c", b"tcpdrop.drops:2|c")


def test_statsd_down_then_up_over_tcp(servers, metrics, netns, tmp_path):
    port = free_port()
    m = metrics("--output", "statsd", "--statsd-port", str(port), "--statsd-protocol", "tcp",
                "--statsd-tags", "none", "--interval", "200ms", "--port", "7902")
    assert eventually(lambda: any(l.startswith("W! StatsD at tcp://localhost:") for l in m.stderr),
                      timeout=5), m.stderr
    time.sleep(1)
    assert m.proc.poll() is None and len([l for l in m.stderr if l.startswith("W! ")]) == 1
    etsy = EtsyStatsd(tmp_path, "tcp")
    etsy.port = port
    etsy.start()
    try:
        netns.traffic("raw-syns", 7902, 9, 40000)
        name = f"tcpdrop.7902.4.SYN.tcp_v4_rcv.{os.uname().nodename}.{netns.name}.NO_SOCKET.ephemeral.NONE.drops"
        assert eventually(lambda: etsy.counters().get(name) == 9, timeout=10), etsy.counters()
        assert eventually(lambda: any(l.startswith("I! StatsD at tcp://localhost:") for l in m.stderr),
                          timeout=5), m.stderr  # its line can come after the counts
    finally:
        etsy.stop()
