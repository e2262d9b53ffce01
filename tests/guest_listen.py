"""Runs inside a kernel VM (tests/test_kernels.py): the listen counters'
rises, wherever the kernel raises them, read where they happen.

    python guest_listen.py OUTFILE [--chain NAMESPACES]

1. `audit` while, in one namespace, a listener refuses SYNs (listen-full), a
   handshake's last ACK finds its accept queue full (listen-overflow) and
   ICMP errors abort requests (icmp-aborts-requests); and in another, with
   syncookies always on, cookies' ACKs find it full (cookie-acks).
2. --chain (a kernel with fentry that LISTEN_CHAIN could run on too, booted
   with many CPUs): `metrics --listen-drops tracepoints` while the cookies'
   ACKs are refused again, then while that many namespaces, whose listeners
   all listen first, each refuse a few SYNs.

Writes OUTFILE (JSON): the audit's rows and exit code, each scenario's
namespace and the kernel's counters, and the metrics run's lines.
"""
import json
import signal
import subprocess
import sys
from pathlib import Path

from conftest import CLI, LISTEN_COUNTERS, Netns, eventually
from guest_scenarios import Run

COOKIE_ACKS = 4


def audit(result):
    plain, cookies = Netns(), Netns()
    plain.fill_syn_queue()  # its RSTs dropped: the requests the ICMP errors abort stay
    plain.sh("sysctl", "-qw", "net.ipv4.tcp_syncookies=1")
    cookies.sh("sysctl", "-qw", "net.ipv4.tcp_syncookies=2")
    # ended by SIGINT once the traffic is done: Python starts slowly under emulation
    proc = subprocess.Popen([CLI, "audit", "--for", "600s", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stderr = []
    if not eventually(lambda: stderr.append(proc.stderr.readline()) or "I! auditing" in stderr[-1],
                      timeout=600, interval=0):
        raise SystemExit(f"audit did not start: {''.join(stderr)}")
    plain.traffic("listen-full", "127.0.0.1", 7505, 8)
    plain.traffic("listen-overflow", 7506)
    plain.traffic("icmp-aborts-requests", 7507, 3)
    cookies.traffic("cookie-acks", 7508, COOKIE_ACKS, 2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    result["audit"] = {"exit": proc.returncode, "stderr": stderr + [err],
                       "rows": [json.loads(line) for line in out.splitlines()]}
    result["namespaces"] = {"plain": plain.inode, "cookies": cookies.inode}
    for ns in (plain, cookies):
        ns.delete()


def chain(result, namespaces):
    run = Run([], ["--listen-drops", "tracepoints"], "metrics")  # one interval: every tag set kept
    cookies = Netns()
    cookies.sh("sysctl", "-qw", "net.ipv4.tcp_syncookies=2")
    cookies.traffic("cookie-acks", 7508, COOKIE_ACKS, 5, cpu=0)
    result["chain_cookies"] = {"netns": cookies.inode,
                               **{counter: cookies.counter(counter) for counter in LISTEN_COUNTERS}}
    many = Netns()
    result["many_listeners"] = many.traffic("many-listeners", namespaces, 7800, 5)
    result["chain"] = run.stop()
    result["possible_cpus"] = Path("/sys/devices/system/cpu/possible").read_text().strip()
    for ns in (cookies, many):
        ns.delete()


def main(outfile, namespaces):
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    result = {}
    audit(result)
    if namespaces:
        chain(result, namespaces)
    Path(outfile).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[3]) if sys.argv[2:3] == ["--chain"] else 0)
