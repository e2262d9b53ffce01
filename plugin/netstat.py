"""The kernel's own TCP drop counters, per network namespace.

Each namespace has its own /proc/net/netstat and /proc/net/snmp: read through
a process in it (/proc/PID/net), or, for a namespace no process is in (kept
by a bind mount in /run/netns), by a child process that enters it. `audit`
puts them beside the monitor's counts; `metrics --netns-counters` reports
them each interval (NetstatPoints).
"""
import ctypes
import os
import threading

from .emit import Point
from .libc import LIBC
from .netns import listdir

# Each kernel counter (as nstat names it) and the drops it counts: the drop
# reasons whose documentation in the kernel's include/net/dropreason-core.h
# names that counter ("corresponding to LINUX_MIB_..."), and two pairs read
# off the code that raises both together (TCP_MINTTL, TCP_CSUM: tcp_v4_rcv(),
# tcp_v6_rcv()). The listen counters are paired with their rises the probe
# read (LISTEN_RISES, ours): each at a refused SYN, an ACK that found the
# accept queue full (the handshake's last, or a cookie's), or an ICMP error
# that aborted a request (tcpdrop.c, listen-queue drops).
LISTEN_RISES = {counter: f"rises read ({counter.removeprefix('TcpExt')})"
                for counter in ("TcpExtListenDrops", "TcpExtListenOverflows", "TcpExtTCPReqQFullDrop")}
DROP_COUNTERS = {
    **{counter: (rises,) for counter, rises in LISTEN_RISES.items()},
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


# Processes tried, in turn, before a namespace counts as not read this time.
READ_TRIES = 4


class Namespaces:
    """The network namespaces of this host, each with ways to read its counters."""

    def __init__(self, tasks):
        """tasks(): [(pid, network namespace inode)], as netns.proc_tasks."""
        self.readers = {}  # inode -> its ways to read, best first
        # Through its processes, the lowest pid first: the namespace's oldest,
        # most often (its init, a container's first process), which outlives
        # the short-lived ones; then the next, should that one have exited.
        for pid, inode in sorted(tasks()):
            self.readers.setdefault(inode, []).append(lambda pid=pid: _read(f"/proc/{pid}/net"))
        # Through its bind mount (`ip netns add`), by a thread that enters it:
        # the one way for a namespace no process is in.
        for name in listdir("/run/netns"):
            try:
                inode = os.stat(f"/run/netns/{name}").st_ino
            except OSError:
                continue
            self.readers.setdefault(inode, []).append(lambda path=f"/run/netns/{name}": _read_in(path))

    def counters(self):
        """{inode: {counter: value}} of every namespace that could be read now
        (one whose processes all exited meanwhile may not be)."""
        found = {}
        for inode, ways in self.readers.items():
            for read in ways[:READ_TRIES]:
                try:
                    found[inode] = read()
                    break
                except OSError:
                    continue
        return found


def _read(net_dir):
    """nstat's names and values from a /proc/.../net directory."""
    counters = {}
    for table in ("netstat", "snmp"):
        with open(f"{net_dir}/{table}", errors="surrogateescape") as f:
            lines = f.read().splitlines()
        for names, values in zip(lines[0::2], lines[1::2]):
            prefix, *names = names.split()
            for name, value in zip(names, values.split()[1:]):
                counters[prefix.rstrip(":") + name] = int(value)
    return counters


def _read_in(netns_path):
    """The counters of a namespace no process is in, read by a thread that
    enters it: setns() moves only the calling thread, and /proc/thread-self
    shows that thread's namespace. (A forked child could hang on a lock
    another thread held at the fork.) OSError if it cannot enter
    (CAP_SYS_ADMIN)."""
    found = {}

    def enter_and_read():
        try:
            with open(netns_path) as ns:
                if LIBC.setns(ns.fileno(), CLONE_NEWNET):
                    raise OSError(ctypes.get_errno(), f"cannot enter {netns_path}")
            found["counters"] = _read("/proc/thread-self/net")
        except OSError as e:
            found["error"] = e
    reader = threading.Thread(target=enter_and_read)
    reader.start()
    reader.join()
    if "error" in found:
        raise found["error"]
    return found["counters"]


class NetstatPoints:
    """Each interval, a point `tcpdrop_netstat` per namespace: how much each of
    its DROP_COUNTERS rose since the namespace's last reading. A namespace's
    first reading is its baseline: its rises are reported from its second
    on (a namespace made before the monitor started, or one whose reading
    was missed, would otherwise show its total since it was made as one
    interval's rise). A reading missed (its processes gone meanwhile) keeps
    the last one: the next reports the rise over both intervals. A counter
    lower than before is a new namespace on a reused inode: a new baseline."""

    def __init__(self, names, host=None, netns_tag=None, namespaces=Namespaces):
        """names: a netns.NetnsNames, whose tasks find the namespaces; host:
        the host tag, if any; netns_tag(inode): the `netns` tag, as on
        `tcpdrop` (--netns-tags); None: no such tag, every namespace's rises
        summed in one point. Made as soon as the probe attaches, so that
        both count from (nearly) the same moment."""
        self.names, self.namespaces, self.netns_tag = names, namespaces, netns_tag
        self.tags = {"host": host} if host else {}
        self._last = {}
        self.points(0)

    def points(self, now):
        readings = self.namespaces(self.names.tasks)
        last, rises = self._last, {}
        self._last = {}
        for inode, values in readings.counters().items():
            reading = {name: values.get(name, 0) for name in DROP_COUNTERS}
            before = last.get(inode)
            if before and all(reading[name] >= before[name] for name in reading):
                rises[inode] = {name: reading[name] - before[name] for name in reading}
            self._last[inode] = reading
        for inode in readings.readers.keys() - self._last.keys():  # there, but not read
            if inode in last:
                self._last[inode] = last[inode]
        if self.netns_tag is None:
            total = {name: sum(rise[name] for rise in rises.values()) for name in DROP_COUNTERS}
            return [Point("tcpdrop_netstat", self.tags, total, now)] if rises else []
        return [Point("tcpdrop_netstat", {**self.tags, "netns": self.netns_tag(inode)}, rise, now)
                for inode, rise in rises.items()]
