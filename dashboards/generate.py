"""The dashboards that ship with telegraf-tcpdrop, generated from one list of
panels: each panel holds its InfluxQL and its Flux query, and three files are
rendered from that list:

- grafana-influxql.json: Grafana, InfluxDB data source in InfluxQL mode (1.x, 1.8+);
- grafana-flux.json: Grafana, InfluxDB data source in Flux mode (2.x);
- influxdb2-template.json: an InfluxDB 2 template (`influx apply`), its own UI.

The Grafana files are built with grafana-foundation-sdk (pip install
'.[dashboards]'); the template has no library and is written here.

    .venv/bin/python dashboards/generate.py    # rewrites the three files

tests/test_dashboards.py checks that the committed files are this script's
output, and runs every query in them against real InfluxDB servers.
"""
import json
import string
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    from grafana_foundation_sdk.builders import common, dashboard, table, timeseries
    from grafana_foundation_sdk.cog import builder as cogbuilder
    from grafana_foundation_sdk.cog import variants as cogvariants
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
    from grafana_foundation_sdk.models.dashboard import (DashboardCursorSync, DataSourceRef,
                                                         VariableOption, VariableRefresh,
                                                         VariableSort)
except ImportError:
    sys.exit("generate.py: error: grafana-foundation-sdk is not installed "
             "(pip install -e '.[dashboards]')")

HERE = Path(__file__).parent
TITLE = "TCP drops (telegraf-tcpdrop)"
DESCRIPTION = ("The TCP packets the Linux kernel drops, and why: drop reason, drop site, "
               "ports, TCP state and flags, network namespace; and the monitor's own health.")
# Grafana's data source is picked on import, through this variable.
DATASOURCE = DataSourceRef(type_val="influxdb", uid="${datasource}")
# InfluxDB's own UI has no "All" in a variable: this value, listed first, means every value.
ALL = "*"
# Variable names in InfluxDB are shared by the whole organization, and `influx apply`
# takes over a variable of the same name: ours are prefixed so as to leave others alone.
INFLUXDB_VARIABLE_PREFIX = "tcpdrop_"

# The counts the monitor keeps of its own shortfalls (README, tcpdrop_agent).
HEALTH_FIELDS = ("map_portless_drops", "map_overflow_drops", "probe_misses", "unreadable",
                 "listen_misses", "listen_untracked", "events_lost", "events_ratelimited", "stacks_lost")


@dataclass
class Panel:
    """One panel. influxql is as Grafana takes it ($timeFilter, $__interval,
    ${host:regex}); flux is a string.Template with $bucket and one placeholder
    per filtered tag ($host, $reason, $netns), which each Flux flavour fills in."""
    title: str
    description: str
    kind: str  # "timeseries" or "table"
    influxql: str
    flux: str
    width: int = 12  # of Grafana's 24 columns
    unit: str = "short"
    sort_by: str = "drops"  # a table's column, sorted descending (InfluxQL's name for it)
    alias: str = ""  # InfluxQL's series names ($tag_reason, $col)


def flux_sort_column(panel):
    """A table's sort column by its Flux name: InfluxQL's Time is Flux's _time."""
    return "_time" if panel.sort_by == "Time" else panel.sort_by


def influxql_filter(*tags):
    return "".join(f' AND "{tag}" =~ /^${{{tag}:regex}}$/' for tag in tags)


def flux_filter(*tags):
    return "  |> filter(fn: (r) => " + " and ".join(f"${tag}" for tag in tags) + ")\n"


FLUX_DROPS = ("from(bucket: $bucket)\n"
              "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
              '  |> filter(fn: (r) => r._measurement == "tcpdrop" and r._field == "drops")\n'
              + flux_filter("host", "reason", "netns"))
INFLUXQL_DROPS = ('FROM "tcpdrop" WHERE $timeFilter' + influxql_filter("host", "reason", "netns"))


