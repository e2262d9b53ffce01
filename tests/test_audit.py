"""`telegraf-tcpdrop audit`: real drops of four kinds and more, the kernel's
counters beside the monitor's, pair by pair."""
import io
import json
import subprocess

import pytest

from conftest import CLI, eventually, require_root
from telegraf_tcpdrop.audit import LISTEN, Audit, format_rows


def audit_while(netns, *traffic, seconds=5):
    """audit --json while each traffic kind runs in netns: its rows for netns."""
    require_root()
    proc = subprocess.Popen([CLI, "audit", "--for", f"{seconds}s", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stderr = []
    assert eventually(lambda: stderr.append(proc.stderr.readline()) or "I! auditing" in stderr[-1],
                      timeout=10), stderr
    for kind in traffic:
        netns.traffic(*kind)
    out, err = proc.communicate(timeout=seconds + 30)
    rows = [json.loads(line) for line in out.splitlines()]
    assert "Traceback" not in err
    return proc.returncode, {row["counter"]: row for row in rows if row["netns_inode"] == netns.inode}


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


class Probe:
    """The probe's reading side, as audit reads it."""

    def __init__(self, listen):
        self.listen = listen

    def take_counts(self):
        return {}

    def listen_drops(self):
        return dict(self.listen)


def test_a_pair_that_disagrees_is_marked_with_the_difference():
    class Names:
        def name(self, inode):
            return "web"

    probe = Probe({7: 2})
    audit = Audit(probe, None, namespaces=None, names=Names())
    start = ({}, {7: {"TcpExtListenDrops": 10}})
    rows = audit.rows(start, (audit.monitor(), {7: {"TcpExtListenDrops": 13}}))
    assert [(r.counter, r.kernel, r.monitor, r.difference, r.reasons) for r in rows] == [
        ("TcpExtListenDrops", 3, 2, -1, (LISTEN,))]
    out = io.StringIO()
    format_rows(rows, out)
    assert out.getvalue().splitlines()[1].split() == [
        "web", "TcpExtListenDrops", "3", "2", "listen", "drops", "!", "-1"]
