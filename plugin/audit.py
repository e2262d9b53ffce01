"""`telegraf-tcpdrop audit`: the monitor's counts beside the kernel's own.

For a while (--for), the probe counts drops per network namespace and drop
reason while the kernel keeps its own TCP drop counters per namespace
(/proc/net/netstat and /proc/net/snmp, read through a process in each
namespace). Then each counter that covers a kind of drop is printed beside
what the monitor saw of that kind; a pair that disagrees is marked.
"""
import ctypes
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass

from . import log, stop
from .event import PORT_TAGS_NONE, DropKey, ProbeConfig

# Each kernel counter (as nstat names it) and the drops it counts: the drop
# reasons whose documentation in the kernel's include/net/dropreason-core.h
# names that counter ("corresponding to LINUX_MIB_..."), and two pairs read
# off the code that raises both together (TCP_MINTTL, TCP_CSUM: tcp_v4_rcv(),
# tcp_v6_rcv()). LISTEN is ours: every rise of ListenDrops the probe saw (the
# SYNs a listener refused, and on 6.11+ the handshakes' last ACKs).
LISTEN = "listen drops"
PAIRS = {
    "TcpExtListenDrops": (LISTEN,),
    "TcpExtListenOverflows": ("TCP_LISTEN_OVERFLOW", "listen-overflow"),
    "TcpExtTCPReqQFullDrop": ("syn-queue-full",),
    "TcpExtTCPBacklogDrop": ("SOCKET_BACKLOG",),
    "TcpExtTCPZeroWindowDrop": ("TCP_ZEROWINDOW",),
    "TcpExtTCPOFOMerge": ("TCP_OFOMERGE",),
    "TcpExtPAWSEstab": ("TCP_RFC7323_PAWS",),
    "TcpExtPAWSOldAck": ("TCP_RFC7323_PAWS_ACK",),
    "TcpExtTSEcrRejected": ("TCP_RFC7323_TSECR",),
    "TcpExtTCPMinTTLDrop": ("TCP_MINTTL",),
    "TcpExtTCPMD5NotFound": ("TCP_MD5NOTFOUND",),
    "TcpExtTCPMD5Unexpected": ("TCP_MD5UNEXPECTED",),
    "TcpExtTCPMD5Failure": ("TCP_MD5FAILURE",),
    "TcpExtTCPAOBad": ("TCP_AOFAILURE",),
    "TcpInCsumErrors": ("TCP_CSUM",),
}
CLONE_NEWNET = 0x40000000
INIT_NET_INODE = 0xEFFFFFF9  # PROC_NET_INIT_INO, include/linux/proc_ns.h: the host's


@dataclass
class Row:
    netns: str
    netns_inode: int
    counter: str
    kernel: int
    monitor: int
    reasons: tuple

    @property
    def difference(self):
        return self.monitor - self.kernel


class Namespaces:
    """The network namespaces of this host, each with a way to read its counters."""

    def __init__(self):
        self.names, self.readers = {}, {}
        for name in _listdir("/run/netns"):
            try:
                inode = os.stat(f"/run/netns/{name}").st_ino
            except OSError:
                continue
            self.names.setdefault(inode, name)
            self.readers.setdefault(inode, lambda path=f"/run/netns/{name}": _read_in(path))
        for pid in filter(str.isdigit, _listdir("/proc")):
            try:
                inode = os.stat(f"/proc/{pid}/ns/net").st_ino
            except OSError:  # gone, or not ours to see
                continue
            self.readers[inode] = lambda pid=pid: _read(f"/proc/{pid}/net")

    def name(self, inode):
        if inode == INIT_NET_INODE:
            return "host"
        return self.names.get(inode, str(inode))

    def counters(self):
        """{inode: {counter: value}} of every namespace that can be read now."""
        found = {}
        for inode, read in self.readers.items():
            try:
                found[inode] = read()
            except OSError:
                continue
        return found


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def _read(net_dir):
    """nstat's names and values from a /proc/.../net directory."""
    counters = {}
    for table in ("netstat", "snmp"):
        with open(f"{net_dir}/{table}") as f:
            lines = f.read().splitlines()
        for names, values in zip(lines[0::2], lines[1::2]):
            prefix, *names = names.split()
            for name, value in zip(names, values.split()[1:]):
                counters[prefix.rstrip(":") + name] = int(value)
    return counters