def rate_panel(title, description, tags, width=12):
    """Drops per second, one series per value of tags: the counts of each
    interval summed per window, divided by the window's length."""
    group = ", ".join(f'"{tag}"' for tag in tags)
    return Panel(
        title, description, "timeseries",
        f'SELECT sum("drops") * 1000 / $__interval_ms AS "drops" {INFLUXQL_DROPS} '
        f"GROUP BY time($__interval), {group}",
        FLUX_DROPS
        + f"  |> group(columns: {json.dumps(list(tags))})\n"
        "  |> aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)\n"
        "  |> map(fn: (r) => ({r with _value: float(v: r._value) * 1000000000.0 / "
        "float(v: int(v: v.windowPeriod))}))\n",
        width, "pps", alias=" ".join(f"$tag_{tag}" for tag in tags))


def top_panel(title, description, tag):
    """The 10 values of tag with the most drops over the range."""
    return Panel(
        title, description, "table",
        f'SELECT TOP("drops", "{tag}", 10) AS "drops" FROM '
        f'(SELECT sum("drops") AS "drops" {INFLUXQL_DROPS} GROUP BY "{tag}")',
        FLUX_DROPS
        + f'  |> group(columns: ["{tag}"])\n'
        "  |> sum()\n"
        "  |> group()\n"
        "  |> top(n: 10)\n"
        f'  |> keep(columns: ["{tag}", "_value"])\n'
        '  |> rename(columns: {_value: "drops"})\n',
        8)


PANELS = [
    rate_panel("Drops per second by reason",
               "The kernel's drop reason (enum skb_drop_reason), or ours for a SYN a "
               "listener refused (listen-overflow, syn-queue-full, listen-drop).",
               ["reason"], 24),
    top_panel("Top drop sites", "The kernel functions that dropped the most packets (tag frame).",
              "frame"),
    top_panel("Top destination ports",
              "dport; \"ephemeral\" is any port in the host's ephemeral range.", "dport"),
    top_panel("Top source ports",
              "sport; \"ephemeral\" is any port in the host's ephemeral range.", "sport"),
    rate_panel("Drops per second by TCP state and flags",
               "State of the socket the drop was charged to (NONE: no socket), and the "
               "packet's TCP flags.", ["state", "flags"]),
    rate_panel("Drops per second by network namespace",
               "host, an ip netns name, a container, a pod or a systemd unit (tag netns).",
               ["netns"]),
    # What a query can answer is when each drop site was first seen within the
    # dashboard's range: a time well after the range's start is a code path that
    # started dropping then. Whether it dropped before the range is a question for
    # a wider range (7 days shows this week's new sites): "never seen before" has
    # no lower time bound, which no query over a retention period can promise.
    Panel("New drop sites",
          "When each drop site first dropped within the range, newest first: widen the "
          "range (e.g. 7 days) to see which started dropping lately.", "table",
          f'SELECT first("drops") AS "drops" {INFLUXQL_DROPS} GROUP BY "host", "frame"',
          FLUX_DROPS
          + '  |> group(columns: ["host", "frame"])\n'
          "  |> first()\n"
          "  |> group()\n"
          '  |> keep(columns: ["_time", "host", "frame", "_value"])\n'
          '  |> sort(columns: ["_time"], desc: true)\n',
          sort_by="Time"),
    Panel("Monitor health",
          "What the monitor could not count in full, per interval (tcpdrop_agent): all should "
          "be 0. map_portless_drops: counted without their ports (ports 'overflow'); "
          "map_overflow_drops: without any tag (raise --max-keys); probe_misses: drops "
          "whose handling interrupted another's on that CPU; unreadable: IP packets whose "
          "headers could not be read (TCP or not?); listen_misses: skipped runs of the "
          "listen-queue programs (mostly packets freed as normal); listen_untracked: SYNs in a "
          "namespace first seen late; events_*/stacks_lost: stack samples (--stacks).",
          "timeseries",
          "SELECT " + ", ".join(f'sum("{f}") AS "{f}"' for f in HEALTH_FIELDS)
          + ' FROM "tcpdrop_agent" WHERE $timeFilter' + influxql_filter("host")
          + " GROUP BY time($__interval)",
          "from(bucket: $bucket)\n"
          "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
          '  |> filter(fn: (r) => r._measurement == "tcpdrop_agent" and '
          f"contains(value: r._field, set: {json.dumps(list(HEALTH_FIELDS))}))\n"
          + flux_filter("host")
          + '  |> group(columns: ["_field"])\n'
          "  |> aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)\n",
          alias="$col"),
]


