"""Fixtures for tests that load the real probe and cause real drops.

Each scenario gets a network namespace of its own (only loopback, up), so
its drops are told apart from the host's by the namespace inode.
"""
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pytest

import traffic

TESTS = Path(__file__).parent
CLI = str(Path(sys.executable).parent / "telegraf-tcpdrop")
_names = itertools.count()
# A namespace's counters of the SYNs its listeners refuse (nstat names).
LISTEN_COUNTERS = ("TcpExtListenDrops", "TcpExtListenOverflows", "TcpExtTCPReqQFullDrop")


def eventually(condition, timeout=5.0, interval=0.02):
    """condition()'s first truthy value within timeout, else None."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class Netns:
    def __init__(self):
        self.name = f"tcpdrop-test-{os.getpid()}-{next(_names)}"
        # Namespace inodes are reused once freed: events of this namespace
        # are those with its inode that came after it was made.
        self.created = datetime.now(timezone.utc).isoformat(timespec="microseconds")[:26] + "Z"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.inode = os.stat(f"/run/netns/{self.name}").st_ino
        self.sh("ip", "link", "set", "lo", "up")
        # No timestamps: crafted segments then meet only the sequence checks.
        self.sh("sysctl", "-qw", "net.ipv4.tcp_timestamps=0")

    def sh(self, *cmd, input=None):
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], check=True,
                              capture_output=True, text=True, input=input).stdout

    def traffic(self, kind, *args, cpu=None):
        """Runs tests/traffic.py KIND ARGS here (on one CPU if cpu is given);
        its `key=value` lines as a dict."""
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        out = self.sh(*pin, sys.executable, str(TESTS / "traffic.py"), kind, *map(str, args))
        return dict(line.split("=", 1) for line in out.split())

    def drop_input_port(self, port):
        """An nftables rule that drops TCP to port on input (IPv4 and IPv6)."""
        self.sh("nft", "-f", "-", input=f"""
            table inet filter {{
                chain input {{ type filter hook input priority 0; tcp dport {port} drop; }}
            }}""")

    def fill_syn_queue(self):
        """No syncookies, and no RST leaves: requests whose SYN-ACK no one
        answers stay queued, so a listener's SYN queue fills."""
        self.sh("sysctl", "-qw", "net.ipv4.tcp_syncookies=0")
        self.sh("nft", "-f", "-", input="""
            table inet t {
                chain out { type filter hook output priority 0; tcp flags rst drop; }
            }""")

    def counter(self, name):
        """A kernel SNMP/netstat counter of this namespace (nstat names)."""
        out = self.sh("nstat", "-asz", name)
        return int(out.split()[-2]) if name in out else 0

    def delete(self):
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture
def netns():
    require_root()
    ns = Netns()
    yield ns
    ns.delete()


@pytest.fixture
def pair():
    """(server, client): two namespaces joined by a veth, the client's end
    traffic.VETH; the server gives up reassembling a datagram after 1 s."""
    require_root()
    server, client = Netns(), Netns()
    try:
        client.sh("ip", "link", "add", traffic.VETH, "address", traffic.CLIENT_MAC, "type", "veth",
                  "peer", "name", "veth1", "netns", server.name, "address", traffic.SERVER_MAC)
        for ns, dev, v4, v6 in ((client, traffic.VETH, traffic.CLIENT_V4, traffic.CLIENT_V6),
                                (server, "veth1", traffic.SERVER_V4, traffic.SERVER_V6)):
            ns.sh("ip", "addr", "add", f"{v4}/24", "dev", dev)
            ns.sh("ip", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            ns.sh("ip", "link", "set", dev, "up")
        server.sh("sysctl", "-qw", "net.ipv4.ipfrag_time=1", "net.ipv6.ip6frag_time=1")
        yield server, client
    finally:
        client.delete()
        server.delete()


def as_nobody_with(*caps):
    """setpriv: user nobody with exactly these capabilities (ambient, as the
    package's launcher raises them for the monitor alone)."""
    listed = ",".join(f"+{cap}" for cap in caps) or "-all"
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            f"--inh-caps={listed}", f"--ambient-caps={listed}"]


# CAP_SYSLOG, CAP_PERFMON, CAP_BPF, as /proc/PID/status shows capability sets:
# what the package's launcher gives the monitor.
MONITOR_CAPS = (1 << 34) | (1 << 38) | (1 << 39)


def build_deb(tree):
    """`make deb` in a tree: (the package, make's output)."""
    result = subprocess.run(["make", "-C", str(tree), "deb"], capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for line in result.stdout.splitlines():
        if line.startswith("W! the package is HEAD"):  # what is tested is not the tree as it is
            warnings.warn(line)
    [deb] = (Path(tree) / "build" / "deb").glob("telegraf-tcpdrop_*.deb")
    return deb, result.stdout


def deb_depends(deb):
    """The package names a .deb depends on (versions and alternatives left out)."""
    field = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True,
                           text=True, check=True).stdout
    return [re.split(r"[ :(|]", d.strip())[0] for d in field.split(",")]


