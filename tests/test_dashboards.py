"""The dashboards in dashboards/, proven by their queries: the committed files
are what dashboards/generate.py makes; every panel's and every variable's
query, taken from the files as Grafana or InfluxDB would take it, runs against
a real server fed by the real monitor with real drops, and answers what those
drops were. InfluxQL runs on InfluxDB 1.8, Flux on InfluxDB 2.x, and the
InfluxDB 2 template is applied with the real `influx` CLI and read back
through InfluxDB's API.

Queries run verbatim but for what Grafana or InfluxDB's UI fills in
themselves, for the range "last 1 hour" (Grafana's interval for it on a
panel ~1000 pixels wide is 5s), with one host selected and All for the rest:

- Grafana, InfluxQL: $timeFilter -> time > now() - 1h, $__interval_ms -> 5000,
  $__interval -> 5s;
- Grafana, Flux: v.timeRangeStart, v.timeRangeStop -> the range's ends as
  RFC 3339 times, v.windowPeriod -> 5s, v.defaultBucket -> "telegraf" (the
  data source's bucket);
- Grafana, both: ${host:regex} -> this host's name, regex-escaped as Grafana's
  regex format does; ${reason:regex}, ${netns:regex} -> .* (All: custom all value);
- InfluxDB's UI: an `option v = {...}` with the same range, window and
  choices, after the query's imports (how the UI passes its variables).
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import Metrics, Netns, eventually, require_root
from test_outputs import build_peer

sys.path.insert(0, str(Path(__file__).parent / "peers"))
from servers import InfluxDB1, InfluxDB2, http  # noqa: E402

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).parents[1]
DASHBOARDS = ROOT / "dashboards"
PICTURE = ROOT / "docs" / "dashboard-reasons.png"
HOST = os.uname().nodename
PORT = 7719        # the closed port every drop is sent to; the monitors count it alone
WINDOW_S = 5       # $__interval, v.windowPeriod
ALL = "*"          # the template's "every value" (dashboards/generate.py)

INFLUXQL_MACROS = [("$timeFilter", "time > now() - 1h"), ("$__interval_ms", str(WINDOW_S * 1000)),
                   ("$__interval", f"{WINDOW_S}s")]


def flux_macros():
    now = datetime.now(timezone.utc)
    return [("v.timeRangeStart", rfc3339(now - timedelta(hours=1))), ("v.timeRangeStop", rfc3339(now)),
            ("v.windowPeriod", f"{WINDOW_S}s"), ("v.defaultBucket", f'"{InfluxDB2.BUCKET}"')]


def rfc3339(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# SYNs from raw sockets to the closed port, in rounds a window apart (a graph
# with a shape): namespace "a" has no listener (each SYN and the RST it gets
# are dropped, NO_SOCKET), "b" drops the port with nftables (NETFILTER_DROP).
SYNS_A, SYNS_B = [23, 13, 31, 19, 29, 7, 17, 11], [11, 17, 5, 3, 13, 19, 2, 23]
# Then, once those are stored: connect() over IPv6 in "a", a new drop site.
SYNS_A_IPV6 = 7
# Each panel: how its answer is read (a rate per tag set, a top list, first
# seen per drop site, the monitor's health), and the tags that key it.
PANELS = {
    "Drops per second by reason": ("rate", ["reason"]),
    "Top drop sites": ("top", ["frame"]),
    "Top destination ports": ("top", ["dport"]),
    "Top source ports": ("top", ["sport"]),
    "Drops per second by TCP state and flags": ("rate", ["state", "flags"]),
    "Drops per second by network namespace": ("rate", ["netns"]),
    "New drop sites": ("first", ["frame"]),
    "Monitor health": ("health", []),
}
HEALTH_FIELDS = {"map_portless_drops", "map_overflow_drops", "probe_misses", "unreadable",
                 "listen_misses", "listen_untracked",
                 "events_lost", "events_ratelimited", "stacks_lost"}


def grafana_regex(value):
    """Grafana's regex format of one value (kbn.regexEscape)."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m.group(), value)


