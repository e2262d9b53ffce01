"""Run as root inside the Debian 13 machine (tests/peers/system_vm.py) by
test_system.py: the monitored host's life, step by step, under systemd.
Writes what it saw to JOB/results.json; the assertions are test_system.py's.

JOB holds telegraf.deb (Telegraf packaged with its upstream scripts and
unit), telegraf-tcpdrop.deb, and telegraf.conf (Telegraf's main config).
"""
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

JOB = Path(sys.argv[1])
TESTS = Path(__file__).parent
METRICS = Path("/var/log/telegraf/metrics.json")  # Telegraf's outputs.file
VM_URL = "http://127.0.0.1:8428"  # Debian's victoria-metrics, started at boot
LAUNCHER = "/usr/libexec/telegraf-tcpdrop/metrics"
results = {}


def sh(*cmd, check=True, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if check and result.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {result.returncode}\n{result.stdout}{result.stderr}")
    return result


def eventually(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.25)
    return condition()


def syns(netns, port, count):
    """count SYNs to a closed port, from the namespace netns (made if new)."""
    if not Path(f"/run/netns/{netns}").exists():
        sh("ip", "netns", "add", netns)
        sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
    sh("ip", "netns", "exec", netns, sys.executable, str(TESTS / "traffic.py"), "raw-syns", str(port),
       str(count), "40000")


def points(name):
    if not METRICS.exists():
        return []
    return [m for m in map(json.loads, METRICS.read_text().splitlines()) if m["name"] == name]


def telegraf_drops(port):
    return sum(m["fields"]["drops"] for m in points("tcpdrop") if m["tags"].get("dport") == str(port))


def unit(name, prop):
    return sh("systemctl", "show", "-p", prop, "--value", name).stdout.strip()


def capabilities(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return {k: int(v, 16) for k, v in re.findall(r"^(Cap(?:Eff|Prm|Amb)):\s*(\w+)$", status, re.M)}


def monitor_of(telegraf_pid):
    """(pid, user) of the process Telegraf's execd input started, or None."""
    out = sh("ps", "-o", "pid=,user=,args=", "--ppid", str(telegraf_pid), check=False).stdout
    for line in out.splitlines():
        pid, user, args = line.split(None, 2)
        if "telegraf-tcpdrop" in args:
            return int(pid), user
    return None


def journal(name, cursor):
    """[(PRIORITY, MESSAGE)] of a unit's journal entries after cursor (now())."""
    out = sh("journalctl", "-u", name, "--after-cursor", cursor, "-o", "json", "--no-pager").stdout
    return [(int(e.get("PRIORITY", -1)), e.get("MESSAGE", "")) for e in map(json.loads, out.splitlines())
            if isinstance(e.get("MESSAGE"), str)]


def vm_series(name, **labels):
    urllib.request.urlopen(f"{VM_URL}/internal/force_flush").read()
    query = urllib.parse.urlencode({"match[]": f'{{__name__="{name}"}}'}).encode()
    out = urllib.request.urlopen(f"{VM_URL}/api/v1/export", data=query).read().decode()
    return [s for s in map(json.loads, out.splitlines())
            if all(s["metric"].get(k) == v for k, v in labels.items())]


def vm_total(name, **labels):
    return sum(sum(s["values"]) for s in vm_series(name, **labels))


def intervals_pass(count, emitted):
    """Waits until the monitor has emitted count more intervals (emitted():
    how many so far): what a drop counted before would have shown by then."""
    start = emitted()
    return eventually(lambda: emitted() >= start + count, 60)


def telegraf_intervals():
    return len(points("tcpdrop_agent"))


def service_intervals():
    return sum(len(s["values"]) for s in vm_series("tcpdrop_agent_interval_ns"))


def step(name):
    """A step begins: what was seen so far is written (a later failure keeps it)."""
    (JOB / "results.json").write_text(json.dumps(results, indent=1))
    print(f"--- {name}", flush=True)


def now():
    """The journal's cursor now: this phase's lines come after it."""
    out = sh("journalctl", "-n", "1", "--show-cursor", "-o", "cat", "--no-pager").stdout
    return out.rsplit("-- cursor: ", 1)[1].strip()


step("our package before Telegraf")
install = sh("apt-get", "install", "-y", "-q", "--no-install-recommends", f"{JOB}/telegraf-tcpdrop.deb",
             env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
launcher = Path(LAUNCHER).stat()
results["launcher"] = {"mode": oct(launcher.st_mode & 0o7777), "owner": sh("stat", "-c", "%U:%G", LAUNCHER).stdout.strip(),
                       "caps": sh("getcap", LAUNCHER).stdout.strip()}
# From a shell, as a user would: setpriv itself keeps root's capabilities
# until it has started its command.
outsider = sh("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "sh", "-c", f"exec {LAUNCHER}",
              check=False)
results["outsider"] = {"exit": outsider.returncode, "stderr": outsider.stderr}

step("Telegraf, packaged with its upstream scripts and unit")
first_telegraf = now()
sh("dpkg", "-i", f"{JOB}/telegraf.deb")
Path("/etc/telegraf/telegraf.conf").write_text((JOB / "telegraf.conf").read_text())
results["telegraf_enabled"] = sh("systemctl", "is-enabled", "telegraf", check=False).stdout.strip()
sh("systemctl", "start", "telegraf")
results["telegraf_started"] = eventually(lambda: points("tcpdrop_agent") and points("bpf_attempt"), 120)
telegraf = int(unit("telegraf", "MainPID"))
results["telegraf_user"] = sh("ps", "-o", "user=", "-p", str(telegraf)).stdout.strip()
results["telegraf_caps"] = capabilities(telegraf)
monitor, user = monitor_of(telegraf)
results["monitor_user"], results["monitor_caps"] = user, capabilities(monitor)
results["bpf_attempt"] = sorted({m["fields"]["errno"] for m in points("bpf_attempt")})
syns("sys1", 7960, 25)
eventually(lambda: telegraf_drops(7960) >= 25, 60)
intervals_pass(2, telegraf_intervals)  # no more than sent arrives later
results["drops_7960"] = telegraf_drops(7960)

step("our package again: its postinst restarts Telegraf")
before = unit("telegraf", "InvocationID")
sh("apt-get", "install", "-y", "-q", "--reinstall", f"{JOB}/telegraf-tcpdrop.deb",
   env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
results["restarted_by_postinst"] = before != unit("telegraf", "InvocationID") and \
    unit("telegraf", "ActiveState") == "active"

step("Telegraf restarted while drops flow")
intervals_pass(1, telegraf_intervals)  # the monitor Telegraf started again has attached
syns("sys1", 7961, 30)
sh("systemctl", "restart", "telegraf")  # within the interval the 30 fell in
intervals_pass(1, telegraf_intervals)
syns("sys1", 7961, 20)
eventually(lambda: telegraf_drops(7961) >= 50, 60)
intervals_pass(2, telegraf_intervals)
results["drops_7961"] = telegraf_drops(7961)
results["telegraf_journal"] = [(p, m) for p, m in journal("telegraf", first_telegraf)
                               if "[inputs.execd]" in m][-5:]

step("telegraf-tcpdrop.service, writing to VictoriaMetrics")
since = now()
toml = Path("/etc/telegraf-tcpdrop/tcpdrop.toml")
shipped = toml.read_text()
Path("/etc/default/telegraf-tcpdrop").write_text("INFLUX_TOKEN=x\n")
# A URL where nothing listens: warnings.
toml.write_text(shipped + '\ninflux_url = "http://127.0.0.1:9"\ninterval = "1s"\n')
sh("systemctl", "start", "telegraf-tcpdrop")
eventually(lambda: any(m.startswith("W! ") for _, m in journal("telegraf-tcpdrop", since)), 120)
sh("systemctl", "stop", "telegraf-tcpdrop")
# A wrong option: an error, and the unit fails.
toml.write_text(shipped + '\ninterval = "1s"\nport_tags = "sometimes"\n')
sh("systemctl", "start", "telegraf-tcpdrop", check=False)
eventually(lambda: any(m.startswith("E! ") for _, m in journal("telegraf-tcpdrop", since)), 120)
sh("systemctl", "stop", "telegraf-tcpdrop", check=False)
sh("systemctl", "reset-failed", "telegraf-tcpdrop", check=False)
# A root-only token file named in the config: the service's own user cannot
# read it; one line says so, and what to do.
token = Path("/etc/telegraf-tcpdrop/token")
token.write_text("x\n")
token.chmod(0o600)
Path("/etc/default/telegraf-tcpdrop").unlink()
toml.write_text(shipped + f'\ninflux_url = "{VM_URL}"\ninterval = "1s"\ninflux_token_file = "{token}"\n')
sh("systemctl", "start", "telegraf-tcpdrop", check=False)
eventually(lambda: any("InfluxDB token file" in m for _, m in journal("telegraf-tcpdrop", since)), 120)
sh("systemctl", "stop", "telegraf-tcpdrop", check=False)
sh("systemctl", "reset-failed", "telegraf-tcpdrop", check=False)
# The right one: the same file, as the systemd credential the config's comment shows.
dropin = Path("/etc/systemd/system/telegraf-tcpdrop.service.d/token.conf")
dropin.parent.mkdir(parents=True, exist_ok=True)
dropin.write_text(f"[Service]\nLoadCredential=influx-token:{token}\n")
sh("systemctl", "daemon-reload")
toml.write_text(shipped + f'\ninflux_url = "{VM_URL}"\ninterval = "1s"\n')
started = now()
sh("systemctl", "start", "telegraf-tcpdrop")
results["service_attached"] = eventually(
    lambda: any(m.startswith("I! attached") for _, m in journal("telegraf-tcpdrop", started)), 180)
service = int(unit("telegraf-tcpdrop", "MainPID"))
results["service_user"] = sh("ps", "-o", "user=", "-p", str(service), check=False).stdout.strip()
results["service_caps"] = capabilities(service) if service else None
syns("sys2", 7962, 40)
eventually(lambda: vm_total("tcpdrop_drops", dport="7962") >= 40, 60)
intervals_pass(2, service_intervals)
results["vm_drops_7962"] = vm_total("tcpdrop_drops", dport="7962")

step("our package again, the service enabled and running: dpkg's upgrade path")
# A reinstall runs what an upgrade runs (prerm upgrade, preinst upgrade,
# postinst configure with the old version): the unit is restarted, still
# enabled, and the launcher keeps its capabilities.
sh("systemctl", "enable", "telegraf-tcpdrop")
before = unit("telegraf-tcpdrop", "InvocationID")
restarted = now()  # before apt: the postinst restarts the service
sh("apt-get", "install", "-y", "-q", "--reinstall", f"{JOB}/telegraf-tcpdrop.deb",
   env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
service = int(unit("telegraf-tcpdrop", "MainPID"))
results["service_upgrade"] = {
    "restarted": before != unit("telegraf-tcpdrop", "InvocationID"),
    "active": unit("telegraf-tcpdrop", "ActiveState"),
    "enabled": sh("systemctl", "is-enabled", "telegraf-tcpdrop", check=False).stdout.strip(),
    "launcher_caps": sh("getcap", LAUNCHER).stdout.strip(),
    "service_caps": capabilities(service) if service else None}
results["service_upgrade"]["attached"] = eventually(
    lambda: any(m.startswith("I! attached") for _, m in journal("telegraf-tcpdrop", restarted)), 180)
syns("sys2", 7963, 15)
eventually(lambda: vm_total("tcpdrop_drops", dport="7963") >= 15, 60)
intervals_pass(2, service_intervals)
results["service_upgrade"]["vm_drops_7963"] = vm_total("tcpdrop_drops", dport="7963")
sh("systemctl", "disable", "--now", "telegraf-tcpdrop")
results["service_journal"] = journal("telegraf-tcpdrop", since)
results["security"] = sh("systemd-analyze", "security", "--no-pager", "telegraf-tcpdrop",
                         check=False).stdout.strip().splitlines()[-1]

step("apt remove: Telegraf keeps running")
sh("apt-get", "remove", "-y", "-q", "telegraf-tcpdrop",
   env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
# the postrm restarts Telegraf without the input: active, no monitor
eventually(lambda: unit("telegraf", "ActiveState") == "active" and
           not monitor_of(int(unit("telegraf", "MainPID") or 0)), 60)
results["after_remove"] = {"telegraf": unit("telegraf", "ActiveState"),
                           "monitor": monitor_of(int(unit("telegraf", "MainPID") or 0))}

(JOB / "results.json").write_text(json.dumps(results, indent=1))
