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


class Namespaces:
    """The network namespaces of this host, each with a way to read its counters."""

    def __init__(self, tasks):
        """tasks(): [(pid, network namespace inode)], as netns.proc_tasks."""
        self.readers = {}
        for name in listdir("/run/netns"):
            try:
                inode = os.stat(f"/run/netns/{name}").st_ino
            except OSError:
                continue
            self.readers.setdefault(inode, lambda path=f"/run/netns/{name}": _read_in(path))
        for pid, inode in tasks():
            self.readers[inode] = lambda pid=pid: _read(f"/proc/{pid}/net")

    def counters(self):
        """{inode: {counter: value}} of every namespace that can be read now."""
        found = {}
        for inode, read in self.readers.items():
            try:
                found[inode] = read()
            except OSError:
                continue
        return found


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
    its DROP_COUNTERS rose. A namespace there at start counts from its reading
    then; one that appears later, from zero (it is new)."""

    def __init__(self, names, host=None, namespaces=Namespaces):
        """names: a netns.NetnsNames, whose tasks find the namespaces; host:
        the host tag, if any. Made as soon as the probe attaches, so that
        both count from (nearly) the same moment."""
        self.names, self.namespaces = names, namespaces
        self.tags = {"host": host} if host else {}
        self._last = self._read()

    def _read(self):
        return {inode: {name: values.get(name, 0) for name in DROP_COUNTERS}
                for inode, values in self.namespaces(self.names.tasks).counters().items()}

    def points(self, now):
        previous, self._last = self._last, self._read()
        return [Point("tcpdrop_netstat", {**self.tags, "netns": self.names.name(inode)},
                      {name: value - previous.get(inode, {}).get(name, 0)
                       for name, value in values.items()}, now)
                for inode, values in self._last.items()]