def grafana(query, macros, reason=".*", netns=".*"):
    for macro, value in macros + [("${host:regex}", grafana_regex(HOST)),
                                  ("${reason:regex}", reason), ("${netns:regex}", netns)]:
        query = query.replace(macro, value)
    return query


def influxdb_ui(query, reason=ALL):
    """The query with InfluxDB's UI variables set, as an option after its imports."""
    option = (f"option v = {{timeRangeStart: -1h, timeRangeStop: now(), windowPeriod: {WINDOW_S}s, "
              f'tcpdrop_bucket: "{InfluxDB2.BUCKET}", tcpdrop_host: "{HOST}", '
              f'tcpdrop_reason: "{reason}", tcpdrop_netns: "{ALL}"}}\n')
    lines = query.splitlines(keepends=True)
    imports = next((i for i, line in enumerate(lines)
                    if line.strip() and not line.startswith("import ")), len(lines))
    return "".join(lines[:imports]) + option + "".join(lines[imports:])


def influxql_rows(influxdb, query):
    """Rows of an InfluxQL answer as dicts, each series' tags merged in."""
    try:
        result = influxdb.query(query, "telegraf")["results"][0]
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{e}: {e.read().decode()}\n{query}") from None
    assert "error" not in result, f"{result['error']}\n{query}"
    return [{**series.get("tags", {}), **dict(zip(series["columns"], values))}
            for series in result.get("series", []) for values in series["values"]]


def flux_rows(influxdb, query):
    try:
        return influxdb.flux(query)
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{e}: {e.read().decode()}\n{query}") from None


def instant(text):
    """An RFC 3339 time as InfluxDB writes it (nanoseconds) as a datetime."""
    head, _, fraction = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(fraction + '000000')[:6]}+00:00")


def answer(kind, tags, rows, flux):
    """What a panel says: {tag values: drops} for a rate (the rates times the
    window: the drops in it) or a top list, {frame: first seen} for new drop
    sites, {field: total} for health."""
    def key(row):
        return tuple(row.get(tag) for tag in tags)
    totals = {}
    if kind in ("rate", "top"):
        value = ("_value" if kind == "rate" else "drops") if flux else "drops"
        scale = WINDOW_S if kind == "rate" else 1
        for row in rows:
            if row[value] not in (None, ""):
                totals[key(row)] = totals.get(key(row), 0) + float(row[value]) * scale
        return {k: round(v) for k, v in totals.items()}
    if kind == "first":
        return {row["frame"]: instant(row["_time" if flux else "time"]) for row in rows}
    for row in rows:  # health: InfluxQL has a column per field, Flux a row per field
        fields = {row["_field"]: row["_value"]} if flux else {
            k: v for k, v in row.items() if k != "time"}
        for field, count in fields.items():
            totals[field] = totals.get(field, 0) + (int(count) if count not in (None, "") else 0)
    return totals


