"""`telegraf-tcpdrop top`: the in-kernel counts, live, on a terminal.

Each interval the metrics Collector takes the probe's counts, as `metrics`
does (nothing in user space per drop), and makes them tag sets; top keeps
each tag set's rate over the last interval and its total since top started,
with the agent's health, and draws them with curses: one row per tag set,
sorted. `--once` waits one interval and prints the same table as plain text.

cli.py imports this module for SORTS, the choices of --sort: curses (6 ms
of start-up) is imported only where a screen is drawn.
"""
import os
import sys
import time
from contextlib import contextmanager
from datetime import datetime

from . import host, stop
from .errors import StartupError, UsageError
from .event import PORT_TAGS_NONE
from .metrics import IDLE_INTERVALS, Collector
from .probe import overflow_keys
from .startup import counting_config, loaded_symbols, open_probe

TRIMMED = "+"  # ends a value cut to fit, as procps top(1) marks one
NO_VALUE = "-"  # a tag the drop has not: ports of a packet that ended before them
QUIT_KEYS = (ord("q"), ord("Q"))
NEXT_SORT_KEY = ord("s")


class Row:
    """One tag set: its drops per second over the last interval, and since it
    was first seen; seen: the interval of its last drop."""

    def __init__(self, tags):
        self.tags, self.rate, self.total, self.seen = tags, 0.0, 0, 0


def port_order(row):
    """By the row's lower numbered port (the service's, either way the packet
    went); then the rows with "ephemeral" ports only; then those without ports."""
    def order(port):
        if not port:
            return (2, 0)
        return (0, int(port)) if port.isdigit() else (1, 0)
    return min(order(row.tags.get("sport")), order(row.tags.get("dport")))


# --sort: each order's key, busiest first where a name does not order them.
SORTS = {
    "rate": lambda row: (-row.rate, -row.total),
    "total": lambda row: (-row.total, -row.rate),
    "reason": lambda row: (row.tags["reason"], -row.rate),
    "port": lambda row: (port_order(row), -row.rate),
    "netns": lambda row: (row.tags.get("netns", ""), -row.rate),
    "site": lambda row: (row.tags["frame"], -row.rate),
}


class Column:
    def __init__(self, title, value, number=False):
        """value: Row -> str. number: right-aligned, never trimmed."""
        self.title, self.value, self.number = title, value, number


def tag(name):
    return lambda row: row.tags.get(name) or NO_VALUE


RATE = Column("DROPS/S", lambda row: f"{row.rate:.1f}", number=True)
TOTAL = Column("TOTAL", lambda row: str(row.total), number=True)
NETNS = Column("NETNS", tag("netns"))
SITE = Column("SITE", tag("frame"))
PORTS = (Column("SPORT", tag("sport")), Column("DPORT", tag("dport")))
# How a row wider than the screen is cut down, step by step: the drop site
# and the namespace to 12 (long names), the ports to 6 ("ephemeral"), the
# reason to 16, the site and namespace to 8, then every column of names; in
# each step the widest of its columns first, none below the step's width. At
# 80x24 a site keeps 10 or more: tcp_v4_rcv, tcp_v6_rcv whole.
TRIM_STEPS = ((12, ("SITE", "NETNS")), (6, ("SPORT", "DPORT")), (16, ("REASON",)),
              (8, ("SITE", "NETNS")),
              (4, ("SITE", "NETNS", "REASON", "FLAGS", "STATE", "SPORT", "DPORT")))


