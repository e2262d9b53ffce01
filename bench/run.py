"""The benchmark: one TCP drop storm after another, each seen by one monitor,
and what each monitor cost. Run as root: `make bench` (or `--smoke`: one short
run of each monitor, seconds, for CI).

A storm is an exact number of SYNs from bench/synflood (raw socket,
sendmmsg) in a network namespace of its own, to a closed port (each SYN and
the RST that answers it are dropped: 2 drops per packet, NO_SOCKET), to a
port nftables drops (1 drop per packet, NETFILTER_DROP) or to a listener
whose accept queue is full (1 per packet: a SYN it refuses, freed by
consume_skb). And, to price the hook on that non-drop path, connections a
listener accepts (bench/connect.py). Per run it records:
packets sent and drops/s, the kernel ns per run of each BPF program the
monitor attached (kernel.bpf_stats_enabled: run_time_ns / run_cnt), the
monitor's CPU % of one core and peak RSS, drops seen vs sent, events lost
or held back, and the time from start to attached.

Monitors: none; floor (an empty tp_btf program, bench/floor.bpf.c) and, in
the tag-set sweep, floor-keyed (one counter per hash of the ports); ours
(`metrics` on tp_btf and on the classic tracepoint, `trace`); bpftrace
counting skb:kfree_skb by reason and location. Sweeps: drop rate (up to the
most this box takes) and distinct tag sets (1 to 10,000 source ports). Then
the same storm in Debian's 6.1 kernel under QEMU (tests/peers/kernel_vm.py),
where bcc runs: bcc's own tcpdrop, the per-event anchor, against ours on
both backends (`--plan anchor`, run inside the VM by this script).
Writes bench/results/<date>.json; bench/report.py turns it into
docs/performance.md and its plots.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from telegraf_tcpdrop import host
from telegraf_tcpdrop import libbpf as lb

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = ROOT / "build" / "bench"
CLI = Path(sys.executable).parent / "telegraf-tcpdrop"
# closed: the SYN, and the RST that answers it; nft: dropped on input, so no
# socket; nft-out: dropped on output, with the sender's (raw) socket attached;
# listen: refused by a listener with a full accept queue; accept: connections
# accepted, none dropped
PORTS = {"closed": 9, "nft": 8080, "nft-out": 8081, "listen": 8082, "accept": 8083}
DROPS_PER_PACKET = {"closed": 2, "nft": 1, "nft-out": 1, "listen": 1, "accept": 0}
# In the storm's namespace: a listener on PORTS["listen"] whose accept queue
# two connections fill (it never accepts), and one on PORTS["accept"] that
# accepts and closes each connection.
LISTENERS = f"""
import socket, threading
full = socket.socket(); full.bind(("127.0.0.1", {PORTS['listen']})); full.listen(1)
clients = [socket.create_connection(("127.0.0.1", {PORTS['listen']})) for _ in range(2)]
server = socket.socket(); server.bind(("127.0.0.1", {PORTS['accept']})); server.listen(128)
print("listening", flush=True)
while True:
    server.accept()[0].close()