@dataclass
class Variable:
    """A tag's values, for a filter: reason and netns follow the chosen host."""
    tag: str
    label: str
    follows_host: bool


VARIABLES = [Variable("host", "Host", False), Variable("reason", "Reason", True),
             Variable("netns", "Network namespace", True)]


def tag_values(flavour, variable):
    """The values of a variable's tag in the range (of the chosen host's drops)."""
    host = f" and {flavour.match('host')}" if variable.follows_host else ""
    return (f'schema.tagValues(bucket: {flavour.bucket}, tag: "{variable.tag}", '
            f'predicate: (r) => r._measurement == "tcpdrop"{host}, '
            "start: v.timeRangeStart, stop: v.timeRangeStop)\n")


class GrafanaFlux:
    """Flux as Grafana's InfluxDB data source runs it: v.defaultBucket is the data
    source's bucket; a variable is text put into the query, ${tag:regex} being
    its values as one regular expression (".*" for All)."""
    bucket = "v.defaultBucket"

    @staticmethod
    def match(tag):
        return f"r.{tag} =~ /^${{{tag}:regex}}$/"

    def variable_query(self, variable):
        return 'import "influxdata/influxdb/schema"\n\n' + tag_values(self, variable)


class InfluxDBFlux:
    """Flux as InfluxDB's own dashboards run it: variables are values of the
    record v (v.tcpdrop_host), one value each, ALL for every value."""
    bucket = f"v.{INFLUXDB_VARIABLE_PREFIX}bucket"

    @staticmethod
    def match(tag):
        name = f"v.{INFLUXDB_VARIABLE_PREFIX}{tag}"
        return f'({name} == "{ALL}" or r.{tag} == {name})'

    def variable_query(self, variable):
        return ('import "array"\nimport "influxdata/influxdb/schema"\n\n'
                f'all = array.from(rows: [{{_value: "{ALL}"}}])\n'
                f'values = {tag_values(self, variable)}\n'
                "union(tables: [all, values])\n")


def flux_query(panel, flavour):
    return string.Template(panel.flux).substitute(
        bucket=flavour.bucket, **{v.tag: flavour.match(v.tag) for v in VARIABLES})


def influxql_variable_query(variable):
    host = influxql_filter("host").replace(" AND", " WHERE", 1) if variable.follows_host else ""
    return f'SHOW TAG VALUES FROM "tcpdrop" WITH KEY = "{variable.tag}"{host}'


class InfluxQuery(cogbuilder.Builder, cogvariants.Dataquery):
    """A raw query of Grafana's InfluxDB data source, InfluxQL or Flux (the SDK
    has no builder for that data source); its own builder."""

    def __init__(self, ref_id, query, influxql, result_format, alias):
        self.ref_id, self.query, self.influxql, self.result_format, self.alias = (
            ref_id, query, influxql, result_format, alias)

    def build(self):
        return self

    def to_json(self):
        payload = {"refId": self.ref_id, "datasource": DATASOURCE, "query": self.query}
        if self.influxql:  # InfluxQL's editor would otherwise rebuild the query from parts
            payload.update(rawQuery=True, resultFormat=self.result_format)
            if self.alias:
                payload["alias"] = self.alias
        return payload


