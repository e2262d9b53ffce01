"""`top`: real drops, counted in the kernel, as its table shows them: as
plain text (--once), and live on a real terminal (tmux, 80x24)."""
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from conftest import CLI, TESTS, Netns, eventually, require_root
from telegraf_tcpdrop.emit import Point
from telegraf_tcpdrop.metrics import IDLE_INTERVALS
from telegraf_tcpdrop.top import Table

pytestmark = pytest.mark.kernel

DOCS_SCREEN = TESTS.parent / "docs" / "top.txt"
TITLES = ["DROPS/S", "TOTAL", "IP", "REASON", "STATE", "FLAGS", "SPORT", "DPORT", "NETNS", "SITE"]
WIDTH, HEIGHT = 80, 24


def table(lines):
    """The rows under the titles, each as {title: value}; none before top draws."""
    starts = [i for i, line in enumerate(lines) if line.split()[:1] == ["DROPS/S"]]
    if not starts:
        return []
    titles = lines[starts[0]].split()
    return [dict(zip(titles, line.split(), strict=True)) for line in lines[starts[0] + 1:] if line]


def shows(value, name):
    """Whether a cell shows name, whole or trimmed to fit (NAME+)."""
    return value == name or value.endswith("+") and name.startswith(value[:-1])


def totals(lines):
    """(drops/s, total) of the header."""
    words = next(line for line in lines if line.startswith("drops/s ")).split()
    return words[1], words[3]


def ephemeral(port):
    low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    return low <= port <= high


