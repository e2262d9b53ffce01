"""The .deb as a user meets it: built from the tree, lintian-clean, installed
with apt into a clean Debian 13 root and a clean Debian 12 one, used (Telegraf
as its own user, with no capability), removed, purged, upgraded."""
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import MONITOR_CAPS, Tracer, build_deb, eventually, require_root

sys.path.insert(0, str(Path(__file__).parent / "peers"))
from debian_root import SUITES, DebianRoot  # noqa: E402
from servers import EtsyStatsd, VictoriaMetrics, free_port  # noqa: E402

# In the order written: removing and purging follow the install test (the root it leaves).
pytestmark = [pytest.mark.kernel, pytest.mark.random_order(disabled=True)]
ROOT = Path(__file__).parents[1]
DROP_IN = "/etc/telegraf/telegraf.d/tcpdrop.conf"
LAUNCHER = "/usr/libexec/telegraf-tcpdrop/metrics"


@pytest.fixture(scope="module")
def deb():
    require_root()
    return build_deb(ROOT)


@pytest.fixture(scope="module")
def newer_deb(tmp_path_factory):
    """The same tree as version 0.0.1 higher: what an upgrade brings."""
    tree = tmp_path_factory.mktemp("newer") / "src"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(tree)], check=True)
    pyproject = tree / "pyproject.toml"
    text = pyproject.read_text()
    major, minor, patch = re.search(r'^version = "(\d+)\.(\d+)\.(\d+)"', text, re.M).groups()
    pyproject.write_text(text.replace(f'version = "{major}.{minor}.{patch}"',
                                      f'version = "{major}.{minor}.{int(patch) + 1}"'))
    # committed: `make deb` packages HEAD
    subprocess.run(["git", "-C", str(tree), "-c", "user.name=test", "-c", "user.email=test@invalid",
                    "commit", "-q", "-am", "version + 0.0.1"], check=True)
    return build_deb(tree)[0]


@pytest.fixture(scope="module", params=SUITES)
def suite(request):
    return request.param


@pytest.fixture(scope="module")
def telegraf_root(tmp_path_factory, telegraf_bin, suite):
    """A clean root with Telegraf's binary, its user as its package makes it,
    and a main config (not the package) whose other input tries to load BPF."""
    root = DebianRoot(tmp_path_factory.mktemp(suite) / "debian", suite).create()
    shutil.copy(telegraf_bin, root.path / "usr" / "local" / "bin" / "telegraf")
    shutil.copy(Path(__file__).parent / "peers" / "bpf_attempt.py", root.path / "usr" / "local" / "bin")
    root.run("useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/false",
             "--home-dir", "/etc/telegraf", "telegraf")
    (root.path / "etc" / "telegraf").mkdir()
    (root.path / "etc" / "telegraf" / "telegraf.conf").write_text(f"""
[agent]
  interval = "1s"
  flush_interval = "1s"
  omit_hostname = true
[[inputs.statsd]]
  service_address = "127.0.0.1:{free_port()}"
[[inputs.exec]]
  commands = ["/usr/bin/python3 /usr/local/bin/bpf_attempt.py"]
  data_format = "influx"
[[outputs.file]]
  files = ["/tmp/metrics.json"]
  data_format = "json"
""")
    root.apt("update")
    yield root
    root.destroy()


def as_telegraf(root, *groups):
    """Telegraf's user, as its service runs it (no capability), with these
    supplementary groups (telegraf.service.d/tcpdrop.conf adds ours). The
    command is started by a shell: setpriv keeps root's capabilities until
    it has started it, and so could run what this user may not."""
    gids = [root.run("getent", "group", group).stdout.split(":")[2] for group in groups]
    return ["setpriv", "--reuid=telegraf", "--regid=telegraf",
            f"--groups={','.join(gids)}" if gids else "--clear-groups", "sh", "-c", 'exec "$@"', "sh"]