def grafana_dashboard(influxql):
    language = "InfluxQL" if influxql else "Flux"
    board = (dashboard.Dashboard(f"{TITLE}, {language}")
             .uid(f"telegraf-tcpdrop-{language.lower()}")
             .description(DESCRIPTION)
             .tags(["tcpdrop", "telegraf", "network"])
             .time("now-6h", "now")
             .refresh("1m")
             .tooltip(DashboardCursorSync.CROSSHAIR)
             .with_variable(dashboard.DatasourceVariable("datasource").label("InfluxDB")
                            .type("influxdb")))
    for variable in VARIABLES:
        board.with_variable(
            dashboard.QueryVariable(variable.tag).label(variable.label)
            .datasource(DATASOURCE)
            .query(influxql_variable_query(variable) if influxql
                   else GrafanaFlux().variable_query(variable))
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*")
            .current(VariableOption(text="All", value="$__all")))
    for number, panel in enumerate(PANELS, 1):
        query = panel.influxql if influxql else flux_query(panel, GrafanaFlux())
        result_format = "table" if panel.kind == "table" else "time_series"
        if panel.kind == "table":
            column = panel.sort_by if influxql else flux_sort_column(panel)
            builder = table.Panel().sort_by([common.TableSortByFieldState().display_name(column)
                                             .desc(True)])
        else:
            builder = timeseries.Panel().legend(
                common.VizLegendOptions().display_mode(LegendDisplayMode.TABLE)
                .placement(LegendPlacement.RIGHT).show_legend(True).calcs(["mean", "max"]))
        builder = (builder.id(number).title(panel.title).description(panel.description)
                   .datasource(DATASOURCE).span(panel.width).height(8).unit(panel.unit)
                   .with_target(InfluxQuery("A", query, influxql, result_format, panel.alias)))
        board.with_panel(builder)
    return json.dumps(board.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def influxdb_template():
    """The pkger manifest `influx apply` takes: variables, then the dashboard;
    positions on InfluxDB's grid of 12 columns, from Grafana's of 24."""
    flavour = InfluxDBFlux()
    resources = [{
        "apiVersion": "influxdata.com/v2alpha1", "kind": "Variable",
        "metadata": {"name": "tcpdrop-bucket"},
        "spec": {"name": f"{INFLUXDB_VARIABLE_PREFIX}bucket", "type": "query", "language": "flux",
                 "description": "The bucket telegraf-tcpdrop's points are written to",
                 "selected": ["telegraf"],
                 "query": 'buckets()\n  |> filter(fn: (r) => r.name !~ /^_/)\n'
                          '  |> rename(columns: {name: "_value"})\n  |> keep(columns: ["_value"])\n'},
    }]
    for variable in VARIABLES:
        resources.append({
            "apiVersion": "influxdata.com/v2alpha1", "kind": "Variable",
            "metadata": {"name": f"tcpdrop-{variable.tag}"},
            "spec": {"name": f"{INFLUXDB_VARIABLE_PREFIX}{variable.tag}", "type": "query",
                     "language": "flux", "description": f'{variable.label} ("{ALL}": all)',
                     "selected": [ALL], "query": flavour.variable_query(variable)},
        })
    charts, x, y = [], 0, 0
    for panel in PANELS:
        width = panel.width // 2
        if x + width > 12:
            x, y = 0, y + 4
        chart = {"name": panel.title, "note": panel.description, "noteOnEmpty": True,
                 "xPos": x, "yPos": y, "width": width, "height": 4,
                 "queries": [{"query": flux_query(panel, flavour)}]}
        if panel.kind == "table":
            chart.update(kind="Table", tableOptions={"sortBy": flux_sort_column(panel), "wrapping": "truncate"})
        else:
            chart.update(kind="XY", geom="line", position="overlaid", xCol="_time", yCol="_value",
                         axes=[{"name": "x", "base": "10", "scale": "linear"},
                               {"name": "y", "base": "10", "scale": "linear",
                                "label": "packets/s" if panel.unit == "pps" else ""}])
        charts.append(chart)
        x += width
    resources.append({
        "apiVersion": "influxdata.com/v2alpha1", "kind": "Dashboard",
        "metadata": {"name": "telegraf-tcpdrop"},
        "spec": {"name": TITLE, "description": DESCRIPTION, "charts": charts},
    })
    return json.dumps(resources, indent=2) + "\n"


def outputs():
    """{file name: its content}: what the committed files must be."""
    return {"grafana-influxql.json": grafana_dashboard(influxql=True),
            "grafana-flux.json": grafana_dashboard(influxql=False),
            "influxdb2-template.json": influxdb_template()}


def main():
    for name, text in outputs().items():
        (HERE / name).write_text(text)
        print(f"wrote dashboards/{name}")


if __name__ == "__main__":
    main()
