"""Fixtures for tests that load the real probe and cause real drops.

Each scenario gets a network namespace of its own (only loopback, up), so
its drops are told apart from the host's by the namespace inode.
"""
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
CLI = str(Path(sys.executable).parent / "telegraf-tcpdrop")
_names = itertools.count()


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