def capabilities(pid):
    """{CapEff: int, CapPrm: ..., CapAmb: ...} of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {k: int(v, 16) for k, v in re.findall(r"^(Cap(?:Eff|Prm|Amb)):\s*(\w+)$", status, re.M)}


def install_dependencies(root, deb):
    """What apt would pull in for the package, installed on its own first."""
    depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True,
                             text=True, check=True).stdout
    names = [re.split(r"[ :(]", d.strip())[0] for d in depends.split(",")]
    root.apt("install", "--no-install-recommends", *names)


def install(root, deb):
    shutil.copy(deb, root.path / "tmp")
    return root.apt("install", "--no-install-recommends", f"/tmp/{deb.name}")


def telegraf_starts(root):
    """Whether Telegraf, with the main config and the drop-in directory, gets
    past starting its inputs (it exits at once if one cannot start; `telegraf
    --test` does not, so it cannot tell), and its log. Its outputs flush only
    once its inputs have started: with --debug, each flush logs a line."""
    telegraf = root.popen("telegraf", "--debug", "--config", "/etc/telegraf/telegraf.conf",
                          "--config-directory", "/etc/telegraf/telegraf.d",
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    reader = threading.Thread(target=Tracer._read, args=(telegraf.stdout, log, str), daemon=True)
    reader.start()

    def flushed():
        return any("D! [outputs.file] Buffer fullness" in line for line in log)
    ended = eventually(lambda: flushed() or telegraf.poll() is not None, timeout=30)
    running = flushed()
    telegraf.terminate()
    telegraf.wait(timeout=20)
    reader.join(timeout=5)
    assert ended, "Telegraf neither flushed its outputs nor exited within 30 s:\n" + "".join(log)
    return running, "".join(log)


def test_lintian_finds_no_error_and_no_warning(deb):
    _, output = deb
    assert not re.search(r"^[EW]: ", output, re.M), output[-3000:]


def test_installed_package_works(deb, telegraf_root, netns):
    root = telegraf_root
    install_dependencies(root, deb[0])
    root.before = root.files()  # what the purge below must come back to
    install(root, deb[0])
    check = root.run("telegraf-tcpdrop", "check")
    assert check.stdout.startswith("ok    backend: core") and check.stdout.count("\nok ") == 10
    assert "ok    hook: tp_btf/kfree_skb attaches" in check.stdout
    assert "ok    listen-queue drops: tracepoints" in check.stdout
    assert "ok    nested runs: skipped by the kernel\n" in check.stdout  # 6.18: the kernel skips them
    assert Path(root.path / "usr/share/man/man8/telegraf-tcpdrop.8.gz").exists()
    dashboards = Path(__file__).parents[1] / "dashboards"
    installed = root.path / "usr/share/telegraf-tcpdrop/dashboards"
    assert {p.name: p.read_bytes() for p in installed.iterdir()} == \
        {p.name: p.read_bytes() for p in dashboards.glob("*.json")}

    # trace sees a real drop
    trace = root.popen("telegraf-tcpdrop", "trace", "--json", "--port", "7950",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "I! attached" in trace.stderr.readline()
    netns.traffic("syn", "127.0.0.1", 7950, 40950)
    drop = json.loads(trace.stdout.readline())
    trace.terminate()
    assert (drop["dport"], drop["reason"], drop["flags"]) == (7950, "NO_SOCKET", "SYN")

    # metrics reaches InfluxDB's write API with the bundled client
    vm = VictoriaMetrics(root.path.parent).start()
    try:
        metrics = root.popen("telegraf-tcpdrop", "metrics", "--output", "influxdb", "--influx-url",
                             vm.url, "--influx-bucket", "b", "--interval", "300ms", "--port", "7951",
                             env={"INFLUX_TOKEN": "x"}, stdin=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        assert "I! attached" in metrics.stderr.readline()
        netns.traffic("raw-syns", 7951, 40, 40000)
        assert eventually(lambda: vm.total("tcpdrop_drops", dport="7951", flags="SYN") == 40, 15)
        metrics.terminate()
        assert metrics.wait(timeout=10) == 0, metrics.stderr.read()
    finally:
        vm.stop()

    # metrics reaches a StatsD server
    (root.path.parent / "etsy").mkdir(exist_ok=True)
    etsy = EtsyStatsd(root.path.parent / "etsy").start()
    try:
        metrics = root.popen("telegraf-tcpdrop", "metrics", "--output", "statsd", "--statsd-port",
                             str(etsy.port), "--statsd-tags", "dogstatsd", "--interval", "300ms",
                             "--port", "7953", stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
        assert "I! attached" in metrics.stderr.readline()
        netns.traffic("raw-syns", 7953, 30, 40000)
        name = re.compile(r"tcpdrop\.drops;dport=7953;.*flags=SYN;")
        assert eventually(lambda: [v for k, v in etsy.counters().items() if name.match(k)] == [30],
                          15), etsy.counters()
        metrics.terminate()
        assert metrics.wait(timeout=10) == 0, metrics.stderr.read()
    finally:
        etsy.stop()

    # Telegraf, as its own user with no capability, starts the monitor with
    # the installed drop-in through the launcher, and reports exact drops;
    # its other input cannot load BPF.
    log = open(root.path / "tmp" / "telegraf.log", "w+")
    telegraf = root.popen(*as_telegraf(root, "tcpdrop-metrics"), "telegraf", "--config",
                          "/etc/telegraf/telegraf.conf", "--config-directory", "/etc/telegraf/telegraf.d",
                          stdout=log, stderr=subprocess.STDOUT)
    try:
        out = root.path / "tmp" / "metrics.json"

        def points(name):
            return [m for m in map(json.loads, out.read_text().splitlines()) if m["name"] == name] \
                if out.exists() else []
        assert eventually(lambda: points("tcpdrop_agent") and points("bpf_attempt"), 20), \
            (root.path / "tmp" / "telegraf.log").read_text()
        netns.traffic("raw-syns", 7952, 20, 40000)
        assert eventually(lambda: sum(m["fields"]["drops"] for m in points("tcpdrop")
                                      if m["tags"].get("dport") == "7952") == 20, 15)
        assert capabilities(telegraf.pid) == {"CapEff": 0, "CapPrm": 0, "CapAmb": 0}
        monitor = int(subprocess.run(["pgrep", "-P", str(telegraf.pid), "-f", "telegraf-tcpdrop"],
                                     capture_output=True, text=True).stdout.split()[0])
        assert capabilities(monitor) == {"CapEff": MONITOR_CAPS, "CapPrm": MONITOR_CAPS,
                                         "CapAmb": MONITOR_CAPS}
        assert {m["fields"]["errno"] for m in points("bpf_attempt")} == {1}  # EPERM
    finally:
        telegraf.terminate()
        telegraf.wait(timeout=20)
    # The control: the same attempt with the monitor's capabilities loads.
    assert root.run("setpriv", "--reuid=telegraf", "--regid=telegraf", "--clear-groups",
                    "--inh-caps=+bpf,+perfmon", "--ambient-caps=+bpf,+perfmon",
                    "python3", "/usr/local/bin/bpf_attempt.py").stdout == "bpf_attempt errno=0i\n"


PLANTED = """import os
open(os.path.join("/tmp/planted", "ran-" + {how!r}), "w").close()
"""


def plant(root):
    """Code where Python would run it, if it looked there: PYTHONPATH's
    sitecustomize, HOME's user site, the package in the working directory;
    and a library for LD_PRELOAD. Each leaves a file if it runs."""
    planted = root.path / "tmp" / "planted"
    shutil.rmtree(planted, ignore_errors=True)
    version = root.run("python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])").stdout.strip()
    user_site = planted / "home" / ".local" / "lib" / f"python{version}" / "site-packages"
    for path, how in ((planted / "path" / "sitecustomize.py", "pythonpath"),
                      (planted / "cwd" / "telegraf_tcpdrop" / "__init__.py", "cwd"),
                      (user_site / "usercustomize.py", "usersite")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PLANTED.format(how=how))
    library = planted / "preload.c"
    library.write_text('#include <stdio.h>\n__attribute__((constructor)) static void ran(void)'
                       '{ FILE *f = fopen("/tmp/planted/ran-ld_preload", "w"); if (f) fclose(f); }\n')
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(planted / "preload.so"), str(library)], check=True)
    subprocess.run(["chmod", "-R", "a+rwX", str(planted)], check=True)
    env = {"PYTHONPATH": "/tmp/planted/path", "HOME": "/tmp/planted/home",
           "LD_PRELOAD": "/tmp/planted/preload.so"}
    return planted, env


def run_planted(root, env, *cmd):
    """cmd as Telegraf's user, from the planted working directory, with the
    planted environment given to cmd alone (env execs it: no other process
    loads the planted library)."""
    return root.run(*as_telegraf(root, "tcpdrop-metrics"), "sh", "-c", 'cd /tmp/planted/cwd && exec env "$@"',
                    "sh", *(f"{k}={v}" for k, v in env.items()), *cmd, check=False, timeout=60)


def test_the_launcher_runs_only_the_monitor_only_for_its_group(deb, telegraf_root):
    root = telegraf_root
    assert hasattr(root, "before"), "runs after test_installed_package_works"
    planted, env = plant(root)
    # The control: Python itself, so started, runs what was planted.
    control = run_planted(root, env, "python3", "-c", "import telegraf_tcpdrop")
    assert {p.name for p in planted.glob("ran-*")} >= {"ran-pythonpath", "ran-cwd", "ran-usersite",
                                                      "ran-ld_preload"}, control.stderr
    for ran in planted.glob("ran-*"):
        ran.unlink()
    launched = run_planted(root, env, LAUNCHER, "--help")
    assert launched.returncode == 0 and launched.stdout.startswith("usage: telegraf-tcpdrop metrics"), \
        launched.stdout + launched.stderr
    assert sorted(p.name for p in planted.glob("ran-*")) == []

    # Outside the group: refused, in one line.
    outside = root.run(*as_telegraf(root), LAUNCHER, "--help", check=False)
    assert outside.returncode == 126 and outside.stderr.count("\n") == 1, outside.stderr
    assert "Permission denied" in outside.stderr

    # Without its file capabilities (a file system without extended
    # attributes, NoNewPrivileges=): one line that says what to do, which works.
    root.run("setcap", "-r", LAUNCHER)
    bare = root.run(*as_telegraf(root, "tcpdrop-metrics"), LAUNCHER, check=False)
    assert bare.returncode == 1 and bare.stderr.count("\n") == 1, bare.stderr
    assert bare.stderr.startswith("E! [telegraf-tcpdrop] ") and "reinstall the package" in bare.stderr
    root.run("dpkg-reconfigure", "telegraf-tcpdrop")
    again = root.run(*as_telegraf(root, "tcpdrop-metrics"), LAUNCHER, "--help")
    assert again.stdout.startswith("usage: telegraf-tcpdrop metrics")
    caps = root.run("getcap", LAUNCHER).stdout.split()[1]  # getcap orders them its way
    assert set(caps.removesuffix("=p").split(",")) == {"cap_bpf", "cap_perfmon", "cap_syslog"}


def test_remove_leaves_telegraf_startable_and_purge_leaves_nothing(deb, telegraf_root):
    root = telegraf_root
    assert hasattr(root, "before"), "runs after test_installed_package_works"
    root.apt("remove", "telegraf-tcpdrop")
    assert not (root.path / DROP_IN[1:]).exists()
    running, log = telegraf_starts(root)
    assert running, log
    # The control: with the drop-in where Telegraf reads it, Telegraf would not start.
    shutil.copy(root.path / (DROP_IN[1:] + ".removed"), root.path / DROP_IN[1:])
    running, log = telegraf_starts(root)
    assert not running and "failed to start process" in log, log
    (root.path / DROP_IN[1:]).unlink()

    root.apt("purge", "telegraf-tcpdrop")
    leftovers = root.files() - root.before
    assert sorted(leftovers) == [], "\n".join(sorted(leftovers))
    assert root.files() == root.before  # nothing of the dependencies went either


def test_reinstall_and_upgrade_keep_an_edited_conffile(deb, newer_deb, suite, tmp_path):
    root = DebianRoot(tmp_path / "debian", suite).create()
    try:
        root.apt("update")
        install(root, deb[0])
        drop_in = root.path / DROP_IN[1:]
        edited = drop_in.read_text().replace('restart_delay = "10s"', 'restart_delay = "30s"')
        drop_in.write_text(edited)
        root.apt("remove", "telegraf-tcpdrop")
        install(root, deb[0])
        assert drop_in.read_text() == edited
        upgrade = install(root, newer_deb)
        assert drop_in.read_text() == edited
        assert "conffile" not in upgrade.stdout.lower()  # no prompt: the shipped file is unchanged
        version = root.run("dpkg-query", "-W", "-f", "${Version}", "telegraf-tcpdrop").stdout
        assert version == newer_deb.name.split("_")[1]
        caps = root.run("getcap", LAUNCHER).stdout.split()[1]  # the new launcher's, set again
        assert set(caps.removesuffix("=p").split(",")) == {"cap_bpf", "cap_perfmon", "cap_syslog"}
        assert root.run("dpkg", "--audit").stdout == ""
    finally:
        root.destroy()
