"""`metrics --pin-dir`: runs that end (SIGTERM, SIGKILL) and the runs that
start after them, while nftables drops a steady stream of SYNs. The probe
pinned in bpffs keeps counting between runs: the sum of every run's drops
equals nftables' own counter of what it dropped."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import CLI, TESTS, Metrics, as_nobody_with, eventually, require_root
from telegraf_tcpdrop.probe import HOOKS

PORT = 7640
DROPS = dict(dport=str(PORT), reason="NETFILTER_DROP", flags="SYN")


@pytest.fixture
def bpffs(tmp_path):
    """A bpffs of the test's own (the host's /sys/fs/bpf left as it is)."""
    require_root()
    mount = tmp_path / "bpf"
    mount.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(mount)], check=True)
    yield mount
    # The pins removed, detached whoever still holds the mount (not the kernel's own *.debug)
    for pinned in sorted((path for path in mount.rglob("*") if "." not in path.name), reverse=True):
        pinned.rmdir() if pinned.is_dir() else pinned.unlink()
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def counted_drop_stream(netns, rate, seconds):
    """A rule that drops SYNs to PORT, counting them, and a stream of them."""
    netns.sh("nft", "-f", "-", input=f"""
        table inet pins {{
            chain input {{ type filter hook input priority 0; tcp dport {PORT} counter drop; }}
        }}""")
    return subprocess.Popen(["ip", "netns", "exec", netns.name, sys.executable, str(TESTS / "traffic.py"),
                             "steady-syns", str(PORT), str(rate), str(seconds)], stdout=subprocess.PIPE, text=True)


def nft_dropped(netns):
    out = netns.sh("nft", "list", "chain", "inet", "pins", "input")
    return int(out.split(" packets ")[1].split()[0])


def start(pin_dir, *extra):
    return Metrics("--interval", "1s", "--port", str(PORT), "--netns-tags", "inode", "--pin-dir",
                   str(pin_dir), *extra)


def test_restarts_and_crashes_lose_no_drop_and_count_none_twice(netns, bpffs):
    """(a) SIGTERM and a start at once (a reload), (b) SIGKILL and a start
    10 s later (a crash under Telegraf's restart_delay), (c) two restarts
    within one interval."""
    pin_dir = bpffs / "tcpdrop"
    runs = [start(pin_dir)]
    stream = counted_drop_stream(netns, 500, 26)
    time.sleep(3)
    assert runs[-1].stop() == 0
    runs.append(start(pin_dir))  # (a)
    time.sleep(3.5)
    assert runs[-1].stop(signal.SIGKILL) == -signal.SIGKILL
    time.sleep(10)
    runs.append(start(pin_dir))  # (b)
    time.sleep(3)
    for _ in range(2):  # (c)
        assert runs[-1].stop() == 0
        runs.append(start(pin_dir))
    stream.wait(timeout=60)
    time.sleep(0.5)  # the last SYN through the rule
    sent, dropped = int(stream.stdout.read().split("=")[1]), nft_dropped(netns)
    assert eventually(lambda: sum(run.total(**DROPS) for run in runs) >= dropped, timeout=5), \
        ([run.total(**DROPS) for run in runs], dropped, [run.stderr for run in runs])
    assert runs[-1].stop() == 0
    assert [run.total(**DROPS) for run in runs if run.total(**DROPS) == 0] == []
    assert sum(run.total(**DROPS) for run in runs) == dropped == sent > 10000
    for run in runs[1:]:
        assert any(f"taking over the probe pinned at {pin_dir}" in line for line in run.stderr), run.stderr
    # Each run that took over wrote at once what the probe counted since the
    # last interval written: after the crash, that run's last interval and 10 s.
    carried = [run.total("carried_drops", "tcpdrop_agent") for run in runs]
    assert carried[0] == 0 and all(carried[1:]) and carried[2] > 10 * 500 * 0.9, carried


def test_a_second_run_beside_the_first_neither_steals_nor_counts(netns, bpffs):
    pin_dir = bpffs / "tcpdrop"
    first = start(pin_dir)
    second = subprocess.run([CLI, "metrics", "--pin-dir", str(pin_dir)], capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 1 and second.stdout == ""
    assert second.stderr == (f"E! another `metrics` (pid {first.proc.pid}) counts with the probe pinned "
                             f"at {pin_dir}: one run per pin directory; give this one --pin-dir of its own\n")
    netns.traffic("raw-syns", PORT, 50)
    assert first.wait_total(50, dport=str(PORT), flags="SYN") == 50
    assert first.stop() == 0


def test_a_run_with_other_settings_replaces_the_pinned_probe(netns, bpffs):
    """Another --port: the pinned probe counted only what its settings
    asked; its drops since its last interval come from the new run, which
    then counts alone, and its pins are gone."""
    pin_dir = bpffs / "tcpdrop"
    first = start(pin_dir)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    netns.traffic("raw-syns", PORT, 40)  # counted by the pinned probe, no run reading it
    second = Metrics("--interval", "1s", "--port", str(PORT), "--exclude-reason", "NONE",
                     "--pin-dir", str(pin_dir))
    assert not any("taking over" in line for line in second.stderr)
    assert second.wait_total(40, dport=str(PORT), flags="SYN") == 40
    netns.traffic("raw-syns", PORT, 7)
    assert second.wait_total(47, dport=str(PORT), flags="SYN") == 47
    assert second.total("carried_drops", "tcpdrop_agent") == 2 * 40  # and the RSTs back
    assert len(os.listdir(pin_dir)) == 1
    assert second.stop() == 0
    assert second.total(dport=str(PORT), flags="SYN") == 47


def test_a_pin_dir_of_another_user_is_refused_and_the_run_counts_unpinned(netns, bpffs):
    pin_dir = bpffs / "taken"
    pin_dir.mkdir(mode=0o700)
    os.chown(pin_dir, 65534, 65534)
    run = start(pin_dir)
    assert run.stderr[0] == (f"W! counting stops with this run: {pin_dir} must be a directory of uid 0 "
                             "that only it may use (it is uid 65534, mode drwx------): remove it, or "
                             "give --pin-dir of its own\n")
    netns.traffic("raw-syns", PORT, 5)
    assert run.wait_total(5, dport=str(PORT), flags="SYN") == 5
    assert run.stop() == 0 and os.listdir(pin_dir) == []


def test_a_run_killed_after_writing_an_interval_and_before_clearing_it(netns, bpffs):
    """The run's real code, but it dies where it would clear what it wrote
    (the pinned state marked already): the next run clears that interval,
    and writes it no second time."""
    pin_dir = bpffs / "tcpdrop"
    dies_clearing = ("import os, sys; from telegraf_tcpdrop import cli, probe; "
                     "probe.Generations.clear = lambda *_: os._exit(9); sys.exit(cli.main(sys.argv[2:]))")
    first = Metrics("--interval", "3s", "--port", str(PORT), "--pin-dir", str(pin_dir),
                    prefix=(sys.executable, "-c", dies_clearing))  # its first interval: all 30
    netns.traffic("raw-syns", PORT, 30)
    assert first.proc.wait(timeout=10) == 9
    assert first.stop() == 9 and first.total(**DROPS | {"reason": "NO_SOCKET"}) == 30
    netns.traffic("raw-syns", PORT, 12)
    second = start(pin_dir)
    # carried: the RSTs back to the closed port's SYNs too
    assert second.wait_total(24, field="carried_drops", measurement="tcpdrop_agent") == 2 * 12
    assert second.stop() == 0 and second.total(**DROPS | {"reason": "NO_SOCKET"}) == 12


@pytest.mark.parametrize("hook", ["tp_btf", "tracepoint"])
def test_a_killed_run_is_taken_over_whatever_the_hook(netns, bpffs, hook):
    """The classic tracepoint attaches through a perf event, whose link
    pins from 5.15."""
    pin_dir = bpffs / "tcpdrop"
    first = start(pin_dir, "--hook", hook)
    netns.traffic("raw-syns", PORT, 30)
    assert first.wait_total(30, **DROPS | {"reason": "NO_SOCKET"}) == 30
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    netns.traffic("raw-syns", PORT, 20)
    second = start(pin_dir, "--hook", hook)
    assert any(f"I! attached to {HOOKS[hook][1]} taking over" in line for line in second.stderr)
    assert second.wait_total(20, **DROPS | {"reason": "NO_SOCKET"}) == 20
    assert second.total("carried_drops", "tcpdrop_agent") == 2 * 20  # and the RSTs back
    assert second.stop() == 0 and second.total(**DROPS | {"reason": "NO_SOCKET"}) == 20


def test_check_says_whether_runs_can_keep_the_probe():
    require_root()
    bpf_fs = "/sys/fs/bpf"
    mounted = subprocess.run(["mountpoint", "-q", bpf_fs]).returncode == 0
    if not mounted:
        out = subprocess.run([CLI, "check"], capture_output=True, text=True).stdout
        assert f"\nno    pinning: bpffs is not mounted at {bpf_fs} (mount -t bpf bpf {bpf_fs}): counting " \
               "stops with each run of metrics\n" in out
        subprocess.run(["mount", "-t", "bpf", "bpf", bpf_fs], check=True)
    mode = os.stat(bpf_fs).st_mode & 0o7777
    try:
        before = os.listdir(bpf_fs)
        out = subprocess.run([CLI, "check"], capture_output=True, text=True).stdout
        assert f"\nok    pinning: bpffs at {bpf_fs}, and this kernel pins tp_btf/kfree_skb's links: " \
               "metrics --pin-dir keeps counting between runs\n" in out
        assert os.listdir(bpf_fs) == before
        os.chmod(bpf_fs, 0o700)  # as systemd mounts it: root's alone
        out = subprocess.run([*as_nobody_with("bpf", "perfmon", "syslog"), CLI, "check"], capture_output=True,
                             text=True)
        assert out.returncode == 0 and f"\nno    pinning: this user cannot make a directory in {bpf_fs} " \
            "(Permission denied): counting stops with each run of metrics\n" in out.stdout, out
    finally:
        os.chmod(bpf_fs, mode)
        if not mounted:
            subprocess.run(["umount", bpf_fs], check=True)