"""
REASONS = host.drop_reasons(host.libbpf())
BPFTRACE = "tracepoint:skb:kfree_skb { @drops[args->reason, ksym(args->location)] = count(); }"


def read_lines(stream, into):
    for line in stream:
        into.append(line)


def sh(*cmd, **kwargs):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs).stdout


class Storm:
    """A network namespace whose loopback takes the SYNs, with nftables
    dropping one port."""

    def __init__(self):
        self.name = f"tcpdrop-bench-{os.getpid()}"
        sh("ip", "netns", "add", self.name)
        try:
            self.sh("ip", "link", "set", "lo", "up")
            self.sh("nft", "-f", "-", input=f"""table inet bench {{
                chain input {{ type filter hook input priority 0; tcp dport {PORTS['nft']} drop; }}
                chain output {{ type filter hook output priority 0; tcp dport {PORTS['nft-out']} drop; }}
            }}""")
            self.listeners = subprocess.Popen(["ip", "netns", "exec", self.name, sys.executable, "-c",
                                               LISTENERS], stdout=subprocess.PIPE, text=True)
            self.listeners.stdout.readline()  # listening
        except subprocess.CalledProcessError:
            self.close()  # no namespace left behind
            raise

    def sh(self, *cmd, **kwargs):
        return sh("ip", "netns", "exec", self.name, *cmd, **kwargs)

    def send(self, kind, packets, sports=None, pps=0):
        """(packets sent, seconds) of one storm: SYNs, or connections (accept)."""
        if kind == "accept":
            args = [sys.executable, str(BENCH / "connect.py"), "127.0.0.1", str(PORTS[kind]), str(packets)]
        else:
            args = [str(BUILD / "synflood"), "127.0.0.1", str(PORTS[kind]), str(packets)]
        if sports or pps:
            args += [str(sports or 28232), str(pps)]
        out = dict(kv.split("=") for kv in self.sh(*args).split())
        return int(out["sent"]), float(out["seconds"])

    def close(self):
        if getattr(self, "listeners", None):
            self.listeners.kill()
            self.listeners.wait()
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def bpf_programs():
    """{id: (name, run_time_ns, run_cnt)} of every loaded BPF program."""
    listed = json.loads(sh("bpftool", "prog", "show", "--json"))
    return {p["id"]: (p.get("name", ""), p.get("run_time_ns", 0), p.get("run_cnt", 0))
            for p in listed}


class Monitor:
    """One monitor process (or none, or the floor program loaded here)."""

    def __init__(self, name, command=None, ready=None, floor=()):
        self.name, self.command, self.ready, self.floor = name, command, ready, floor
        self.proc, self.lines, self.stderr, self._floor = None, [], [], None
        self.readers = []

    def start(self):
        before = set(bpf_programs())
        started = time.monotonic()
        if self.floor:
            self._floor = Floor(self.floor)
        elif self.command:
            # unbuffered: bcc's tcpdrop is a Python script, and its header says it attached
            self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
            self.readers = [threading.Thread(target=read_lines, args=(stream, into), daemon=True)
                            for stream, into in ((self.proc.stdout, self.lines),
                                                 (self.proc.stderr, self.stderr))]
            for reader in self.readers:
                reader.start()
            deadline = time.monotonic() + 600  # bcc compiles for a minute under QEMU
            while not any(self.ready in line for line in self.lines + self.stderr):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{self.name} did not start: {''.join(self.stderr)}")
                time.sleep(0.005)
        self.startup = time.monotonic() - started
        deadline = time.monotonic() + 5  # the program shows up in the kernel's list
        while True:
            self.prog_ids = set(bpf_programs()) - before
            if self.prog_ids or not (self.floor or self.command) or time.monotonic() > deadline:
                break
            time.sleep(0.05)

    def cpu_seconds(self):
        """CPU time of all its threads, in ns precision (/proc's clock ticks are 10 ms)."""
        if not self.proc:
            return 0.0
        total = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9

    def wait_for_interval(self, after_ns=None):
        """metrics: until the points of its next interval are out, or of the
        first one taken after after_ns (wall clock: a tcpdrop_agent line's
        timestamp, taken before the counts are read). CPU is then measured
        over whole intervals (each costs the same, storm or not: a window with
        one interval more would read as 25% more CPU)."""
        if not self.name.startswith("metrics"):
            return
        at = 0 if after_ns is not None else len(self.lines)
        deadline = time.monotonic() + 5
        while True:
            for line in self.lines[at:]:
                at += 1
                if line.startswith("tcpdrop_agent") and int(line.rsplit(" ", 1)[1]) > (after_ns or 0):
                    return
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name} wrote nothing for 5 s: {''.join(self.stderr)}")
            time.sleep(0.002)

    def wait_for_storm(self, kind, expected, ended_ns):
        """Until the monitor has reported the storm that ended at ended_ns
        (wall clock), so that the CPU window holds the work the storm made:
        metrics, the first interval taken after it; trace and bcc's tcpdrop,
        every drop printed or said not shown (trace says so each second), or
        5 s without (stop() takes the rest, and what is missing is the
        result). bpftrace prints its counts at exit; none and the floor
        report nothing."""
        if self.name.startswith("metrics"):
            self.wait_for_interval(after_ns=ended_ns)
        elif self.name in ("trace", "bcc-tcpdrop"):
            deadline = time.monotonic() + 5
            while seen(self, kind)["drops"] < expected and time.monotonic() < deadline:
                time.sleep(0.05)

    def peak_rss_kib(self):
        if not self.proc:
            return 0
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])

    def stop(self):
        """Seconds from the stop signal to exit."""
        started = time.monotonic()
        if self._floor:
            self._floor.close()
        if self.proc:
            self.proc.send_signal(signal.SIGINT)
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            for reader in self.readers:  # every line it wrote
                reader.join(timeout=30)
                if reader.is_alive():
                    raise SystemExit(f"{self.name}: its output did not end within 30 s of its exit")
        return time.monotonic() - started


