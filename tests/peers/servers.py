"""Real servers the outputs talk to, each started on loopback in a directory of
its own and stopped at the end: VictoriaMetrics and InfluxDB 1.x (Debian's
packages), InfluxDB 1.8 and 2.x (built from their Go modules,
build-influxdb1.sh and build-influxdb2.sh), Etsy statsd (npm)."""
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

CACHE = Path(os.environ.get("TELEGRAF_CACHE", Path.home() / ".cache" / "telegraf-tcpdrop"))
ETSY_STATSD_VERSION = "0.9.0"


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout=20.0, what="server"):
    """Until a server comes up: refused connections (OSError) are "not yet".
    Its own loop, not conftest.eventually: the peers are imported without the
    test harness too (bench/run.py reaches kernel_vm through here)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not come up in {timeout} s")


def http(url, data=None, method=None, headers=None):
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


class Server:
    """A process with a log file; stop() is SIGTERM, then SIGKILL."""
    proc = None

    def start_process(self, args, workdir):
        self.log = open(Path(workdir) / "server.log", "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=workdir)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class VictoriaMetrics(Server):
    """Takes InfluxDB's /api/v2/write; answers PromQL-style exports."""

    def __init__(self, workdir):
        self.workdir, self.port = Path(workdir), free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        self.start_process(["victoria-metrics", f"-httpListenAddr=127.0.0.1:{self.port}",
                            f"-storageDataPath={self.workdir / 'data'}", "-retentionPeriod=100y",
                            "-search.latencyOffset=0s", "-loggerLevel=ERROR"], self.workdir)
        wait_until(lambda: http(f"{self.url}/health") == "OK", what="VictoriaMetrics")
        return self

    def series(self, name):
        """[(labels, values)] of every series of metric name, after a flush to storage."""
        http(f"{self.url}/internal/force_flush")
        query = urllib.parse.urlencode({"match[]": f'{{__name__="{name}"}}'}).encode()
        out = http(f"{self.url}/api/v1/export", data=query)
        return [(s["metric"], s["values"]) for s in map(json.loads, out.splitlines())]

    def total(self, name, **labels):
        return sum(sum(values) for metric, values in self.series(name)
                   if all(metric.get(k) == v for k, v in labels.items()))