class Drops:
    """The drops made for these tests, and what each panel must answer for them."""

    def __init__(self, a, b):
        self.a, self.b = a, b
        syns_a, syns_b = sum(SYNS_A), sum(SYNS_B)
        to_port = syns_a + syns_b + SYNS_A_IPV6
        self.expected = {
            "Drops per second by reason": {("NO_SOCKET",): 2 * syns_a + SYNS_A_IPV6,
                                           ("NETFILTER_DROP",): syns_b},
            "Top drop sites": {("tcp_v4_rcv",): 2 * syns_a, ("nft_do_chain",): syns_b,
                               ("tcp_v6_rcv",): SYNS_A_IPV6},
            "Top destination ports": {(str(PORT),): to_port, ("ephemeral",): syns_a},
            "Top source ports": {("ephemeral",): to_port, (str(PORT),): syns_a},
            "Drops per second by TCP state and flags": {("NONE", "SYN"): to_port,
                                                        ("NONE", "RST|ACK"): syns_a},
            "Drops per second by network namespace": {(a.name,): 2 * syns_a + SYNS_A_IPV6,
                                                      (b.name,): syns_b},
        }
        self.total = 2 * syns_a + syns_b + SYNS_A_IPV6

    def check(self, title, rows, flux):
        """Asserts what the panel of that title answered; returns it."""
        kind, tags = PANELS[title]
        said = answer(kind, tags, rows, flux)
        if kind == "first":
            assert set(said) == {"tcp_v4_rcv", "nft_do_chain", "tcp_v6_rcv"}, said
            assert {row["host"] for row in rows} == {HOST}
            # IPv6 came later, after the first drops were stored: a new drop site.
            assert said["tcp_v6_rcv"] >= self.ipv6_sent > max(said["tcp_v4_rcv"],
                                                              said["nft_do_chain"]), said
            assert min(said.values()) >= self.started, said
        elif kind == "health":
            assert set(said) == HEALTH_FIELDS, said
            # Our drops are a few tag sets; no --stacks: no sample to lose.
            assert said["map_overflow_drops"] == said["events_lost"] == said["stacks_lost"] == 0
            assert all(count >= 0 for count in said.values()), said
        else:
            assert said == self.expected[title], (title, said)
        return said

    def send_rounds(self):
        self.started = datetime.now(timezone.utc)
        for a_syns, b_syns in zip(SYNS_A, SYNS_B):
            self.a.traffic("raw-syns", PORT, a_syns, 40000)
            self.b.traffic("raw-syns", PORT, b_syns, 40000)
            time.sleep(WINDOW_S / 2)

    def send_ipv6(self):
        self.ipv6_sent = datetime.now(timezone.utc)
        self.a.traffic("syns", "::1", PORT, 40000, SYNS_A_IPV6)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """InfluxDB 1.8 and 2.x, each written to by its own monitor (--port PORT),
    holding the drops of Drops, all of them."""
    require_root()
    influxd1, influxd2 = build_peer("build-influxdb1.sh"), build_peer("build-influxdb2.sh")
    servers, monitors, spaces = [], [], [Netns(), Netns()]
    try:
        for kind, binary in ((InfluxDB1, influxd1), (InfluxDB2, influxd2)):
            workdir = tmp_path_factory.mktemp(kind.__name__)
            servers.append(kind(workdir, binary).start())
        influxdb1, influxdb2 = servers
        influxdb1.query("CREATE DATABASE telegraf", "telegraf")
        common = ["--interval", "300ms", "--port", str(PORT), "--output", "influxdb"]
        with pytest.MonkeyPatch.context() as env:
            env.setenv("INFLUX_TOKEN", "-:-")  # 1.8 without auth takes any user:password
            monitors.append(Metrics(*common, "--influx-url", influxdb1.url,
                                    "--influx-bucket", "telegraf/autogen"))
            env.setenv("INFLUX_TOKEN", InfluxDB2.TOKEN)
            monitors.append(Metrics(*common, "--influx-url", influxdb2.url, "--influx-org",
                                    InfluxDB2.ORG, "--influx-bucket", InfluxDB2.BUCKET))
        drops = Drops(*spaces)
        spaces[1].drop_input_port(PORT)
        drops.send_rounds()

        def stored_in_both(total):
            one = influxql_rows(influxdb1, 'SELECT sum("drops") FROM "tcpdrop"')
            two = flux_rows(influxdb2, f'from(bucket: "{InfluxDB2.BUCKET}") |> range(start: -1h) '
                                       '|> filter(fn: (r) => r._measurement == "tcpdrop" and '
                                       'r._field == "drops") |> group() |> sum()')
            return (one and one[0]["sum"] == total) and (two and int(two[0]["_value"]) == total)
        first = drops.total - SYNS_A_IPV6
        assert eventually(lambda: stored_in_both(first), timeout=20), "first drops not stored"
        time.sleep(1)  # the new site's first drop, clearly after the others'
        drops.send_ipv6()
        assert eventually(lambda: stored_in_both(drops.total), timeout=20), "IPv6 drops not stored"
        yield influxdb1, influxdb2, drops
    finally:
        exits = [monitor.stop() for monitor in monitors]
        for server in servers:
            server.stop()
        for ns in spaces:
            ns.delete()
    for monitor, code in zip(monitors, exits):
        assert code == 0, monitor.stderr
        assert all(line[:3] in ("E! ", "W! ", "I! ", "D! ") for line in monitor.stderr), monitor.stderr