def require_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: loads BPF programs and creates network namespaces")


class Tracer:
    """`telegraf-tcpdrop trace --json` running in the background."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([CLI, "trace", "--json", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.events, self.stderr = [], []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.events, json.loads),
                         daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, str),
                         daemon=True).start()
        if not eventually(lambda: any("I! attached" in l for l in self.stderr) or
                          self.proc.poll() is not None, timeout=10):
            self.stop()
        assert any("I! attached" in l for l in self.stderr), "".join(self.stderr)

    @staticmethod
    def _read(stream, into, parse):
        for line in stream:
            into.append(parse(line))

    def events_in(self, ns):
        return [e for e in self.events if e["netns"] == ns.inode and e["time"] >= ns.created]

    def wait_for(self, ns, count=1, timeout=5.0, **fields):
        """The events in ns whose fields match, once there are at least count."""
        def matching():
            found = [e for e in self.events_in(ns) if all(e[k] == v for k, v in fields.items())]
            return found if len(found) >= count else None
        return eventually(matching, timeout) or []

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=5)
        return self.proc.returncode


@pytest.fixture(scope="module")
def tracer():
    require_root()
    t = Tracer("--rate-limit", "0")
    yield t
    assert t.stop() == 0
    assert not any("Traceback" in l for l in t.stderr), "".join(t.stderr)


def parse_line(line):
    """(measurement, tags, fields, time) of a line of our own line protocol.
    Only for lines without escapes; Telegraf's parser checks escaping in test_telegraf.py."""
    assert "\\" not in line, line
    head, fields, time_ns = line.rsplit(" ", 2) if '"' not in line else _split_quoted(line)
    measurement, *tags = head.split(",")
    values = {}
    for field in _fields(fields):
        k, v = field.split("=", 1)
        values[k] = int(v[:-1]) if v.endswith("i") else v.strip('"')
    return measurement, dict(t.split("=", 1) for t in tags), values, int(time_ns)


def _split_quoted(line):
    head, rest = line.split(" ", 1)
    fields, time_ns = rest.rsplit(" ", 1)
    return head, fields, time_ns


def _fields(text):
    parts, quoted, current = [], False, ""
    for c in text:
        if c == '"':
            quoted = not quoted
        if c == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += c
    return parts + [current]


class Metrics:
    """`telegraf-tcpdrop metrics` running in the background, its output parsed."""

    def __init__(self, *args, prefix=()):
        self.proc = subprocess.Popen([*prefix, CLI, "metrics", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.points, self.stderr = [], []
        self.readers = [threading.Thread(target=Tracer._read, args=args, daemon=True)
                        for args in ((self.proc.stdout, self.points, parse_line),
                                     (self.proc.stderr, self.stderr, str))]
        for reader in self.readers:
            reader.start()
        assert eventually(lambda: any("I! attached" in l for l in self.stderr) or
                          self.proc.poll() is not None, timeout=10)
        assert any("I! attached" in l for l in self.stderr), "".join(self.stderr)

    def total(self, field="drops", measurement="tcpdrop", **tags):
        """The sum of field over the points so far whose tags include tags."""
        return sum(f.get(field, 0) for m, t, f, _ in self.points
                   if m == measurement and all(t.get(k) == v for k, v in tags.items()))

    def wait_total(self, expected, timeout=10.0, **kwargs):
        eventually(lambda: self.total(**kwargs) >= expected, timeout)
        return self.total(**kwargs)

    def stop(self, sig=signal.SIGTERM):
        """Its exit code, once it has exited and every line it wrote is read."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=5)
        for reader in self.readers:
            reader.join(timeout=5)
        return self.proc.returncode


@pytest.fixture
def metrics():
    """start(*args) runs `metrics` with args; each must end with exit 0 and
    Telegraf-prefixed stderr lines only."""
    require_root()
    started = []

    def start(*args, prefix=()):
        started.append(Metrics(*args, prefix=prefix))
        return started[-1]
    yield start
    for m in started:
        assert m.stop() == 0, m.stderr
        assert all(line[:3] in ("E! ", "W! ", "I! ", "D! ") for line in m.stderr), m.stderr


@pytest.fixture(scope="session")
def telegraf_bin():
    """A custom Telegraf built from its Go module (tests/peers/build-telegraf.sh, cached)."""
    require_root()
    result = subprocess.run(["bash", str(TESTS / "peers" / "build-telegraf.sh")],
                            capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]