class Floor:
    """Programs of bench/floor.bpf.o, loaded and attached here, through the system libbpf."""

    def __init__(self, programs):
        self.lib = lb.load()
        self.obj = lb.check_ptr(self.lib.bpf_object__open_file(
            str(BUILD / "floor.bpf.o").encode(), None), "open floor.bpf.o")
        for program in FLOOR_PROGRAMS:
            self.lib.bpf_program__set_autoload(
                self.lib.bpf_object__find_program_by_name(self.obj, program.encode()), program in programs)
        lb.check_int(self.lib.bpf_object__load(self.obj), "load floor.bpf.o")
        self.links = [lb.check_ptr(self.lib.bpf_program__attach(
            self.lib.bpf_object__find_program_by_name(self.obj, name.encode())), f"attach {name}")
            for name in programs]

    def close(self):
        for link in self.links:
            self.lib.bpf_link__destroy(link)
        self.lib.bpf_object__close(self.obj)


FLOOR_PROGRAMS = ("floor_kfree_skb", "floor_consume_skb", "floor_keyed_kfree_skb")
HIDE_BTF = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none /sys/kernel/btf && exec "$@"', "sh"]


def monitors(kind, port_tags="bucketed"):
    port = str(PORTS[kind])
    metrics = [str(CLI), "metrics", "--port", port, "--interval", "1s", "--port-tags", port_tags]
    attached = "I! attached"
    return {
        "metrics-bcc": Monitor("metrics-bcc", HIDE_BTF + metrics, attached),
        "bcc-tcpdrop": Monitor("bcc-tcpdrop", ["/usr/sbin/tcpdrop-bpfcc"], "TIME"),
        "none": Monitor("none"),
        "floor": Monitor("floor", floor=("floor_kfree_skb", "floor_consume_skb")),
        "floor-keyed": Monitor("floor-keyed", floor=("floor_keyed_kfree_skb",)),
        "metrics": Monitor("metrics", metrics, attached),
        "metrics-tracepoint": Monitor("metrics-tracepoint", metrics + ["--hook", "tracepoint"], attached),
        "metrics-no-netns": Monitor("metrics-no-netns", metrics + ["--netns-tags", "none"], attached),
        # Room for 64 tag sets: past a few ports, nearly every drop takes the full-map path.
        "metrics-full": Monitor("metrics-full", metrics + ["--max-keys", "64"], attached),
        "trace": Monitor("trace", [str(CLI), "trace", "--json", "--no-stack", "--port", port], attached),
        "bpftrace": Monitor("bpftrace", ["bpftrace", "-e", BPFTRACE], "Attaching"),
    }