def grafana_file(language):
    return json.loads((DASHBOARDS / f"grafana-{language}.json").read_text())


def panel_queries(board):
    """(title, query) of every panel's every target."""
    found = [(panel["title"], target["query"]) for panel in board["panels"]
             for target in panel["targets"]]
    assert sorted({title for title, _ in found}) == sorted(PANELS), "a panel without expectations"
    return found


def test_committed_files_are_the_generators_output():
    if importlib.util.find_spec("grafana_foundation_sdk") is None:
        pytest.fail("grafana-foundation-sdk is missing: pip install -e '.[dashboards]'")
    spec = importlib.util.spec_from_file_location("dashboards_generate", DASHBOARDS / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    for name, text in generate.outputs().items():
        assert (DASHBOARDS / name).read_text() == text, \
            f"dashboards/{name} is stale: run .venv/bin/python dashboards/generate.py"
    assert sorted(p.name for p in DASHBOARDS.iterdir() if p.suffix == ".json") == \
        sorted(generate.outputs())


def test_grafana_influxql_panels_on_influxdb_1_8(stored):
    influxdb1, _, drops = stored
    for title, query in panel_queries(grafana_file("influxql")):
        rows = influxql_rows(influxdb1, grafana(query, INFLUXQL_MACROS))
        print(title, drops.check(title, rows, flux=False))
        if title == "Drops per second by reason":  # one reason chosen: that series alone
            only = influxql_rows(influxdb1, grafana(query, INFLUXQL_MACROS, reason="NETFILTER_DROP"))
            assert answer("rate", ["reason"], only, False) == {
                ("NETFILTER_DROP",): sum(SYNS_B)}


def test_reason_panel_picture(stored, tmp_path):
    """The README's picture: the reason panel's InfluxQL answer, drawn; into
    docs/dashboard-reasons.png with TCPDROP_WRITE_DOCS=1, else into a scratch dir."""
    influxdb1, _, _ = stored
    [query] = [query for title, query in panel_queries(grafana_file("influxql"))
               if title == "Drops per second by reason"]
    picture = PICTURE if os.environ.get("TCPDROP_WRITE_DOCS") == "1" else tmp_path / PICTURE.name
    plot_reasons(influxql_rows(influxdb1, grafana(query, INFLUXQL_MACROS)), picture)
    assert picture.stat().st_size > 10_000


def test_grafana_flux_panels_on_influxdb_2(stored):
    _, influxdb2, drops = stored
    for title, query in panel_queries(grafana_file("flux")):
        rows = flux_rows(influxdb2, grafana(query, flux_macros()))
        print(title, drops.check(title, rows, flux=True))
        if title == "Drops per second by network namespace":
            one = flux_rows(influxdb2, grafana(query, flux_macros(),
                                               netns=grafana_regex(drops.b.name)))
            assert answer("rate", ["netns"], one, True) == {(drops.b.name,): sum(SYNS_B)}


def variable_values(drops):
    """What each variable lists: reason and netns those of the selected host."""
    return {"host": {HOST}, "reason": {"NO_SOCKET", "NETFILTER_DROP"},
            "netns": {drops.a.name, drops.b.name}}


def test_grafana_variables(stored):
    influxdb1, influxdb2, drops = stored
    for language in ("influxql", "flux"):
        variables = [v for v in grafana_file(language)["templating"]["list"] if v["type"] == "query"]
        assert [v["name"] for v in variables] == ["host", "reason", "netns"]
        for variable in variables:
            if language == "influxql":
                rows = influxql_rows(influxdb1, grafana(variable["query"], INFLUXQL_MACROS))
                values = {row["value"] for row in rows}
            else:
                rows = flux_rows(influxdb2, grafana(variable["query"], flux_macros()))
                values = {row["_value"] for row in rows}
            assert values == variable_values(drops)[variable["name"]], (language, variable["name"])


@pytest.fixture(scope="module")
def influx_cli():
    """InfluxDB 2's client, built from its Go module (tests/peers/build-influx-cli.sh)."""
    return build_peer("build-influx-cli.sh")


def api(influxdb, path):
    return json.loads(http(f"{influxdb.url}/api/v2/{path}",
                           headers={"Authorization": f"Token {InfluxDB2.TOKEN}"}))


def test_influxdb2_template_applied_with_influx_cli(stored, influx_cli, tmp_path):
    _, influxdb2, drops = stored
    applied = subprocess.run(
        [influx_cli, "apply", "--host", influxdb2.url, "--token", InfluxDB2.TOKEN,
         "--org", InfluxDB2.ORG, "--file", str(DASHBOARDS / "influxdb2-template.json"),
         "--force", "yes"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "INFLUX_CONFIGS_PATH": str(tmp_path / "influx-configs")})
    assert applied.returncode == 0, applied.stdout + applied.stderr
    [board] = [d for d in api(influxdb2, f"dashboards?org={InfluxDB2.ORG}")["dashboards"]
               if d["name"] == "TCP drops (telegraf-tcpdrop)"]
    views = [api(influxdb2, f"dashboards/{board['id']}/cells/{cell['id']}/view")
             for cell in board["cells"]]
    assert sorted(view["name"] for view in views) == sorted(PANELS)
    for view in views:
        [query] = view["properties"]["queries"]
        rows = flux_rows(influxdb2, influxdb_ui(query["text"]))
        print(view["name"], drops.check(view["name"], rows, flux=True))
        if view["name"] == "Drops per second by reason":  # one reason chosen
            only = flux_rows(influxdb2, influxdb_ui(query["text"], reason="NETFILTER_DROP"))
            assert answer("rate", ["reason"], only, True) == {("NETFILTER_DROP",): sum(SYNS_B)}
    variables = {v["name"]: v["arguments"]["values"]["query"]
                 for v in api(influxdb2, f"variables?org={InfluxDB2.ORG}")["variables"]}
    expected = {f"tcpdrop_{name}": values | {ALL}
                for name, values in variable_values(drops).items()}
    assert set(variables) == set(expected) | {"tcpdrop_bucket"}
    for name, query in variables.items():
        values = {row["_value"] for row in flux_rows(influxdb2, influxdb_ui(query))}
        if name == "tcpdrop_bucket":
            assert InfluxDB2.BUCKET in values, values
        else:
            assert values == expected[name], name


def plot_reasons(rows, path):
    """The reason panel drawn from its query's answer: the README's picture."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(8, 3.2), dpi=100)
    series = {}
    for row in rows:
        if row["drops"] is not None:
            series.setdefault(row["reason"], []).append((instant(row["time"]), row["drops"]))
    for reason, points in sorted(series.items()):
        axes.plot([t for t, _ in points], [v for _, v in points], marker="o", label=reason)
    axes.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%H:%M:%S"))
    axes.set_title("Drops per second by reason (the dashboard's InfluxQL query, InfluxDB 1.8)")
    axes.set_xlabel(f"time (UTC), {WINDOW_S} s windows")
    axes.set_ylabel("packets/s")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
