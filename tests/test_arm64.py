"""arm64, for real: the probe built for __TARGET_ARCH_arm64, the .deb
cross-built for arm64 (`make deb ARCH=arm64`, lintian-clean), and that
package installed with dpkg in a Debian 12 arm64 machine emulated by
qemu-system-aarch64 (TCG) with Debian's arm64 6.1 kernel (tests/peers/
arm64_vm.py). There the drop scenarios of the kernel matrix run
(tests/guest_scenarios.py: the CO-RE backend on tp_btf and on the classic
tracepoint; bcc is not installed) with the amd64 6.1 kernel's expectations
(tests/test_kernels.py), but for the SYNs a listener refuses (no fentry on
arm64's 6.1), and 1,000 SYNs to a closed port are counted against the
kernel's own counters (tests/peers/exact_syns.py).
Slow: ~2 min warm (the machine: ~95 s, 5 s of them to boot); the first run
also builds its root (~17 min).
"""
import io
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import deb_depends, require_root
from test_kernels import (EXPECTED, USER_SPACE, check_listen_overflow, check_scenario,
                          check_udp_and_icmp_unreported, events, refused_syn)

sys.path.insert(0, str(Path(__file__).parent / "peers"))
import arm64_vm  # noqa: E402

pytestmark = [pytest.mark.kernel, pytest.mark.slow]
ROOT = Path(__file__).parents[1]
TESTS = Path(__file__).parent
HOOKS = {"core": "tp_btf/kfree_skb", "core-tracepoint": "tracepoint/skb/kfree_skb"}
# In the machine's root beside the package's dependencies: what the scenarios run.
GUEST_TOOLS = ("python3-pytest", "iproute2", "nftables", "procps", "kmod")
SYNS = 1000
PROBE = "usr/lib/python3/dist-packages/telegraf_tcpdrop/tcpdrop.bpf.o"