def test_without_a_terminal_and_without_once_one_error_line_and_exit_2():
    result = subprocess.run([CLI, "top"], capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == ("E! top draws on a terminal, and stdout is not one: --once prints "
                             "the table once, as plain text\n")


def test_once_prints_the_exact_count_as_plain_text(netns):
    port, sent, interval = 7411, 7, 3.0
    top = subprocess.Popen([CLI, "top", "--once", "--interval", f"{interval:g}s", "--port",
                            str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = []
    reader = threading.Thread(target=lambda: stderr.extend(top.stderr), daemon=True)
    reader.start()
    assert eventually(lambda: any("I! attached" in line for line in stderr), timeout=10), stderr
    netns.traffic("syns", "127.0.0.1", port, 41000, sent)  # refused: one SYN each, no retransmit
    out = top.stdout.read()
    assert top.wait(timeout=10) == 0
    reader.join(timeout=5)
    assert "\x1b" not in out  # plain text: no escape sequence
    lines = out.splitlines()
    assert lines[0].startswith("telegraf-tcpdrop top ") and "every 3s  sort: rate" in lines[0]
    assert lines[2].startswith("portless 0  untagged 0  probe misses 0  listen untracked 0  keys 1/16384")
    rate = f"{sent / interval:.1f}"  # the interval is 3 s and a few ms
    assert totals(lines) == (rate, str(sent))
    assert table(lines) == [{
        "DROPS/S": rate, "TOTAL": str(sent), "IP": "4", "REASON": "NO_SOCKET", "STATE": "NONE",
        "FLAGS": "SYN", "SPORT": "ephemeral" if ephemeral(41000) else "41000", "DPORT": str(port),
        "NETNS": netns.name, "SITE": "tcp_v4_rcv"}]
    assert netns.counter("TcpOutRsts") == sent  # the kernel refused each SYN once
    assert [line for line in stderr if not line.startswith("I! ")] == []


class Terminal:
    """A shell in a detached tmux session of 80x24, on a tmux server of its
    own, whose socket is at `socket`."""

    def __init__(self, socket):
        self.tmux = ["tmux", "-S", str(socket), "-f", "/dev/null"]
        self.run("new-session", "-d", "-s", "top", "-x", str(WIDTH), "-y", str(HEIGHT),
                 "env", "PS1=$ ", "bash", "--norc", "--noprofile")
        self.screens = []  # every screen screen() read

    def run(self, *args):
        return subprocess.run([*self.tmux, *args], check=True, capture_output=True,
                              text=True).stdout

    def type(self, *keys):
        self.run("send-keys", "-t", "top", *keys)

    def screen(self):
        lines = self.run("capture-pane", "-p", "-t", "top").split("\n")[:-1]
        self.screens.append(lines)
        return lines

    def wait_for(self, condition, timeout=10.0):
        """The first screen (read every 20 ms) that condition(screen) holds for."""
        def matching():
            screen = self.screen()
            return screen if condition(screen) else None
        screen = eventually(matching, timeout=timeout)
        assert screen, "\n".join(self.screens[-1])
        return screen

    def start_top(self, *args):
        self.type(" ".join([CLI, "top", *args]) + "; echo top-exit=$?", "Enter")
        return self.wait_for(lambda s: any(line.startswith("DROPS/S") for line in s))

    def close(self):
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


@pytest.fixture
def terminal(tmp_path):
    require_root()
    t = Terminal(tmp_path / "tmux")
    yield t
    t.close()


def rows_in(screen, **tags):
    return [row for row in table(screen) if all(row[k] == v for k, v in tags.items())]


def exit_line(line):
    """echo's line, not the typed command's (which, wrapped at 80 columns,
    may put "top-exit=$?" at the start of a line too)."""
    return re.fullmatch(r"top-exit=\d+", line)


def exited_zero_and_restored(screen):
    """The shell is back, top said 0, and its screen is gone (curses left
    the alternate screen): nothing of it is left on the terminal."""
    assert "top-exit=0" in screen, screen
    assert not any(line.startswith(("DROPS/S", "drops/s", "telegraf-tcpdrop top"))
                   for line in screen)
    assert not any("Traceback" in line for line in screen)
    assert screen[[bool(exit_line(line)) for line in screen].index(True) + 1] == "$"


def test_live_rows_rates_sort_resize_and_q(terminal, netns):
    port = 7412
    terminal.start_top("--port", str(port))  # every 1s, sort: rate
    # 7 SYNs refused: one tag set. Its rate is its drops in each interval of 1 s.
    netns.traffic("syns", "127.0.0.1", port, 41000, 7)
    syns = dict(REASON="NO_SOCKET", FLAGS="SYN", DPORT=str(port), SITE="tcp_v4_rcv")
    terminal.wait_for(lambda s: [r["DROPS/S"] for r in rows_in(s, TOTAL="7", **syns)] == ["0.0"])
    seen = []  # the row's (rate, total), as they changed
    for screen in terminal.screens:
        for row in rows_in(screen, **syns):
            if (row["DROPS/S"], row["TOTAL"]) not in seen[-1:]:
                seen.append((row["DROPS/S"], row["TOTAL"]))
    last = 0
    for rate, total in seen:  # an interval (1 s and a few ms) adds its rate to the total
        assert round(float(rate)) == int(total) - last, seen
        last = int(total)
    assert last == 7 and any(rate != "0.0" for rate, _ in seen), seen
    for screen in terminal.screens:
        if "DROPS/S" not in screen[4]:  # the shell, before top drew
            continue
        assert len(screen) == HEIGHT and all(len(line) <= WIDTH for line in screen)
        assert screen[4].split() == TITLES  # every column, under the header's four lines
        for row in rows_in(screen, **syns):  # every column, the namespace's name trimmed to fit
            assert row["NETNS"].endswith("+") and shows(row["NETNS"], netns.name)
            assert (row["IP"], row["STATE"]) == ("4", "NONE")

    # 3 SYNs from the port (to closed port 9), and their RSTs dropped at it:
    # while their interval is shown, they sort above the 7 (now at 0.0/s).
    netns.traffic("raw-syns", 9, 3, port)
    from_port = dict(REASON="NO_SOCKET", FLAGS="SYN", SPORT=str(port), DPORT="9")
    rsts = dict(REASON="NO_SOCKET", FLAGS="RST|ACK", SPORT="9", DPORT=str(port))
    screen = terminal.wait_for(lambda s: rows_in(s, TOTAL="3", **from_port) and
                               rows_in(s, TOTAL="3", **rsts) and
                               any(row["DROPS/S"] != "0.0" for row in table(s)))
    busiest = [(float(row["DROPS/S"]), int(row["TOTAL"])) for row in table(screen)]
    assert busiest == sorted(busiest, reverse=True) and busiest.index((0.0, 7)) > 0, busiest
    terminal.type("s")
    screen = terminal.wait_for(lambda s: "sort: total" in s[0])
    assert [int(row["TOTAL"]) for row in table(screen)] == [7, 3, 3]
    terminal.type("s", "s")  # reason, then port: port 9 (either way) before 7412
    screen = terminal.wait_for(lambda s: "sort: port" in s[0])
    refused = table(screen)[2]
    assert shows(refused["SPORT"], "ephemeral" if ephemeral(41000) else "41000")
    assert refused["DPORT"] == str(port)
    assert {(row["SPORT"], row["DPORT"]) for row in table(screen)[:2]} == {
        (str(port), "9"), ("9", str(port))}
    assert totals(screen)[1] == "13"
    assert netns.counter("TcpOutRsts") == 7 + 3  # the kernel's RSTs: one per SYN to a closed port

    terminal.run("resize-window", "-t", "top", "-x", "120", "-y", "30")
    screen = terminal.wait_for(lambda s: len(s) == 30 and rows_in(s, NETNS=netns.name))
    assert len(rows_in(screen, NETNS=netns.name)) == 3

    terminal.type("q")
    exited_zero_and_restored(terminal.wait_for(lambda s: "top-exit=0" in s, timeout=5))


def test_ctrl_c_exits_0_and_restores_the_terminal(terminal):
    terminal.start_top()
    sent = time.monotonic()
    terminal.type("C-c")
    screen = terminal.wait_for(lambda s: any(exit_line(line) for line in s), timeout=5)
    assert time.monotonic() - sent < 1.0  # at once, not at the end of the interval
    exited_zero_and_restored(screen)


def test_a_terminal_curses_does_not_know_is_one_error_line_before_the_probe_loads(terminal):
    terminal.type(f"TERM=no-such-terminal {CLI} top; echo top-exit=$?", "Enter")
    screen = "".join(terminal.wait_for(lambda s: "top-exit=1" in s, timeout=5))
    assert "E! curses cannot draw on this terminal (setupterm: could not find terminal)" in screen
    assert "I! attached" not in screen and "Traceback" not in screen


def test_a_full_table_shows_in_the_header_its_warning_after_the_screen(terminal, netns):
    port = 7413
    terminal.start_top("--port", str(port), "--max-keys", "1")
    # 3 SYNs and their 3 RSTs: two tag sets, room for one, and for one without ports
    netns.traffic("raw-syns", 9, 3, port)
    screen = terminal.wait_for(lambda s: any(line.startswith("portless 3  untagged 0 ") for line in s))
    assert sorted((row["TOTAL"], shows(row["SPORT"], "overflow"), shows(row["DPORT"], "overflow"))
                  for row in table(screen)) == [("3", False, False), ("3", True, True)]
    assert any("keys 1/1" in line for screen in terminal.screens for line in screen)
    assert not any("W!" in line for screen in terminal.screens for line in screen)
    terminal.type("q")
    screen = terminal.wait_for(lambda s: "top-exit=0" in s, timeout=5)
    exited_zero_and_restored(screen)
    assert "W! the kernel's table of tag sets is full (1 keys)" in "".join(screen)


class NamedNetns(Netns):
    """A namespace named as a container might be: names for the docs' screen."""

    def __init__(self, name):
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.sh("ip", "link", "set", "lo", "up")


@pytest.fixture
def web_and_db():
    require_root()
    made = [NamedNetns("web1"), NamedNetns("db1")]
    yield made
    for ns in made:
        ns.delete()


def test_a_screen_of_several_reasons_and_ports(terminal, web_and_db):
    """docs/top.txt, written from this screen when TCPDROP_WRITE_DOCS=1."""
    web, db = web_and_db
    web.drop_input_port(8080)
    terminal.start_top()
    background = [subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable,
                                    str(TESTS / "traffic.py"), *args], stdout=subprocess.DEVNULL)
                  for ns, args in (
                      (web, ["raw-syns", "443", "400"]),  # a SYN flood: its SYNs, and its RSTs
                      (web, ["connect-storm", "127.0.0.1", "8080", "12", "2.5"]),  # nftables
                      (db, ["listen-full", "127.0.0.1", "5432", "6", "2.5"]),  # accept queue full
                      (db, ["syns", "::1", "6379", "41000", "5"]))]  # a closed port, IPv6
    reasons = ("NETFILTER_DROP", "NO_SOCKET", "TCP_LISTEN_OVERFLOW")
    flood = [dict(NETNS="web1", FLAGS="SYN", DPORT="443"),
             dict(NETNS="web1", FLAGS="RST|ACK", SPORT="443")]
    screen = terminal.wait_for(lambda s: all(
        any(shows(row["REASON"], reason) and row["NETNS"] in ("web1", "db1") for row in table(s))
        for reason in reasons) and all(rows_in(s, TOTAL="400", **tags) for tags in flood))
    for process in background:
        assert process.wait(timeout=20) == 0
    assert web.counter("TcpOutRsts") == 400  # one RST per SYN of the flood; nftables drops the rest
    assert all(len(line) <= WIDTH for line in screen)
    if os.environ.get("TCPDROP_WRITE_DOCS") == "1":
        # Drops of other namespaces (another test running) have no place in the docs: try again.
        assert {row["NETNS"] for row in table(screen)} == {"web1", "db1"}, screen
        DOCS_SCREEN.write_text("\n".join(screen).rstrip("\n") + "\n")
    terminal.type("q")
    exited_zero_and_restored(terminal.wait_for(lambda s: "top-exit=0" in s, timeout=5))


def test_the_readme_shows_the_screen_in_docs():
    readme = (TESTS.parent / "README.md").read_text()
    assert f"```text\n{DOCS_SCREEN.read_text()}```" in readme


def test_rows_of_a_port_scan_age_out_and_the_table_stays_bounded():
    """A scan's tag sets differ by port: each row goes after IDLE_INTERVALS
    without drops, and there are never more rows than the probe's keys."""
    def interval(ports):
        drops = [Point("tcpdrop", {"reason": "NO_SOCKET", "dport": str(port)}, {"drops": 1}, 0)
                 for port in ports]
        agent = Point("tcpdrop_agent", {}, {"interval_ns": 10**9, "keys": len(drops),
                                            "map_portless_drops": 0, "map_overflow_drops": 0,
                                            "probe_misses": 0, "listen_untracked": 0}, 0)
        return [*drops, agent]
    scan = Table(max_keys=100)
    for n in range(200):
        scan.add(interval([22, *range(1000 + 90 * n, 1090 + 90 * n)]))  # 22: every interval
        assert len(scan.rows) <= 100 + 12  # the keys, and the portless ones of a full table
    assert scan.rows[(("dport", "22"), ("reason", "NO_SOCKET"))].total == 200
    for _ in range(IDLE_INTERVALS):
        scan.add(interval([22]))
    assert [row.tags["dport"] for row in scan.rows.values()] == ["22"]
    assert scan.total == 200 * 91 + IDLE_INTERVALS