def _read_in(netns_path):
    """The counters of a namespace no process is in: read by a child that enters it."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: enter, read, write, leave
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(netns_path) as ns:
                if libc.setns(ns.fileno(), CLONE_NEWNET):
                    os._exit(1)
            os.write(write_end, json.dumps(_read("/proc/self/net")).encode())
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if status or not data:
        raise OSError(f"cannot enter {netns_path}")
    return json.loads(data)


class Audit:
    """The probe's counts per namespace and reason, against the kernel's counters."""

    def __init__(self, probe, reasons, namespaces):
        self.probe, self.reasons, self.namespaces = probe, reasons, namespaces
        self._seen = {}  # inode -> {reason name: drops}, since the start

    def monitor(self):
        """{inode: {reason name, or LISTEN: drops}} seen so far."""
        for raw, (drops, _) in self.probe.take_counts().items():
            key = DropKey.from_buffer_copy(raw)
            by_reason = self._seen.setdefault(key.netns, {})
            name = self.reasons.name(key.reason)
            by_reason[name] = by_reason.get(name, 0) + drops
        seen = {inode: dict(by_reason) for inode, by_reason in self._seen.items()}
        for inode, rises in self.probe.listen_drops().items():
            seen.setdefault(inode, {})[LISTEN] = rises
        return seen

    def snapshot(self):
        """(monitor, kernel) read so that no drop falls between the two:
        read again until the monitor's counts did not move meanwhile."""
        for _ in range(10):
            before = self.monitor()
            kernel = self.namespaces.counters()
            if self.monitor() == before:
                break
        return before, kernel

    def rows(self, start, end):
        (monitor0, kernel0), (monitor1, kernel1) = start, end
        rows = []
        for inode in sorted(set(kernel1) | set(monitor1)):
            for counter, reasons in PAIRS.items():
                kernel = kernel1.get(inode, {}).get(counter, 0) - kernel0.get(inode, {}).get(counter, 0)
                monitor = sum(monitor1.get(inode, {}).get(r, 0) - monitor0.get(inode, {}).get(r, 0)
                              for r in reasons)
                if kernel or monitor:
                    rows.append(Row(self.namespaces.name(inode), inode, counter,
                                    kernel, monitor, reasons))
        return rows


def probe_config():
    """Every drop, of every reason, counted per namespace, without ports."""
    config = ProbeConfig(aggregate=1, port_tags=PORT_TAGS_NONE, key_netns=1, other_reasons=1,
                         own_reasons=0xF)
    config.reason_mask[:] = [2**64 - 1] * 4
    return config


def format_rows(rows, out):
    if not rows:
        print("no TCP drop counted by the kernel or the monitor", file=out)
        return
    width = max(len("NETNS"), *(len(row.netns) for row in rows))
    print(f"{'NETNS':<{width}}  {'COUNTER':<24} {'KERNEL':>8} {'MONITOR':>8}  DROPS OF", file=out)
    for row in rows:
        mark = "" if not row.difference else f"  ! {row.difference:+d}"
        print(f"{row.netns:<{width}}  {row.counter:<24} {row.kernel:>8} {row.monitor:>8}  "
              f"{', '.join(row.reasons)}{mark}", file=out)


def run(probe, reasons, seconds, as_json=False, out=sys.stdout):
    """Counts for `seconds` (or until SIGINT/SIGTERM), then prints the pairs;
    exit code 0 if every pair agrees, 3 if one does not."""
    audit = Audit(probe, reasons, Namespaces())
    start = audit.snapshot()
    log.info(f"auditing for {seconds:g} s (Ctrl-C ends it sooner)")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    if not stop.requested():
        done.wait(seconds)
    audit.namespaces = Namespaces()  # namespaces made meanwhile too
    rows = audit.rows(start, audit.snapshot())
    if as_json:
        for row in rows:
            print(json.dumps({**row.__dict__, "reasons": list(row.reasons),
                              "difference": row.difference}), file=out)
    else:
        format_rows(rows, out)
    return 3 if any(row.difference for row in rows) else 0
