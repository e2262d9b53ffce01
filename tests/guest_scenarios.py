"""Runs inside a kernel VM (tests/test_kernels.py): every backend that can run
on this kernel, started once each, then the drop scenarios of test_drops.py,
each in its own network namespace, seen by all of them at once.

    python guest_scenarios.py OUTFILE [--no-bcc]

Writes OUTFILE (JSON): per run (core on tp_btf, core on the classic
tracepoint, bcc), the command's `I!` lines, its
start-up time and RSS, the trace events and the metrics lines; per scenario,
its netns inode and ports; and whether tcp_drop is a kernel symbol. The bcc
runs see no kernel BTF (a tmpfs over /sys/kernel/btf, in a mount namespace
of their own), so `--backend auto` has to choose bcc by itself; --no-bcc
leaves them out (a kernel newer than this machine's bcc can compile for).
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import CLI, LISTEN_COUNTERS, Netns, Tracer, eventually

HIDE_BTF = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none /sys/kernel/btf && exec "$@"', "sh"]
# trace: every event; metrics: every port as a tag, so lines name their scenario.
COMMANDS = {"trace": ["trace", "--json", "--no-stack", "--rate-limit", "0"],
            "metrics": ["metrics", "--signal", "STDIN", "--port-tags", "all", "--netns-tags", "inode"]}


class Run:
    """One telegraf-tcpdrop command, started and waited for until attached."""

    def __init__(self, prefix, options, command):
        self.command = command
        started = time.monotonic()
        self.proc = subprocess.Popen([*prefix, CLI, *COMMANDS[command], *options], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stdout, self.stderr = [], []
        self.readers = [threading.Thread(target=Tracer._read, args=(stream, lines, str), daemon=True)
                        for stream, lines in ((self.proc.stdout, self.stdout),
                                              (self.proc.stderr, self.stderr))]
        for reader in self.readers:
            reader.start()
        attached = eventually(lambda: any("I! attached" in l for l in self.stderr) or
                              self.proc.poll() is not None, timeout=600, interval=0.05)
        self.startup = time.monotonic() - started
        if not attached or self.proc.poll() is not None:
            raise SystemExit(f"{command} did not start: {''.join(self.stderr)}")
        with open(f"/proc/{self.proc.pid}/status") as f:
            self.rss_kib = int(next(l for l in f if l.startswith("VmRSS:")).split()[1])

    def stop(self):
        if self.command == "trace":
            self.proc.send_signal(signal.SIGINT)
        self.proc.stdin.close()  # metrics: emit what is pending and exit
        self.proc.wait(timeout=60)
        for reader in self.readers:  # every line it wrote
            reader.join(timeout=60)
            if reader.is_alive():
                raise SystemExit(f"{self.command}: its output did not end within 60 s of its exit")
        return {"exit": self.proc.returncode, "stderr": self.stderr, "startup_s": self.startup,
                "rss_kib": self.rss_kib, "stdout": self.stdout}


def scenarios(traces):
    """Each scenario of test_drops.py in a namespace of its own: {name: details}.
    The last is one more SYN to a closed port, which every hook sees: once each
    of the trace runs ({name: Run}) has printed it, it has printed every event
    before it (the ring buffer delivers in order). The metrics runs need no
    wait: they count in the kernel, at the drop."""
    done = {}

    def scenario(name, kind, *args, nft_port=None, setup=None, counters=LISTEN_COUNTERS):
        ns = Netns()
        if nft_port:
            ns.drop_input_port(nft_port)
        if setup:
            setup(ns)
        done[name] = {"netns": ns.inode, **ns.traffic(kind, *args),
                      **{counter: ns.counter(counter) for counter in counters}}
        return ns

    namespaces = [
        scenario("syn4", "syn", "127.0.0.1", 9, 40001),
        scenario("syn6", "syn", "::1", 9, 40001),
        scenario("ip-options", "syn-with-ip-options", 9, 40004),
        scenario("ipv6-extensions", "syn-with-ipv6-extensions", 9, 40004),
        scenario("netfilter4", "syn", "127.0.0.1", 8080, 40002, 0.3, nft_port=8080),
        scenario("netfilter6", "syn", "::1", 8080, 40002, 0.3, nft_port=8080),
        scenario("old-segment", "old-segment", 7000),
        scenario("listen-overflow", "listen-overflow", 7001),
        scenario("listen-full4", "listen-full", "127.0.0.1", 7010, 20),
        scenario("listen-full6", "listen-full", "::1", 7011, 20),
        scenario("syn-queue-full", "syn-queue-full", 7012, 30, setup=Netns.fill_syn_queue),
        # not TCP: the kernel's own counters say it dropped them
        scenario("udp4", "udp", "127.0.0.1", 9, counters=("UdpNoPorts",)),
        scenario("udp6", "udp", "::1", 9, counters=("Udp6NoPorts",)),
        scenario("icmp", "icmp-bad-checksum", counters=("IcmpInCsumErrors",)),
        # the IP header in the first frag, not the linear data (test_malformed.py)
        scenario("frags4", "frames-in-frags", 4, 23950, 9, 3, counters=()),
        scenario("frags6", "frames-in-frags", 6, 23950, 9, 3, counters=()),
        scenario("last", "syn", "127.0.0.1", 9, 40009),
    ]
    last = done["last"]["netns"]
    for name, run in traces.items():
        if not eventually(lambda: any(json.loads(line)["netns"] == last for line in run.stdout),
                          timeout=60, interval=0.05):
            raise SystemExit(f"{name} did not print the last scenario's drop within 60 s: "
                             f"{''.join(run.stderr)}")
    for ns in namespaces:
        ns.delete()
    return done


def main(outfile, bcc=True):
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/kallsyms") as f:
        tcp_drop = any(line.split()[2] == "tcp_drop" for line in f)
    # name: (command prefix, options)
    backends = {"core": ([], []), "core-tracepoint": ([], ["--hook", "tracepoint"])}
    if bcc and os.path.isdir(f"/lib/modules/{os.uname().release}/build"):
        backends["bcc"] = (HIDE_BTF, [])
    runs = {(backend, command): Run(prefix, options, command)
            for backend, (prefix, options) in backends.items() for command in COMMANDS}
    done = scenarios({f"{backend} {command}": run for (backend, command), run in runs.items()
                      if command == "trace"})
    result = {"kernel": os.uname().release, "tcp_drop_symbol": tcp_drop, "scenarios": done,
              "runs": {f"{backend} {command}": run.stop()
                       for (backend, command), run in runs.items()}}
    if not tcp_drop:  # asking for its kprobe must then fail, and say why
        kprobe = subprocess.run([CLI, "trace", "--hook", "kprobe"], capture_output=True,
                                text=True, timeout=120)
        result["kprobe"] = {"exit": kprobe.returncode, "stderr": kprobe.stderr}
    Path(outfile).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], bcc="--no-bcc" not in sys.argv[2:])
