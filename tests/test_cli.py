"""The command as a user meets it: usage, start-up errors, check, reasons, the human format."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import telegraf_tcpdrop
from telegraf_tcpdrop.startup import mount_tracefs

from conftest import CLI, as_nobody_with, eventually, require_root

pytestmark = pytest.mark.kernel


def run(*args, prefix=(), **kwargs):
    return subprocess.run([*prefix, CLI, *args], capture_output=True, text=True, timeout=30, **kwargs)


def in_mount_namespace(setup):
    """Runs the command in a private mount namespace after `setup` (shell)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{setup} && exec "$@"', "sh"]


def assert_one_error_line(result, code, *words):
    assert result.returncode == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_the_readme_has_every_trace_option():
    """The README's table of trace options, against the parser's."""
    from telegraf_tcpdrop.cli import build_parsers

    parser, _ = build_parsers()
    trace = parser._subparsers._group_actions[0].choices["trace"]
    options = {o for action in trace._actions for o in action.option_strings if o != "-h"}
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("## Trace mode", 1)[1].split("`metrics` takes", 1)[0]
    documented = set(re.findall(r"^\| `(-[^`]*)`(?:, `(-[^`]*)`)?", table, re.M))
    documented = {o.split()[0] for pair in documented for o in pair if o}
    assert options - {"--help"} == documented


