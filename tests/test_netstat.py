"""tcpdrop_netstat: each namespace's own counters, read through its processes,
as rises that a missed reading cannot inflate."""
import os
import subprocess
import sys

import pytest

from conftest import TESTS, eventually, require_root
from telegraf_tcpdrop.netns import INIT_NET_INODE, NetnsNames
from telegraf_tcpdrop.netstat import NetstatPoints

pytestmark = pytest.mark.kernel
COUNTER = "TcpInCsumErrors"


def namespace_of(pid):
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def in_namespace_of(pid, *cmd):
    return subprocess.run(["nsenter", "-t", str(pid), "-n", *map(str, cmd)], check=True,
                          capture_output=True, text=True).stdout


def checksum_errors(pid, n):
    """n bad-checksum SYNs in pid's namespace; the rise of its counter, as the kernel counts it."""
    def counter():
        out = in_namespace_of(pid, "nstat", "-asz", COUNTER)
        return int(out.split()[-2]) if COUNTER in out else 0
    before = counter()
    for sport in range(40000, 40000 + n):
        in_namespace_of(pid, sys.executable, TESTS / "traffic.py", "bad-checksum", 7510, sport)
    return counter() - before


def test_a_missed_reading_is_no_rise_of_the_whole_total():
    """A namespace no bind mount keeps, listed through two processes, the
    newest already exited (the short-lived ones of a busy container): read
    through the oldest. A reading missed altogether (only the exited one
    listed) is no point, and the next reading's rise covers both intervals,
    never the total since the namespace was made."""
    require_root()
    oldest = subprocess.Popen(["unshare", "-n", "sleep", "300"])
    try:
        assert eventually(lambda: namespace_of(oldest.pid) not in (None, INIT_NET_INODE))
        inode = namespace_of(oldest.pid)
        in_namespace_of(oldest.pid, "ip", "link", "set", "lo", "up")
        exited = subprocess.Popen(["nsenter", "-t", str(oldest.pid), "-n", "true"])
        exited.wait()
        assert checksum_errors(oldest.pid, 3) == 3  # before the monitor: a total, not a rise
        listed = [(oldest.pid, inode), (exited.pid, inode)]
        netstat = NetstatPoints(NetnsNames(tasks=lambda: listed), netns_tag=str)

        def rises():
            return [p.fields[COUNTER] for p in netstat.points(0) if p.tags["netns"] == str(inode)]
        assert rises() == [0]
        sent = checksum_errors(oldest.pid, 2)
        assert rises() == [sent] == [2]
        listed = [(exited.pid, inode)]  # no process to read it through
        missed = checksum_errors(oldest.pid, 4)
        assert rises() == []
        listed = [(oldest.pid, inode)]
        sent = missed + checksum_errors(oldest.pid, 1)
        assert rises() == [sent] == [5]
    finally:
        oldest.kill()
        oldest.wait()