class Table:
    """The rows and the agent's health, over every interval since top started.
    A row without drops for IDLE_INTERVALS goes, as metrics lets its tags go,
    and there are at most as many rows as one interval can fill (max_keys
    tag sets, and the portless ones of a full table): past that, those idle
    longest go first. A port scan's rows come and go;
    the table does not grow with it."""

    def __init__(self, max_keys, ports=True, netns=True):
        """ports, netns: whether the tag sets have those tags (--port-tags, --netns-tags)."""
        self.max_keys = max_keys
        self.max_rows = max_keys + overflow_keys(max_keys)
        self.intervals = 0
        self.columns = [RATE, TOTAL, Column("IP", tag("family")), Column("REASON", tag("reason")),
                        Column("STATE", tag("state")), Column("FLAGS", tag("flags")),
                        *(PORTS if ports else ()), *((NETNS,) if netns else ()), SITE]
        self.rows = {}  # sorted tag items -> Row
        self.rate = 0.0  # every drop, per second, over the last interval
        self.total = 0
        self.health = {"map_portless_drops": 0, "map_overflow_drops": 0, "probe_misses": 0,
                       "listen_untracked": 0}
        self.keys = 0  # tag sets in the last interval
        self.started = datetime.now()

    def add(self, points):
        """An interval's points, as Collector.collect() makes them."""
        [agent] = [point for point in points if point.measurement == "tcpdrop_agent"]
        seconds = agent.fields["interval_ns"] / 1e9
        self.intervals += 1
        for row in self.rows.values():
            row.rate = 0.0
        drops = 0
        for point in points:
            if point.measurement == "tcpdrop":
                row = self.rows.setdefault(tuple(sorted(point.tags.items())), Row(point.tags))
                row.rate = point.fields["drops"] / seconds
                row.total += point.fields["drops"]
                row.seen = self.intervals
                drops += point.fields["drops"]
        self.rate, self.total = drops / seconds, self.total + drops
        self._forget_idle()
        for name in self.health:
            self.health[name] += agent.fields[name]
        self.keys = agent.fields["keys"]

    def _forget_idle(self):
        idle_since = self.intervals - IDLE_INTERVALS
        kept = sorted(((key, row) for key, row in self.rows.items() if row.seen > idle_since),
                      key=lambda item: item[1].seen, reverse=True)
        self.rows = dict(kept[:self.max_rows])

    def sorted_rows(self, sort):
        # Ties in the order's key fall back on the tags: rows do not swap at random.
        return sorted(self.rows.values(),
                      key=lambda row: (SORTS[sort](row), sorted(row.tags.items())))


def header(table, interval, sort, now, hint=""):
    """The lines above the rows; each under 80 columns while its numbers are."""
    health = table.health
    return [f"telegraf-tcpdrop top  {now:%H:%M:%S}  every {interval:g}s  sort: {sort}{hint}",
            f"drops/s {table.rate:.1f}  total {table.total} since {table.started:%H:%M:%S}",
            f"portless {health['map_portless_drops']}  untagged {health['map_overflow_drops']}  "
            f"probe misses {health['probe_misses']}  "
            f"listen untracked {health['listen_untracked']}  keys {table.keys}/{table.max_keys}",
            ""]


def trimmed(text, width):
    return text if len(text) <= width else text[:width - len(TRIMMED)] + TRIMMED


def column_widths(columns, cells, width=None):
    """Each column's width: its longest cell; where the line would be wider
    than width, cut down by TRIM_STEPS."""
    widths = {c.title: max(len(cell[i]) for cell in cells) for i, c in enumerate(columns)}
    over = sum(widths.values()) + len(columns) - 1 - width if width else 0
    for shortest, titles in TRIM_STEPS:
        while over > 0:
            cuttable = [title for title in titles if widths.get(title, 0) > shortest]
            if not cuttable:
                break
            widths[max(cuttable, key=widths.get)] -= 1
            over -= 1
    return [widths[c.title] for c in columns]


def table_lines(table, sort, width=None, rows=None):
    """The titles, then a line per row (the first `rows` of them), each at
    most width characters (no limit: every value whole)."""
    columns = table.columns
    cells = [[c.value(row) for c in columns] for row in table.sorted_rows(sort)[:rows]]
    widths = column_widths(columns, [[c.title for c in columns], *cells], width)

    def line(values):
        text = " ".join(value.rjust(w) if c.number else trimmed(value, w).ljust(w)
                        for c, value, w in zip(columns, values, widths))
        return text.rstrip()[:width]
    return [line([c.title for c in columns]), *(line(values) for values in cells)]