def test_help_ends_with_examples():
    result = run("trace", "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout and "telegraf-tcpdrop trace --json" in result.stdout


def test_an_unprivileged_user_is_one_error_line_naming_the_capabilities():
    require_root()
    assert_one_error_line(run("trace", prefix=as_nobody_with()), 1,
                          "E! not allowed to load BPF programs", "CAP_BPF", "CAP_PERFMON")


def test_a_kernel_without_btf_is_one_error_line_naming_both_ways_out():
    require_root()
    hide_btf = in_mount_namespace("mount -t tmpfs none /sys/kernel/btf")
    # auto looks for the bcc backend next, which lacks this kernel's headers
    assert_one_error_line(run("trace", prefix=hide_btf), 1, "has no BTF", "CONFIG_DEBUG_INFO_BTF",
                          "or the bcc backend; no headers for kernel", "linux-headers-")


def test_a_host_without_libbpf_is_one_error_line_naming_the_package():
    require_root()
    libbpf = subprocess.run(["sh", "-c", "ldconfig -p | awk '/libbpf.so.1 /{print $NF; exit}'"],
                            capture_output=True, text=True).stdout.strip()
    hide_libbpf = in_mount_namespace(f"mount --bind /dev/null {libbpf}")
    assert_one_error_line(run("trace", prefix=hide_libbpf), 1,
                          "E! libbpf.so.1 not found", "apt install libbpf1")


def package_copy(tmp_path):
    """A copy of the package, to break; run with run_copy."""
    package = tmp_path / "telegraf_tcpdrop"
    subprocess.run(["cp", "-r", telegraf_tcpdrop.__path__[0], str(package)], check=True)
    return package


def run_copy(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "telegraf_tcpdrop", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)


def test_no_probe_object(tmp_path):
    """The package without its object file, as a broken install would be."""
    require_root()
    (package_copy(tmp_path) / "tcpdrop.bpf.o").unlink()
    assert_one_error_line(run_copy(tmp_path, "trace"), 1, "tcpdrop.bpf.o is missing", "make probe")


def test_probe_object_of_other_sources(tmp_path):
    """An object whose settings global has another name (as one built from
    other sources would): one line naming what its BTF lacks, not a traceback."""
    require_root()
    obj = package_copy(tmp_path) / "tcpdrop.bpf.o"
    data = obj.read_bytes()
    assert b"\0cfg\0" in data
    obj.write_bytes(data.replace(b"\0cfg\0", b"\0cfx\0"))  # in BTF and the symbol table alike
    assert_one_error_line(run_copy(tmp_path, "trace"), 1,
                          "E! the BPF object's BTF has no global cfg in section .rodata: the object "
                          "was not built from this version's source", "make probe")


def without_tracefs(tmp_path):
    """A private mount namespace without tracefs (whether or not the host has it
    mounted: a fresh boot has it not), its mounts written out before and after."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f"{{ umount /sys/kernel/tracing 2>/dev/null || true; }} && "
            f'cat /proc/self/mounts >{tmp_path}/before && "$@"; code=$?; '
            f"cat /proc/self/mounts >{tmp_path}/after; exit $code", "sh"]


def mounts(path):
    """The mounts listed in path, but network namespaces' (other tests' come and go)."""
    return [line for line in path.read_text().splitlines() if not line.startswith("nsfs ")]


def test_check_mounts_nothing_and_says_what_no_tracefs_means(tmp_path):
    require_root()
    result = run("check", prefix=without_tracefs(tmp_path))
    assert result.returncode == 0, result
    assert mounts(tmp_path / "after") == mounts(tmp_path / "before")
    assert "tracefs" not in (tmp_path / "after").read_text()
    assert ("ok    tracefs: /sys/kernel/tracing not mounted: the monitor mounts it when it starts; "
            "the hooks below are attached without it (to mount it now: mount -t tracefs nodev "
            "/sys/kernel/tracing)\n") in result.stdout
    assert "ok    hook: tp_btf/kfree_skb attaches" in result.stdout
    assert "sock:inet_sock_set_state" in result.stdout  # listen(2)'s tracepoint is in tracefs


def test_the_monitor_mounts_tracefs_when_it_starts(tmp_path):
    require_root()
    # --signal STDIN with stdin at its end: the monitor emits once and exits
    result = run("metrics", "--signal", "STDIN", prefix=without_tracefs(tmp_path),
                 stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result
    assert "tracefs" not in (tmp_path / "before").read_text()
    assert " /sys/kernel/tracing tracefs " in (tmp_path / "after").read_text()
    assert "syscalls:sys_enter_listen" in result.stderr  # in tracefs


def test_check_as_telegrafs_user_says_what_a_closed_tracefs_means():
    require_root()
    mount_tracefs()  # root's alone, as mounted
    result = run("check", prefix=as_nobody_with("bpf", "perfmon", "syslog"))
    assert result.returncode == 0, result
    assert ("ok    tracefs: /sys/kernel/tracing mounted, but closed to this user (Permission "
            "denied): tp_btf and fentry need none of it;") in result.stdout
    assert "mount -o remount,gid=65534,mode=0750 /sys/kernel/tracing)\n" in result.stdout


def test_check_passes_on_this_host():
    require_root()
    result = run("check")
    assert result.returncode == 0, result
    assert result.stdout.count("\nok ") + result.stdout.startswith("ok ") == 11, result.stdout
    assert result.stdout.startswith("ok    backend: core (the kernel has BTF and libbpf is installed)")
    assert "ok    hook: tp_btf/kfree_skb attaches" in result.stdout
    assert "ok    listen-queue drops: tracepoints skb:consume_skb, skb:kfree_skb and syscalls:sys_enter_listen" in result.stdout
    assert "ok    nested runs: skipped by the kernel\n" in result.stdout


def test_bcc_backend_without_kernel_headers():
    """This host has bcc (python3-bpfcc) but no headers for its own kernel."""
    require_root()
    release = os.uname().release
    assert not os.path.exists(f"/lib/modules/{release}/build")
    result = run("check", "--backend", "bcc")
    assert result.returncode == 1, result
    assert result.stdout.startswith("ok    backend: bcc (asked for with --backend)\nok    bcc: ")
    assert f"FAIL  kernel headers: no headers for kernel {release} " in result.stdout
    assert f"apt install linux-headers-{release}" in result.stdout
    assert_one_error_line(run("trace", "--backend", "bcc"), 1, "E! no headers for kernel",
                          f"apt install linux-headers-{release}")


def test_tp_btf_hook_is_not_for_the_bcc_backend():
    require_root()
    assert_one_error_line(run("trace", "--backend", "bcc", "--hook", "tp_btf"), 2,
                          "E! --hook tp_btf needs kernel BTF", "--backend core")


def test_reasons_lists_the_running_kernels_names():
    require_root()
    listed = {name: int(value) for value, name in map(str.split, run("reasons").stdout.splitlines())}
    with open("/sys/kernel/tracing/events/skb/kfree_skb/format") as f:
        in_format = {name: int(value) for value, name in re.findall(r'\{ (\d+), "(\w+)" \}', f.read())}
    assert len(in_format) > 50
    assert {name: listed.get(name) for name in in_format} == in_format


def test_trace_human_output_and_clean_exit(netns):
    proc = subprocess.Popen([CLI, "trace", "--port", "7200"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        assert proc.stdout.readline().startswith("TIME     PID     NETNS        IP SADDR:SPORT")
        netns.traffic("syn", "127.0.0.1", 7200, 40100)
        while not lines or lines[-1] != "\n":
            lines.append(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=5)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert re.fullmatch(rf"\d\d:\d\d:\d\d \d+ +{netns.name} 4  127\.0\.0\.1:40100 +> 127\.0\.0\.1:7200 +"
                        r"NONE \(SYN\) NO_SOCKET\n", lines[0]), lines[0]
    assert lines[1].startswith("tcp_v4_rcv+0x") and len(lines) > 4
    assert re.search(r"I! attached to tp_btf/kfree_skb \(core\) in \d+ ms", err)


def test_closed_stdout_ends_quietly(netns):
    proc = subprocess.Popen([CLI, "trace", "--port", "7201"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    proc.stdout.close()  # as `trace | head -1` does
    netns.traffic("syn", "127.0.0.1", 7201, 40101)
    assert eventually(lambda: proc.poll() is not None, timeout=5)
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr.read()



def test_reason_filters_become_the_probes_mask():
    from telegraf_tcpdrop.cli import parse_args
    from telegraf_tcpdrop.startup import probe_config
    from telegraf_tcpdrop.names import DropReasons
    reasons = DropReasons({2: "NOT_SPECIFIED", 3: "NO_SOCKET", 104: "QUEUE_PURGE", 200: "X"})

    def wanted(*argv):
        config = probe_config(parse_args(["metrics", *argv]), reasons)
        bits = {v for v in range(256) if config.reason_mask[v >> 6] >> (v & 63) & 1}
        return bits, bool(config.other_reasons)
    everything = set(range(256))
    assert wanted() == (everything - {104}, True)  # QUEUE_PURGE excluded by default
    assert wanted("--exclude-reason", "none") == (everything, True)
    assert wanted("--exclude-reason", "no_socket") == (everything - {3}, True)
    assert wanted("--reason", "NO_SOCKET", "--reason", "X") == ({3, 200}, False)
    assert wanted("--reason", "QUEUE_PURGE") == ({104}, False)  # asked for: not excluded


def test_a_stop_signal_right_after_attaching_ends_cleanly():
    """Between 'attached' and the main loop (kallsyms is read then), a SIGTERM
    must still end the process with exit 0, the probe closed."""
    require_root()
    proc = subprocess.Popen([CLI, "metrics"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "I! attached" in proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert out.splitlines()[-1].startswith("tcpdrop_agent "), out  # what was pending, written


def test_the_monitor_does_not_import_what_only_trace_uses():
    """trace's and pcap's imports (dataclasses, inspect, ast) cost the
    monitor's start-up and memory: each command's module imports its own."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, telegraf_tcpdrop.cli, telegraf_tcpdrop.metrics; "
         "print(*sorted(m for m in ('telegraf_tcpdrop.trace', 'telegraf_tcpdrop.pcap', 'dataclasses') "
         "if m in sys.modules))"], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
