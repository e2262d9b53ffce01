"""A real Telegraf, built from its Go module, with the shipped drop-in."""
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from conftest import CLI, Tracer, eventually
from hostile_text import POINTS, as_string, as_tag
from test_emit import ODD
from telegraf_tcpdrop.emit import Point, encode

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).parents[1]
DROP_IN = ROOT / "conf" / "telegraf.d" / "tcpdrop.conf"


AGENT = """
[agent]
  interval = "1s"
  flush_interval = "1s"
  omit_hostname = {omit_hostname}
[[outputs.file]]
  files = ["{out}"]
  data_format = "json"
  json_timestamp_units = "1ns"
"""


class Telegraf:
    """Telegraf with a config directory of its own; metrics written as JSON lines."""

    def __init__(self, binary, tmp_path, drop_in, omit_hostname=False):
        self.out = tmp_path / "metrics.json"
        conf_dir = tmp_path / "telegraf.d"
        conf_dir.mkdir()
        (tmp_path / "telegraf.conf").write_text(
            AGENT.format(out=self.out, omit_hostname=str(omit_hostname).lower()))
        (conf_dir / "tcpdrop.conf").write_text(drop_in)
        self.args = [binary, "--config", str(tmp_path / "telegraf.conf"),
                     "--config-directory", str(conf_dir)]
        self.proc = None

    def start(self):
        self.log = open(self.out.with_suffix(".log"), "w+")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)

    def metrics(self):
        """The metrics written so far: the lines whole (a long one may be
        read while Telegraf is still writing it)."""
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().split("\n")[:-1] if line]

    def logged(self):
        self.log.seek(0)
        return self.log.read()

    def plugin_pid(self):
        """The pid of the telegraf-tcpdrop process Telegraf started, or None."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-f", "telegraf-tcpdrop"],
                             capture_output=True, text=True).stdout.split()
        return int(out[0]) if out else None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)


def shipped_drop_in():
    """The drop-in as shipped, pointing at this checkout's command (the
    package's launcher runs `telegraf-tcpdrop metrics`)."""
    text = DROP_IN.read_text()
    assert '"/usr/libexec/telegraf-tcpdrop/metrics"' in text
    return text.replace('"/usr/libexec/telegraf-tcpdrop/metrics"', f'{json.dumps(CLI)}, "metrics"')


@pytest.fixture
def telegraf(telegraf_bin, tmp_path):
    started = []

    def start(drop_in=None, **kwargs):
        t = Telegraf(telegraf_bin, tmp_path, drop_in or shipped_drop_in(), **kwargs)
        t.start()
        started.append(t)
        return t
    yield start
    for t in started:
        t.stop()


def agent_points(metrics):
    return [m for m in metrics if m["name"] == "tcpdrop_agent"]


def drops(metrics, **tags):
    return sum(m["fields"]["drops"] for m in metrics
               if m["name"] == "tcpdrop" and all(m["tags"].get(k) == v for k, v in tags.items()))


def test_telegraf_parses_our_escaping(telegraf, tmp_path):
    """test_emit's cases, every special character in every place, read back
    by Telegraf's own line-protocol parser: as written, but for a line break
    or a tab (a space), an empty tag (none) and trailing backslashes (none)."""
    trailing = Point("m\\", {"a": "x\\", "b": "\\\\", "c": "y\\,z", "t": "a\tb"}, {"f\\": 1},
                     1700000000000000001)
    lines = tmp_path / "lines.txt"
    lines.write_text(encode(ODD) + "\n" + encode(trailing) + "\n")
    t = telegraf(f'[[inputs.execd]]\n  command = ["sh", "-c", "cat {lines}; exec cat >/dev/null"]\n'
                 '  signal = "none"\n  data_format = "influx"\n', omit_hostname=True)
    assert eventually(lambda: len(t.metrics()) == 2, timeout=15), t.logged()
    odd, trailed = sorted(t.metrics(), key=lambda m: m["timestamp"])
    assert odd == {"name": "tcp drop,x", "tags": {"frame": "a b,c=d\\e", "z key": "v", "a=b": "x y"},
                   "fields": ODD.fields, "timestamp": ODD.time_ns}
    assert trailed == {"name": "m", "tags": {"a": "x", "c": "y\\,z", "t": "a b"}, "fields": {"f": 1},
                       "timestamp": 1700000000000000001}


@settings(max_examples=4, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.data_too_large,
                                 HealthCheck.too_slow])