def seen(monitor, kind):
    """What the monitor reported of the storm: {drops, overflow, events, held_back}."""
    if monitor.name.startswith("metrics"):
        drops = sum(int(m.group(1)) for line in monitor.lines if line.startswith("tcpdrop,")
                    for m in [re.search(r" drops=(\d+)i", line)])
        overflow = sum(int(m.group(1)) for line in monitor.lines if line.startswith("tcpdrop_agent")
                       for m in [re.search(r"map_overflow_drops=(\d+)i", line)])
        return {"drops": drops + overflow, "overflow": overflow}
    if monitor.name == "trace":
        held = sum(int(m.group(1)) for line in monitor.stderr
                   for m in [re.search(r"W! (\d+) drops not shown", line)] if m)
        return {"drops": len(monitor.lines) + held, "events": len(monitor.lines), "held_back": held}
    if monitor.name == "bcc-tcpdrop":  # 12:00:01 0 4 127.0.0.1:32768 > 127.0.0.1:8080 NONE (SYN)
        port = PORTS[kind]
        return {"drops": sum(1 for line in monitor.lines if re.match(rf"\d\d:.* > \S+:{port} ", line))}
    if monitor.name == "bpftrace":  # @drops[3, tcp_v4_rcv]: 2000
        reason = {"closed": "NO_SOCKET", "nft": "NETFILTER_DROP"}.get(kind)
        number = REASONS.number(reason) if reason else r"\d+"  # listen: none reach kfree_skb
        counts = [int(m.group(1)) for line in monitor.lines
                  for m in [re.match(rf"@drops\[{number}, .*\]: (\d+)", line)] if m]
        return {"drops": sum(counts)}
    return {}


# After attaching, the one-off start-up work (kallsyms) is not the storm's.
# metrics says when it is over: its first interval's points (wait_for_interval).
# trace (in --json), bcc's tcpdrop and bpftrace (which says "Attaching" before it
# attaches) say nothing then: they are given this long.
SETTLE_SECONDS = 1.5


def run_one(storm, monitor, kind, packets, sports=None, pps=0, idle_seconds=0):
    monitor.start()
    if monitor.proc and not monitor.name.startswith("metrics"):
        time.sleep(SETTLE_SECONDS)
    monitor.wait_for_interval()
    programs, cpu, wall = bpf_programs(), monitor.cpu_seconds(), time.monotonic()
    if idle_seconds:
        time.sleep(idle_seconds)  # the window measured: what a monitor costs with no drops
        sent, seconds = 0, idle_seconds
    else:
        sent, seconds = storm.send(kind, packets, sports, pps)
    monitor.wait_for_storm(kind, sent * DROPS_PER_PACKET[kind], time.time_ns())
    after, cpu_after = bpf_programs(), monitor.cpu_seconds()
    wall = time.monotonic() - wall
    rss = monitor.peak_rss_kib()
    stop = monitor.stop()
    runs = {after[i][0]: (after[i][1] - programs[i][1], after[i][2] - programs[i][2])
            for i in monitor.prog_ids if i in after and i in programs}
    return {
        "monitor": monitor.name, "kind": kind, "packets": sent, "sports": sports, "pps_asked": pps,
        "drops_expected": sent * DROPS_PER_PACKET[kind], "seconds": seconds,
        "drops_per_s": sent * DROPS_PER_PACKET[kind] / seconds if sent else 0,
        "programs": {name: {"runs": n, "ns": ns, "ns_per_run": ns / n if n else None}
                     for name, (ns, n) in runs.items()},
        "cpu_percent": 100 * (cpu_after - cpu) / wall, "peak_rss_kib": rss,
        "startup_s": monitor.startup, "stop_s": stop, "seen": seen(monitor, kind),
    }


def build():
    """The generator and the floor program, where missing or older than their source."""
    BUILD.mkdir(parents=True, exist_ok=True)
    for source, target, cmd in (
            ("synflood.c", "synflood", ["clang", "-O2", "-Wall", "-o"]),
            ("floor.bpf.c", "floor.bpf.o", ["clang", "-g", "-O2", "-target", "bpf",
                                            "-D__TARGET_ARCH_x86", "-Wall", "-Werror", "-c", "-o"])):
        source, target = BENCH / source, BUILD / target
        if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
            sh(*cmd, str(target), str(source))