def check_terminal():
    """StartupError if curses does not know the terminal (TERM): said before the probe loads."""
    import curses

    try:
        curses.setupterm()
    except curses.error as e:
        raise StartupError(f"curses cannot draw on this terminal ({e}): set TERM to one that "
                           "`infocmp` knows, or use --once") from None


@contextmanager
def stderr_held():
    """What is written to stderr while curses draws (a W! line, libbpf's log)
    would scribble on its screen: it is kept, and written once the screen is gone."""
    terminal, held = os.dup(2), os.memfd_create("stderr held")
    os.dup2(held, 2)
    try:
        yield
    finally:
        os.dup2(terminal, 2)
        os.close(terminal)
        with open(held, "rb") as lines:
            lines.seek(0)
            os.write(2, lines.read())


class Screen:
    """The curses loop: takes the counts every interval, draws, reads keys."""

    def __init__(self, collector, table, interval, sort):
        self.collector, self.table, self.interval = collector, table, interval
        self.sort = sort

    def run(self, window):
        import curses

        try:
            curses.curs_set(0)
        except curses.error:  # a terminal that cannot hide its cursor
            pass
        next_take = time.monotonic() + self.interval
        while not stop.requested():
            self.draw(window)
            # getch() waits until the next take, or returns at a key, a
            # resize (KEY_RESIZE) or a signal (ERR): each is looked at.
            window.timeout(max(0, round((next_take - time.monotonic()) * 1000)))
            key = window.getch()
            if key in QUIT_KEYS:
                return
            if key == NEXT_SORT_KEY:
                names = list(SORTS)
                self.sort = names[(names.index(self.sort) + 1) % len(names)]
            if time.monotonic() >= next_take:
                self.table.add(self.collector.collect())
                next_take += self.interval
                if next_take < time.monotonic():  # fell behind (suspend): skip, don't burst
                    next_take = time.monotonic() + self.interval

    def draw(self, window):
        import curses

        height, width = window.getmaxyx()
        lines = header(self.table, self.interval, self.sort, datetime.now(), "   q: quit  s: sort")
        table = table_lines(self.table, self.sort, width, rows=max(0, height - len(lines) - 1))
        window.erase()
        for y, text in enumerate((lines + table)[:height]):
            attribute = curses.A_REVERSE if y == len(lines) else curses.A_NORMAL
            try:
                window.addnstr(y, 0, text.ljust(width), width, attribute)
            except curses.error:  # the last cell is written; the cursor then has nowhere to go
                pass
        window.refresh()


def show(collector, interval, sort, once=False, out=sys.stdout):
    """Exit code 0: --once, after one interval (or sooner at SIGINT/SIGTERM),
    the table as plain text; else the live screen until q, SIGINT or SIGTERM."""
    table = Table(collector.probe.max_keys, ports=collector.port_tags != PORT_TAGS_NONE,
                  netns=collector.netns_tags != "none")
    if once:
        stop.wait(interval)
        table.add(collector.collect())
        lines = header(table, interval, sort, datetime.now()) + table_lines(table, sort)
        out.write("\n".join(lines) + "\n")
        return 0
    if not stop.requested():
        import curses

        with stderr_held():
            curses.wrapper(Screen(collector, table, interval, sort).run)
    return 0


def run(args):
    if not args.once:
        if not sys.stdout.isatty():
            raise UsageError("top draws on a terminal, and stdout is not one: --once prints the "
                             "table once, as plain text")
        check_terminal()
    reasons = host.drop_reasons(host.libbpf())
    settings = counting_config(args, reasons)
    with open_probe(settings, args.backend, args.hook, args.verbose, args.listen_drops,
                    max_keys=args.max_keys) as probe:
        collector = Collector(probe, reasons, loaded_symbols(), settings.port_tags,
                              netns_tags=args.netns_tags)
        return show(collector, args.interval, args.sort, once=args.once)