@pytest.fixture(scope="module")
def arm64_deb():
    """build/arm64/deb/telegraf-tcpdrop_<version>_arm64.deb and make's output."""
    require_root()
    result = subprocess.run(["make", "-C", str(ROOT), "deb", "ARCH=arm64"], capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [deb] = (ROOT / "build" / "arm64" / "deb").glob("telegraf-tcpdrop_*_arm64.deb")
    return deb, result.stdout


@pytest.fixture(scope="module")
def guest(arm64_deb, tmp_path_factory):
    """What the arm64 machine saw: {file name: contents} of its job directory,
    and the console's output."""
    deb = arm64_deb[0]
    machine = arm64_vm.prepare(deb_depends(deb) + list(GUEST_TOOLS))
    job = tmp_path_factory.mktemp("arm64-job")
    (job / deb.name).write_bytes(deb.read_bytes())
    mark = "echo \"$1 $(cut -d' ' -f1 /proc/uptime)\" >> /run/job/uptime"
    command = f"""set -e
mark() {{ {mark}; }}
mark booted
mount -t tracefs tracefs /sys/kernel/tracing
export PYTHONDONTWRITEBYTECODE=1
uname -m > /run/job/machine
dpkg -i /run/job/{deb.name} > /run/job/dpkg.log 2>&1
mark installed
telegraf-tcpdrop check > /run/job/check.txt 2>&1
mark checked
cd {TESTS} && python3 guest_scenarios.py /run/job/scenarios.json
mark scenarios
python3 {TESTS}/peers/exact_syns.py /run/job/exact.json {SYNS}
mark exact"""
    started = time.monotonic()
    code, output = machine.run(command, job, shares=[TESTS], timeout=3600)
    elapsed = time.monotonic() - started
    files = {p.name: p.read_text(errors="replace") for p in job.iterdir() if p.suffix != ".deb"}
    assert code == 0, f"exit {code}\n{files.get('dpkg.log', '')[-2000:]}\n{output[-4000:]}"
    uptime = dict(line.split() for line in files["uptime"].splitlines())
    print(f"arm64 machine {machine.version}: {elapsed:.0f} s in all; guest uptime at each step: "
          f"{uptime}")
    return files, machine.version


def test_the_package_is_lintian_clean(arm64_deb):
    _, output = arm64_deb
    assert "telegraf-tcpdrop_" in output and "_arm64.deb" in output
    assert not re.search(r"^[EW]: ", output, re.M), output[-3000:]


def btf_structs(obj):
    """{struct name: its BTF dump} of a BPF object (bpftool)."""
    dump = subprocess.run(["bpftool", "btf", "dump", "file", str(obj)], capture_output=True,
                          text=True, check=True).stdout
    return {m.group(1): m.group(0) for m in re.finditer(r"STRUCT '(\w+)'.*\n(?:\t.*\n)*", dump)}


def test_the_package_holds_arm64s_probe_and_the_host_keeps_its_own(arm64_deb, tmp_path):
    """bpf_tracing.h reads an arm64 kprobe's registers through struct
    user_pt_regs (x30: the return address); the package built for arm64
    holds that object, while the tree's own (built by setup.py for this
    host) keeps x86's pt_regs."""
    deb, _ = arm64_deb
    with tarfile.open(fileobj=io.BytesIO(subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout)) as tar:
        (tmp_path / "arm64.o").write_bytes(tar.extractfile(f"./{PROBE}").read())
    arm64 = btf_structs(tmp_path / "arm64.o")
    assert "'regs' type_id=" in arm64["user_pt_regs"] and "pt_regs" not in arm64
    host = btf_structs(deb.parent / "src" / "plugin" / "tcpdrop.bpf.o")
    assert "'di' type_id=" in host["pt_regs"] and "user_pt_regs" not in host
    assert (deb.parent / "src" / "build" / "arm64" / "tcpdrop.bpf.o").read_bytes() == \
        (tmp_path / "arm64.o").read_bytes()


def test_installed_on_arm64_check_says_core_on_tp_btf(guest):
    files, version = guest
    assert files["machine"].strip() == "aarch64" and version.endswith("-arm64")
    check = files["check.txt"]
    assert check.startswith("ok    backend: core"), check
    assert "ok    hook: tp_btf/kfree_skb attaches" in check, check
    assert "listen-queue drops: not seen: no fentry" in check, check


def result(guest):
    return json.loads(guest[0]["scenarios.json"])


def test_each_hook_attaches(guest):
    res = result(guest)
    assert res["kernel"] == guest[1]
    assert set(res["runs"]) == {f"{name} {cmd}" for name in HOOKS for cmd in ("trace", "metrics")}
    for name, hook in HOOKS.items():
        for command in ("trace", "metrics"):
            run = res["runs"][f"{name} {command}"]
            assert run["exit"] == 0, run["stderr"]
            assert all(line.startswith("I! ") for line in run["stderr"]), run["stderr"]
            assert f"I! attached to {hook} (core) in " in run["stderr"][-1]
            assert run["stderr"][-1].endswith("; nested runs: skipped by the kernel\n")


def test_both_hooks_report_the_same_drops_and_count_each_event(guest):
    res = result(guest)
    traced = [sorted(json.dumps({k: v for k, v in e.items() if k not in USER_SPACE}, sort_keys=True)
                     for e in events(res, name)) for name in HOOKS]
    assert traced[0] == traced[1] and len(traced[0]) >= 12
    counted = [sorted(line.rsplit(" ", 1)[0] for line in res["runs"][f"{name} metrics"]["stdout"]
                      if line.startswith("tcpdrop,")) for name in HOOKS]
    assert counted[0] == counted[1] and counted[0]
    assert sum(int(line.split(" drops=")[1].split("i")[0]) for line in counted[0]) == len(traced[0])


@pytest.mark.parametrize("scenario", EXPECTED)
def test_each_scenarios_drops_are_amd64_6_1s(guest, scenario):
    """The same drops as in amd64's 6.1: reasons, states, flags, drop sites."""
    check_scenario("6.1", result(guest), HOOKS, scenario)


def test_listen_overflow_is_seen_at_tcp_v4_rcv(guest):
    check_listen_overflow("6.1", result(guest), HOOKS)


def test_refused_syns_are_not_seen_and_the_monitor_says_so(guest):
    """Where amd64's 6.1 counts the SYNs a listener refuses with fentry/fexit,
    Debian 12's arm64 kernel cannot: it has no ftrace direct calls
    (CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS), so a BPF trampoline does not
    attach to a kernel function (ENOTSUPP), and skb:consume_skb has no
    location before 6.3. The kernel refused them (ListenDrops); the monitor
    invents none and says at start that it cannot see them."""
    res = result(guest)
    for scenario in ("listen-full4", "listen-full6", "syn-queue-full"):
        seen = res["scenarios"][scenario]
        assert seen["TcpExtListenDrops"] >= 18
        for name in HOOKS:
            assert not [e for e in events(res, name)
                        if e["netns"] == seen["netns"] and refused_syn(e)], (scenario, name)
    for run in res["runs"].values():
        assert "; listen-queue drops: not seen: no fentry, " in run["stderr"][-1]


def test_udp_and_icmp_drops_are_not_reported(guest):
    check_udp_and_icmp_unreported(result(guest), HOOKS)


def test_tcp_drop_is_no_symbol_and_its_kprobe_says_so(guest):
    res = result(guest)
    assert res["tcp_drop_symbol"] is False
    assert res["kprobe"]["exit"] == 1
    assert "failed to create kprobe 'tcp_drop+0x0'" in res["kprobe"]["stderr"]


def test_a_thousand_syns_counted_exactly_as_the_kernel_counts_them(guest):
    """Each SYN to the closed port once (nftables' counter of SYNs in), and
    each RST that answered one (the namespace's TcpOutRsts), dropped in turn."""
    exact = json.loads(guest[0]["exact.json"])
    assert exact["exit"] == 0 and exact["seen_in_time"], exact["stderr"]
    assert exact["nft_syns"] == exact["TcpOutRsts"] == SYNS
    assert exact["drops"] == {
        f"{exact['sport']}>{exact['port']} SYN NO_SOCKET tcp_v4_rcv": SYNS,
        f"{exact['port']}>{exact['sport']} RST|ACK NO_SOCKET tcp_v4_rcv": SYNS}