class InfluxDB1(Server):
    """influxd 1.x (Debian's 1.6, or 1.8 from build-influxdb1.sh) on a free port;
    a request body over max_body_size bytes (as sent: gzipped) is answered 413.
    admin: (user, password) of its one user, with authentication on; else off."""

    def __init__(self, workdir, binary="influxd", max_body_size=25_000_000, admin=None):
        self.workdir, self.binary, self.port = Path(workdir), binary, free_port()
        self.max_body_size, self.admin = max_body_size, admin
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        d = self.workdir
        (d / "influxdb.conf").write_text(f"""
reporting-disabled = true
bind-address = "127.0.0.1:{free_port()}"
[meta]
  dir = "{d / 'meta'}"
[data]
  dir = "{d / 'data'}"
  wal-dir = "{d / 'wal'}"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  max-body-size = {self.max_body_size}
  auth-enabled = {str(bool(self.admin)).lower()}
""")
        self.start_process([self.binary, "-config", str(d / "influxdb.conf")], d)
        wait_until(lambda: urllib.request.urlopen(f"{self.url}/ping", timeout=2).status == 204,
                   what="InfluxDB")
        if self.admin:  # the first user may be made without one: an admin
            user, password = self.admin
            self.query(f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES", "")
        return self

    def query(self, q, db):
        user, password = self.admin or ("", "")
        url = f"{self.url}/query?" + urllib.parse.urlencode({"q": q, "db": db, "u": user, "p": password})
        return json.loads(http(url, data=b"", method="POST"))

    def http_stats(self):
        """The HTTP service's own counters (writeReq, clientError, pointsWrittenOK, ...),
        from /debug/vars: what the server really received."""
        stats = json.loads(http(f"{self.url}/debug/vars"))
        [values] = [v["values"] for k, v in stats.items() if k.startswith("httpd:")]
        return values


class InfluxDB2(Server):
    """influxd 2.x, set up with an organization, a bucket and a token."""
    ORG, BUCKET, TOKEN = "tcpdrop", "telegraf", "tcpdrop-test-token"

    def __init__(self, workdir, binary):
        self.workdir, self.binary, self.port = Path(workdir), binary, free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        d = self.workdir
        self.start_process([self.binary, "--http-bind-address", f"127.0.0.1:{self.port}",
                            "--bolt-path", str(d / "influxd.bolt"), "--engine-path", str(d / "engine"),
                            "--sqlite-path", str(d / "influxd.sqlite"), "--reporting-disabled",
                            "--log-level", "warn"], d)
        wait_until(lambda: '"pass"' in http(f"{self.url}/health"), what="InfluxDB 2")
        if not (d / "set-up").exists():
            http(f"{self.url}/api/v2/setup", method="POST", headers={"Content-Type": "application/json"},
                 data=json.dumps({"username": "tcpdrop", "password": "tcpdrop-password",
                                  "org": self.ORG, "bucket": self.BUCKET, "token": self.TOKEN}).encode())
            (d / "set-up").touch()
        return self

    def flux(self, query):
        """The rows of a Flux query's answer, as dicts (annotated CSV, annotations left out)."""
        out = http(f"{self.url}/api/v2/query?org={self.ORG}", data=query.encode(), method="POST",
                   headers={"Authorization": f"Token {self.TOKEN}",
                            "Content-Type": "application/vnd.flux", "Accept": "application/csv"})
        rows = [r for r in csv.reader(io.StringIO(out)) if r and not r[0].startswith("#")]
        tables, header = [], None
        for row in rows:
            if row[1:2] == ["result"]:  # each table starts with its header
                header = row
            elif header:
                tables.append(dict(zip(header, row)))
        return tables


class EtsyStatsd(Server):
    """Etsy's statsd (npm), console backend off; counters read from its admin port."""

    def __init__(self, workdir, protocol="udp"):
        self.workdir, self.protocol = Path(workdir), protocol
        self.port = free_port(socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM)
        self.admin_port = free_port()

    @staticmethod
    def install():
        home = CACHE / f"etsy-statsd-{ETSY_STATSD_VERSION}"
        stats_js = home / "node_modules" / "statsd" / "stats.js"
        if not stats_js.exists():
            home.mkdir(parents=True, exist_ok=True)
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--omit=optional",
                            "--prefix", str(home), f"statsd@{ETSY_STATSD_VERSION}"],
                           check=True, capture_output=True)
        return stats_js

    def start(self):
        config = self.workdir / "config.js"
        server = "./servers/udp" if self.protocol == "udp" else "./servers/tcp"
        config.write_text(json.dumps({
            "servers": [{"server": server, "address": "127.0.0.1", "port": self.port}],
            "mgmt_address": "127.0.0.1", "mgmt_port": self.admin_port,
            "flushInterval": 3600000, "backends": [], "deleteIdleStats": True}))
        stats_js = self.install()
        self.start_process([shutil.which("node"), str(stats_js), str(config)], stats_js.parent)
        wait_until(lambda: socket.create_connection(("127.0.0.1", self.admin_port), 1).close()
                   is None, what="Etsy statsd")
        return self

    def admin(self, command):
        with socket.create_connection(("127.0.0.1", self.admin_port), timeout=5) as s:
            s.sendall(command.encode() + b"\n")
            data = b""
            while not data.endswith(b"END\n\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data.decode()

    def counters(self):
        """{name: value} of the counters received since start."""
        text = self.admin("counters").rsplit("END", 1)[0]
        return json.loads(text.replace("'", '"')) if text.strip() else {}
