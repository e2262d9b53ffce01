"""The monitored host as users run it: a Debian 13 system booted under QEMU
with systemd as PID 1 (tests/peers/system_vm.py), Telegraf installed the
way its upstream package does (its own unit and maintainer scripts, from
its Go module, around the binary built from it), our package installed
with apt before it, and the monitor's life under systemd
(tests/system_guest.py runs the steps; this file asserts).
Slow: the machine boots in ~1 min under emulation, the steps take ~5.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MONITOR_CAPS, build_deb, deb_depends, require_root

sys.path.insert(0, str(Path(__file__).parent / "peers"))
import system_vm  # noqa: E402

pytestmark = [pytest.mark.kernel, pytest.mark.slow]
TESTS = Path(__file__).parent
ROOT = TESTS.parent
# In the machine beyond the package's own dependencies: the direct service's peer.
PACKAGES = ("victoria-metrics",)
TELEGRAF_CONF = """[agent]
  interval = "1s"
  flush_interval = "1s"
  omit_hostname = true
[[inputs.exec]]
  commands = ["/usr/bin/python3 /usr/local/lib/bpf_attempt.py"]
  data_format = "influx"
[[outputs.file]]
  files = ["/var/log/telegraf/metrics.json"]
  data_format = "json"
"""


def telegraf_deb(telegraf_bin, out):
    """Telegraf as its upstream .deb installs it: the binary, the unit and
    init script in /usr/lib/telegraf/scripts, and its maintainer scripts
    (pre-install: the user; post-install: the unit, enabled; ...), all from
    the module the binary was built from."""
    version = subprocess.run([telegraf_bin, "--version"], capture_output=True, text=True,
                             check=True).stdout.split()[1]
    go = shutil.which("go") or "/usr/local/go/bin/go"
    module = subprocess.run([go, "mod", "download", "-json", f"github.com/influxdata/telegraf@v{version}"],
                            capture_output=True, text=True, check=True, env={**os.environ, "GOTOOLCHAIN": "local"})
    source = Path(json.loads(module.stdout)["Dir"])
    tree = out / "telegraf-deb"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "lib" / "telegraf" / "scripts").mkdir(parents=True)
    (tree / "usr" / "local" / "lib").mkdir(parents=True)
    (tree / "etc" / "telegraf" / "telegraf.d").mkdir(parents=True)
    subprocess.run(["cp", telegraf_bin, str(tree / "usr" / "bin" / "telegraf")], check=True)
    for name in ("telegraf.service", "init.sh"):
        subprocess.run(["cp", str(source / "scripts" / name), str(tree / "usr" / "lib" / "telegraf" / "scripts")],
                       check=True)
    for ours, theirs in (("preinst", "pre-install.sh"), ("postinst", "post-install.sh"),
                         ("prerm", "pre-remove.sh"), ("postrm", "post-remove.sh")):
        (tree / "DEBIAN" / ours).write_text((source / "scripts" / "deb" / theirs).read_text())
        (tree / "DEBIAN" / ours).chmod(0o755)
    # What another of Telegraf's inputs could try (tests/peers/bpf_attempt.py).
    subprocess.run(["cp", str(TESTS / "peers" / "bpf_attempt.py"), str(tree / "usr" / "local" / "lib")],
                   check=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: telegraf\nVersion: {version}-1\nArchitecture: amd64\nMaintainer: tests\n"
        "Depends: bash\nDescription: Telegraf, as its upstream package installs it (tests)\n")
    deb = out / "telegraf.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)], check=True,
                   capture_output=True)
    return deb


@pytest.fixture(scope="module")
def system(telegraf_bin, tmp_path_factory):
    """What tests/system_guest.py saw in the machine: its results."""
    require_root()
    deb, _ = build_deb(ROOT)
    machine = system_vm.prepare(deb_depends(deb) + list(PACKAGES))
    job = tmp_path_factory.mktemp("system-job")
    (job / "telegraf-tcpdrop.deb").write_bytes(deb.read_bytes())
    telegraf_deb(telegraf_bin, job)
    (job / "telegraf.conf").write_text(TELEGRAF_CONF)
    code, console = machine.run(f"python3 {TESTS}/system_guest.py /run/job", job, shares=[TESTS],
                                timeout=2400)
    output = (job / "output").read_text(errors="replace") if (job / "output").exists() else ""
    assert code == 0 and (job / "results.json").exists(), f"exit {code}\n{output[-4000:]}\n{console[-3000:]}"
    return json.loads((job / "results.json").read_text())


def test_the_package_gives_the_launcher_alone_the_capabilities(system):
    launcher = system["launcher"]
    assert (launcher["mode"], launcher["owner"]) == ("0o750", "root:tcpdrop-metrics")
    path, caps = launcher["caps"].split()  # getcap orders them its way
    assert path == "/usr/libexec/telegraf-tcpdrop/metrics"
    assert set(caps.removesuffix("=p").split(",")) == {"cap_bpf", "cap_perfmon", "cap_syslog"}


def test_a_user_outside_the_group_is_refused_in_one_line(system):
    outsider = system["outsider"]
    assert outsider["exit"] == 126 and outsider["stderr"].count("\n") == 1, outsider
    assert "/usr/libexec/telegraf-tcpdrop/metrics" in outsider["stderr"] and "Permission denied" in outsider["stderr"]


def test_telegraf_installed_after_us_runs_the_input_as_its_user_without_capabilities(system):
    assert system["telegraf_enabled"] == "enabled" and system["telegraf_started"]
    assert system["telegraf_user"] == "telegraf"
    assert system["telegraf_caps"] == {"CapEff": 0, "CapPrm": 0, "CapAmb": 0}
    assert system["monitor_user"] == "telegraf"
    assert system["monitor_caps"] == {"CapEff": MONITOR_CAPS, "CapPrm": MONITOR_CAPS, "CapAmb": MONITOR_CAPS}
    assert system["bpf_attempt"] == [1]  # EPERM: Telegraf's other input cannot load BPF
    assert system["drops_7960"] == 25


def test_our_postinst_restarts_telegraf(system):
    assert system["restarted_by_postinst"]


def test_a_restart_while_drops_flow_writes_the_interval_in_flight_once(system):
    """30 SYNs, Telegraf restarted within that interval, 20 more: all 50, none twice."""
    assert system["drops_7961"] == 50


def test_our_lines_reach_telegrafs_journal(system):
    """Telegraf logs them with their level in the text (its logger writes no
    syslog priority: every line of telegraf.service is PRIORITY 6)."""
    assert any(re.search(r"I! \[inputs\.execd\] .*attached to tp_btf/kfree_skb", m)
               for _, m in system["telegraf_journal"]), system["telegraf_journal"]


def test_the_direct_service_delivers_exact_counts_with_its_lines_at_their_levels(system):
    assert system["vm_drops_7962"] == 40
    assert system["service_user"] != "root"  # DynamicUser
    assert system["service_caps"]["CapEff"] == MONITOR_CAPS
    levels = {}
    for priority, message in system["service_journal"]:
        found = re.match(r"([EWI])! ", message)
        if found:
            levels.setdefault(found.group(1), set()).add(priority)
    assert levels == {"E": {3}, "W": {4}, "I": {6}}, system["service_journal"]


def test_a_root_only_token_reaches_the_service_as_a_credential_and_not_as_a_file(system):
    """DynamicUser= cannot read a 0600 root file named in the config: one line
    says so and names LoadCredential=, with which the same file is read."""
    messages = [m for _, m in system["service_journal"]]
    assert any(m.startswith("E! cannot read the InfluxDB token file /etc/telegraf-tcpdrop/token: "
                            "permission denied") and "LoadCredential=influx-token:" in m
               for m in messages), messages
    assert system["service_attached"] and system["vm_drops_7962"] == 40


def test_an_upgrade_restarts_the_enabled_service_which_keeps_its_capabilities_and_counts(system):
    upgrade = system["service_upgrade"]
    assert (upgrade["restarted"], upgrade["active"], upgrade["enabled"], upgrade["attached"]) == \
        (True, "active", "enabled", True)
    _, caps = upgrade["launcher_caps"].split()
    assert set(caps.removesuffix("=p").split(",")) == {"cap_bpf", "cap_perfmon", "cap_syslog"}
    assert upgrade["service_caps"]["CapEff"] == MONITOR_CAPS
    assert upgrade["vm_drops_7963"] == 15


def test_systemd_rates_the_direct_service_and_the_readme_says_so(system):
    found = re.search(r"Overall exposure level for telegraf-tcpdrop\.service: (\d+\.\d+) (\w+)",
                      system["security"])
    assert found, system["security"]
    readme = (ROOT / "README.md").read_text()
    assert f"`systemd-analyze security telegraf-tcpdrop`: **{found.group(1)} {found.group(2)}**" in readme


def test_apt_remove_leaves_telegraf_running_without_the_input(system):
    assert system["after_remove"] == {"telegraf": "active", "monitor": None}
