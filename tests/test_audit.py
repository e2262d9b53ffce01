"""`telegraf-tcpdrop audit`: real drops of four kinds and more, the kernel's
counters beside the monitor's, pair by pair."""
import io
import json
import os
import re
import subprocess

import pytest

from conftest import CLI, eventually, require_root
from telegraf_tcpdrop.audit import Audit, format_rows
from telegraf_tcpdrop.netstat import LISTEN_RISES
from telegraf_tcpdrop.probe import ListenRises


def audit_while(netns, *traffic, seconds=5):
    """audit --json while each traffic kind runs in netns: its rows for netns."""
    code, rows = audit_during([(netns, kind) for kind in traffic], seconds)
    return code, rows[netns.inode]


def audit_during(steps, seconds=5):
    """audit --json while each (netns, traffic kind) runs: (its exit code,
    {netns inode: {counter: row}})."""
    require_root()
    proc = subprocess.Popen([CLI, "audit", "--for", f"{seconds}s", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stderr = []
    assert eventually(lambda: stderr.append(proc.stderr.readline()) or "I! auditing" in stderr[-1],
                      timeout=10), stderr
    for netns, kind in steps:
        netns.traffic(*kind)
    out, err = proc.communicate(timeout=seconds + 30)
    rows = [json.loads(line) for line in out.splitlines()]
    assert "Traceback" not in err
    found = {netns.inode: {} for netns, _ in steps}
    for row in rows:
        if row["netns_inode"] in found:
            found[row["netns_inode"]][row["counter"]] = row
    return proc.returncode, found


@pytest.mark.kernel
def test_four_kinds_of_drops_agree_with_the_kernels_counters(netns):
    code, rows = audit_while(netns, ("listen-full", "127.0.0.1", 7500, 12),
                             ("low-ttl", 7501), ("md5-not-found", 7502),
                             ("bad-checksum", 7503, 40000))
    assert set(rows) == {"TcpExtListenDrops", "TcpExtListenOverflows", "TcpExtTCPMinTTLDrop",
                         "TcpExtTCPMD5NotFound", "TcpInCsumErrors"}
    for row in rows.values():
        assert row["netns"] == netns.name
        assert row["kernel"] == row["monitor"] > 0 and row["difference"] == 0, row
    assert rows["TcpExtListenDrops"]["kernel"] == netns.counter("TcpExtListenDrops") >= 10
    assert rows["TcpExtTCPMinTTLDrop"]["kernel"] == 2  # the SYN and its retransmit
    assert code == 0


@pytest.mark.kernel
def test_a_full_syn_queue_without_cookies(netns):
    netns.fill_syn_queue()
    code, rows = audit_while(netns, ("syn-queue-full", 7504, 30), seconds=3)
    assert rows["TcpExtTCPReqQFullDrop"]["kernel"] == rows["TcpExtTCPReqQFullDrop"]["monitor"] >= 20
    assert rows["TcpExtListenDrops"]["kernel"] == rows["TcpExtListenDrops"]["monitor"]
    assert code == 0


@pytest.mark.kernel
def test_the_listen_counters_agree_whatever_raised_them(netns):
    """ListenDrops and ListenOverflows rise at refused SYNs, and also where
    no SYN is refused: the handshake's last ACK on a full accept queue, a
    cookie's ACK there (syncookies always on, in a namespace of its own), an
    ICMP error that aborts a request. Each rise is read where it happens."""
    from conftest import Netns
    cookies = Netns()
    try:
        cookies.sh("sysctl", "-qw", "net.ipv4.tcp_syncookies=2")
        netns.fill_syn_queue()  # its RSTs dropped: the requests the ICMP errors abort stay
        netns.sh("sysctl", "-qw", "net.ipv4.tcp_syncookies=1")
        code, rows = audit_during([(netns, ("listen-full", "127.0.0.1", 7505, 8)),
                                   (netns, ("listen-overflow", 7506)),
                                   (netns, ("icmp-aborts-requests", 7507, 3)),
                                   (cookies, ("cookie-acks", 7508, 4, 2))], seconds=6)
    finally:
        cookies.delete()
    for inode, counters in rows.items():
        for counter in ("TcpExtListenDrops", "TcpExtListenOverflows"):
            row = counters[counter]
            assert row["kernel"] == row["monitor"] > 0, row
    assert rows[cookies.inode]["TcpExtListenOverflows"]["kernel"] == 4
    assert code == 0


class Probe:
    """The probe's reading side, as audit reads it."""

    def __init__(self, listen):
        self.listen = listen

    def take_counts(self):
        return {}

    def listen_rises(self):
        return dict(self.listen)


def test_a_pair_that_disagrees_is_marked_with_the_difference():
    class Names:
        def name(self, inode):
            return "web"

    probe = Probe({7: ListenRises(2, 0, 0)})
    audit = Audit(probe, None, namespaces=None, names=Names())
    start = ({}, {7: {"TcpExtListenDrops": 10}})
    rows = audit.rows(start, (audit.monitor(), {7: {"TcpExtListenDrops": 13}}))
    assert [(r.counter, r.kernel, r.monitor, r.difference, r.reasons) for r in rows] == [
        ("TcpExtListenDrops", 3, 2, -1, (LISTEN_RISES["TcpExtListenDrops"],))]
    out = io.StringIO()
    format_rows(rows, out)
    assert out.getvalue().splitlines()[1].split() == [
        "web", "TcpExtListenDrops", "3", "2", "rises", "read", "(ListenDrops)", "!", "-1"]


@pytest.mark.kernel
def test_a_namespace_gone_before_the_end_is_left_out_not_a_mismatch(netns):
    """Drops before the audit, then the namespace goes (its last process
    exits): its end has no reading, which is not a reading of 0."""
    netns.traffic("bad-checksum", 7509, 40000)
    assert netns.counter("TcpInCsumErrors") > 0
    last = subprocess.Popen(["ip", "netns", "exec", netns.name, "sleep", "60"])
    assert eventually(lambda: os.stat(f"/proc/{last.pid}/ns/net").st_ino == netns.inode)
    netns.delete()  # the bind mount: the sleep alone keeps the namespace now
    proc = subprocess.Popen([CLI, "audit", "--for", "3s"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stderr = []
    assert eventually(lambda: stderr.append(proc.stderr.readline()) or "I! auditing" in stderr[-1],
                      timeout=10), stderr
    last.kill()
    last.wait()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + err
    assert re.search(r"^W! namespace .*: its counters could not be read at the start or the end",
                     err, re.M), err