@given(values=POINTS)
def test_any_string_as_a_tag_and_a_field_reaches_telegraf_as_the_readme_says(telegraf_bin, tmp_path,
                                                                              values):
    """Each value as a tag and as a string field, one line each: Telegraf's
    parser takes every line (none rejected) and reads back what was written,
    or its documented replacement."""
    work = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example
    lines = work / "lines.txt"
    lines.write_text("".join(encode(Point("m", {"v": value}, {"i": i, "s": value}, 1700000000000000000 + i))
                             + "\n" for i, value in enumerate(values)))
    t = Telegraf(telegraf_bin, work, f'[[inputs.execd]]\n  command = ["sh", "-c", "cat {lines}; exec cat '
                 '>/dev/null"]\n  signal = "none"\n  data_format = "influx"\n', omit_hostname=True)
    t.start()
    try:
        assert eventually(lambda: len(t.metrics()) == len(values), timeout=15), t.logged()
        assert "E!" not in t.logged(), t.logged()
        got = {m["fields"]["i"]: (m["tags"], m["fields"]["s"]) for m in t.metrics()}
        assert got == {i: ({"v": as_tag(v)} if as_tag(v) else {}, as_string(v))
                       for i, v in enumerate(values)}
    finally:
        t.stop()


def test_drop_in_counts_real_drops(telegraf, netns):
    t = telegraf()
    assert eventually(lambda: "attached to tp_btf/kfree_skb" in t.logged(), timeout=15), t.logged()
    netns.traffic("raw-syns", 7500, 50, 40000)
    assert eventually(lambda: drops(t.metrics(), dport="7500") >= 50, timeout=10), t.logged()
    # Two more intervals written out (one tcpdrop_agent point each): nothing counted twice.
    intervals = len(agent_points(t.metrics()))
    assert eventually(lambda: len(agent_points(t.metrics())) >= intervals + 2, timeout=10), \
        f"fewer than 2 more intervals written in 10 s: {t.logged()}"
    assert drops(t.metrics(), dport="7500", flags="SYN", reason="NO_SOCKET",
                 sport="ephemeral", state="NONE", family="4", frame="tcp_v4_rcv") == 50
    assert all(m["tags"].get("host") for m in t.metrics())  # Telegraf adds the host
    # Our stderr lines reach Telegraf's log at their level.
    assert re.search(r"I! \[inputs\.execd\] .*attached to tp_btf/kfree_skb", t.logged()), t.logged()


def test_telegraf_test_mode(telegraf_bin, tmp_path, netns):
    conf = tmp_path / "tcpdrop.conf"
    conf.write_text(shipped_drop_in())
    proc = subprocess.Popen([telegraf_bin, "--config", str(conf), "--test", "--test-wait", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = [], []
    readers = [threading.Thread(target=Tracer._read, args=(stream, into, str), daemon=True)
               for stream, into in ((proc.stdout, out), (proc.stderr, err))]
    for reader in readers:
        reader.start()
    # The drops must come after the plugin attached, and before Telegraf's one
    # gather at the end of its --test-wait.
    def attached():
        return any("attached to tp_btf/kfree_skb" in line for line in err)
    eventually(lambda: attached() or proc.poll() is not None, timeout=4)
    assert attached(), f"the plugin did not attach within Telegraf's --test-wait: {''.join(err)}"
    netns.traffic("raw-syns", 7501, 4, 40000)
    proc.wait(timeout=30)
    for reader in readers:
        reader.join(timeout=5)
    out, err = "".join(out), "".join(err)
    assert proc.returncode == 0, err
    assert re.search(r"^> tcpdrop,dport=7501,.*flags=SYN.*[ ,]drops=4i", out, re.M), out + err
    assert re.search(r"^> tcpdrop_agent,host=\S+ events_lost=0i", out, re.M), out


def test_stopping_telegraf_stops_the_plugin_within_a_second(telegraf):
    t = telegraf()
    assert eventually(t.plugin_pid, timeout=15)
    assert eventually(lambda: "attached" in t.logged(), timeout=15)
    pid = t.plugin_pid()
    t.proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    assert eventually(lambda: not os.path.exists(f"/proc/{pid}") or
                      open(f"/proc/{pid}/stat").read().split()[2] == "Z", timeout=1.0)
    assert time.monotonic() - stopped < 1.0
    t.proc.wait(timeout=20)


def test_telegraf_restarts_a_crashed_plugin(telegraf):
    t = telegraf(shipped_drop_in().replace('restart_delay = "10s"', 'restart_delay = "1s"'))
    assert eventually(lambda: "attached" in t.logged(), timeout=15)
    first = t.plugin_pid()
    os.kill(first, signal.SIGKILL)
    assert eventually(lambda: t.plugin_pid() not in (None, first), timeout=10), t.logged()
    assert eventually(lambda: t.logged().count("attached to tp_btf") == 2, timeout=10), t.logged()
