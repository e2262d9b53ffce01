"""`metrics` behaves as Telegraf's inputs.execd expects of a long-running input
(plugins/inputs/execd and internal/process in Telegraf: stdin closed on stop,
SIGTERM 5 s later, SIGKILL 5 s after that)."""
import signal
import subprocess
import time

import pytest

from conftest import CLI, as_nobody_with, eventually, require_root

pytestmark = pytest.mark.kernel


def test_stdin_closed_exits_within_a_second_with_the_pending_counts(netns, metrics):
    m = metrics("--interval", "1h", "--port", "7400")
    netns.traffic("raw-syns", 7400, 7, 40000)  # loopback: dropped and counted before it returns
    closed = time.monotonic()
    m.proc.stdin.close()
    assert m.proc.wait(timeout=1) == 0
    assert time.monotonic() - closed < 1.0
    assert eventually(lambda: m.total(dport="7400", flags="SYN") == 7, timeout=1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_flushes_the_last_interval_and_exits_0(netns, metrics, sig):
    m = metrics("--interval", "1h", "--port", "7401")
    netns.traffic("raw-syns", 7401, 5, 40000)
    assert m.points == []
    assert m.stop(sig) == 0
    assert eventually(lambda: m.total(dport="7401", flags="SYN") == 5, timeout=1)
    assert [meas for meas, *_ in m.points].count("tcpdrop_agent") == 1


def test_signal_stdin_emits_once_per_line(netns, metrics):
    m = metrics("--signal", "STDIN", "--interval", "100ms", "--port", "7402")
    time.sleep(0.5)  # five intervals' time: an absence has no event to wait for
    assert m.points == []  # the interval does not apply
    netns.traffic("raw-syns", 7402, 3, 40000)
    emits = lambda: len([p for p in m.points if p[0] == "tcpdrop_agent"])  # noqa: E731
    for line in (1, 2):
        m.proc.stdin.write("\n")
        m.proc.stdin.flush()
        assert eventually(lambda: emits() >= line, timeout=2)
        time.sleep(0.5)  # time for a second emit, were the line taken twice
        assert emits() == line
    assert m.total(dport="7402") == 3


def test_interval_none_emits_on_its_own(metrics):
    m = metrics("--interval", "300ms")
    assert eventually(lambda: len([p for p in m.points if p[0] == "tcpdrop_agent"]) >= 3, timeout=3)
    times = [t for meas, _, f, t in m.points if meas == "tcpdrop_agent"]
    assert all(0.2e9 < b - a < 0.5e9 for a, b in zip(times, times[1:]))


def test_closed_stdout_exits_quietly():
    require_root()
    proc = subprocess.Popen([CLI, "metrics", "--signal", "STDIN"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "I! attached" in proc.stderr.readline()
    proc.stdout.close()
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=5) == 0
    assert proc.stderr.read() == ""


def test_startup_failure_is_one_error_line():
    require_root()
    result = subprocess.run([*as_nobody_with(), CLI, "metrics"], capture_output=True, text=True,
                            timeout=10)
    assert result.returncode == 1
    assert result.stderr.startswith("E! not allowed to load BPF programs") and \
        result.stderr.count("\n") == 1


def test_runs_as_an_unprivileged_user_with_the_three_capabilities(netns):
    """What the launcher (packaging/metrics-launcher.c) raises is enough."""
    require_root()
    proc = subprocess.Popen([*as_nobody_with("bpf", "perfmon", "syslog"), CLI, "metrics",
                             "--signal", "STDIN", "--port", "7403"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "I! attached to tp_btf/kfree_skb" in proc.stderr.readline()
    netns.traffic("raw-syns", 7403, 2, 40000)
    out, err = proc.communicate("\n", timeout=5)
    assert proc.returncode == 0, err
    assert f"frame=tcp_v4_rcv,netns={netns.name},reason=NO_SOCKET" in out and "drops=2i" in out


def test_an_unreadable_kallsyms_is_one_line_that_names_the_fix(tmp_path):
    """What systemd's ProtectKernelTunables= does to /proc/kallsyms (found
    when telegraf-tcpdrop.service first ran under systemd): a file no one may
    read, mounted over it."""
    require_root()
    closed = tmp_path / "closed"
    closed.write_text("")
    closed.chmod(0)
    tmp_path.chmod(0o755)
    over = f'mount --bind {closed} /proc/kallsyms && exec "$@"'
    result = subprocess.run(["unshare", "-m", "sh", "-c", over, "sh",
                             *as_nobody_with("bpf", "perfmon", "syslog"), CLI, "metrics"],
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("E! cannot read /proc/kallsyms (Permission denied)") and \
        result.stderr.count("\n") == 1, result.stderr
    assert "ProtectKernelTunables=" in result.stderr


def test_without_cap_syslog_the_error_names_it():
    require_root()
    result = subprocess.run([*as_nobody_with("bpf", "perfmon"), CLI, "metrics"], capture_output=True,
                            text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("E! /proc/kallsyms hides kernel addresses")
    assert "CAP_SYSLOG" in result.stderr