def plan(name):
    """(sweep, kind, monitor names, [(packets, sports, pps, idle seconds)], port tags)."""
    if name == "smoke":
        return [("smoke", "nft", ["floor", "metrics", "trace"], [(20000, None, 0, 0)], "bucketed"),
                ("smoke", "listen", ["metrics"], [(20000, None, 0, 0)], "bucketed")]
    if name == "anchor":  # inside the 6.1 VM, under emulation: fewer packets; bcc's
        # tcpdrop reports only drops with a socket: those on output have one
        return [("anchor", "nft-out", ["none", "floor", "metrics", "metrics-bcc", "trace",
                                       "bcc-tcpdrop"], [(20000, None, 0, 0)], "bucketed")]
    everyone = ["none", "floor", "metrics", "metrics-tracepoint", "trace", "bpftrace"]
    rates = [(0, None, 0, 3)] + [(pps * 3, None, pps, 0) for pps in (20000, 50000, 100000)] + \
            [(1000000, None, 0, 0)]
    keys = [(1000000, sports, 0, 0) for sports in (1, 10, 100, 1000, 10000)]
    # Each port 4 SYNs a second for 10 s: 2 tag sets per port (SYN, RST), all
    # of them in every interval, as #16's user-space targets are stated.
    steady = [(sports * 4 * 10, sports, sports * 4, 0) for sports in (500, 5000)]
    if name == "keys":  # the tag-set sweeps alone, to try a change
        return [("keys", "closed", ["floor", "floor-keyed", "metrics", "metrics-full"], keys, "all"),
                ("steady", "closed", ["metrics"], steady, "all")]
    return [("rate", "closed", everyone, rates, "bucketed"),
            ("nft", "nft", everyone, [(1000000, None, 0, 0)], "bucketed"),
            ("listen", "listen", everyone, [(1000000, None, 0, 0)], "bucketed"),
            ("accept", "accept", ["none", "floor", "metrics"], [(20000, None, 0, 0)], "bucketed"),
            ("netns", "closed", ["floor", "metrics-no-netns", "metrics"], [(1000000, None, 0, 0)], "bucketed"),
            ("keys", "closed", ["floor", "floor-keyed", "metrics", "metrics-full", "bpftrace"], keys, "all"),
            ("steady", "closed", ["metrics", "bpftrace"], steady, "all")]


def in_vm(kernel):
    """The anchor plan run by this script inside a VM of that kernel; its runs."""
    sys.path.insert(0, str(ROOT / "tests" / "peers"))
    import kernel_vm
    shared = kernel_vm.CACHE / "vm-out" / f"bench-{kernel}.json"
    shared.parent.mkdir(parents=True, exist_ok=True)
    shared.unlink(missing_ok=True)
    code, output = kernel_vm.run(kernel, f"{sys.executable} {Path(__file__).resolve()} --plan anchor "
                                         f"--out {shared}", timeout=1800)
    if code != 0 or not shared.exists():
        raise SystemExit(f"the benchmark in the {kernel} VM failed ({code}):\n{output[-3000:]}")
    result = json.loads(shared.read_text())
    return [{**run, "kernel": result["kernel"]} for run in result["runs"]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", choices=("full", "smoke", "anchor", "keys"), default="full",
                        help="full: every sweep here, then the anchor in the 6.1 VM (default); "
                             "smoke: one short run per monitor (CI); anchor: the VM's part; "
                             "keys: the tag-set sweeps alone, floor and metrics")
    parser.add_argument("--out", type=Path, help="the results file (default: "
                                                 "bench/results/<date>.json)")
    args = parser.parse_args()
    out = args.out or BENCH / "results" / f"{datetime.now(timezone.utc):%Y-%m-%d}.json"
    build()
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    stats_before = stats.read_text().strip()
    stats.write_text("1")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # a VM's own loopback
    storm = Storm()
    results = []
    try:
        for sweep, kind, names, steps, port_tags in plan(args.plan):
            for packets, sports, pps, idle in steps:
                for name in names:
                    result = run_one(storm, monitors(kind, port_tags)[name], kind, packets, sports,
                                     pps, idle)
                    results.append({"sweep": sweep, **result})
                    print(json.dumps(results[-1]), flush=True)
    finally:
        storm.close()
        stats.write_text(stats_before)
    results = [{**run, "kernel": os.uname().release} for run in results]
    if args.plan == "full":
        results += in_vm("6.1")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"kernel": os.uname().release, "cpus": os.cpu_count(),
                               "runs": results}, indent=1))
    print(out)


if __name__ == "__main__":
    main()
