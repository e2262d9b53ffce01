"""Network namespaces by name: real namespaces, a real cgroup, a real Podman container."""
import grp
import os
import pwd
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import CLI, TESTS, Netns, Tracer, as_nobody_with, eventually, require_root
from telegraf_tcpdrop.netns import INIT_NET_INODE, RESCAN_SECONDS, NetnsNames

pytestmark = pytest.mark.kernel
sys.path.insert(0, str(TESTS / "peers"))
from debian_root import root_tarball  # noqa: E402
from servers import CACHE  # noqa: E402

PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]  # under this host's hard ones
IMAGE = "localhost/telegraf-tcpdrop-test-root"


def inode_of(pid):
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def test_host_and_ip_netns_names(netns):
    names = NetnsNames()
    assert os.stat("/proc/self/ns/net").st_ino == INIT_NET_INODE
    assert names.name(INIT_NET_INODE) == "host"
    assert names.name(netns.inode) == netns.name
    assert names.name(0) == "unknown"


@pytest.fixture
def unnamed():
    """A process in a network namespace of its own that no one named (unshare -n)."""
    require_root()
    proc = subprocess.Popen(["unshare", "-n", "sleep", "300"])
    assert eventually(lambda: inode_of(proc.pid) != INIT_NET_INODE)
    yield proc
    proc.kill()
    proc.wait()


def test_an_unnamed_namespace_is_its_inode_and_forgotten_when_gone(unnamed):
    clock = [0.0]
    names = NetnsNames(clock=lambda: clock[0])
    inode = inode_of(unnamed.pid)
    assert names.name(inode) == f"netns:{inode}"
    unnamed.kill()
    unnamed.wait()
    ns = Netns()  # the kernel reuses freed inodes: often this one gets it
    try:
        clock[0] += RESCAN_SECONDS
        assert names.name(ns.inode) == ns.name
        assert names.name(inode) == (ns.name if ns.inode == inode else f"netns:{inode}")
    finally:
        ns.delete()


def test_a_systemd_unit_from_its_cgroup(unnamed):
    """systemd is not PID 1 here: a real cgroup, made with its layout, stands in."""
    unit = Path("/sys/fs/cgroup/unified/system.slice/tcpdrop-test.service")
    if not unit.parent.parent.is_dir():
        unit = Path("/sys/fs/cgroup/system.slice/tcpdrop-test.service")
    unit.mkdir(parents=True, exist_ok=True)
    try:
        (unit / "cgroup.procs").write_text(str(unnamed.pid))
        assert "/system.slice/tcpdrop-test.service" in Path(f"/proc/{unnamed.pid}/cgroup").read_text()
        assert NetnsNames().name(inode_of(unnamed.pid)) == "tcpdrop-test.service"
    finally:
        unnamed.kill()
        unnamed.wait()
        eventually(lambda: not (unit / "cgroup.procs").read_text().strip())
        unit.rmdir()


def test_a_kubernetes_pod_from_its_cgroup_and_the_kubelets_pod_directory(unnamed, tmp_path):
    """No kubelet runs here: a real cgroup in the kubelet's systemd layout, and
    its pod log directory (<namespace>_<name>_<uid>), stand in."""
    uid, container_id = "0f9d1c2e-3b4a-4c5d-8e6f-7a8b9c0d1e2f", "ab" * 32
    slice_ = Path("/sys/fs/cgroup/unified/kubepods.slice")
    if not slice_.parent.is_dir():
        slice_ = Path("/sys/fs/cgroup/kubepods.slice")
    scope = (slice_ / "kubepods-burstable.slice" / f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
             / f"cri-containerd-{container_id}.scope")
    scope.mkdir(parents=True)
    (tmp_path / f"shop_checkout-7d9f_{uid}").mkdir()
    try:
        (scope / "cgroup.procs").write_text(str(unnamed.pid))
        assert NetnsNames(pods=tmp_path).name(inode_of(unnamed.pid)) == "shop/checkout-7d9f"
    finally:
        unnamed.kill()
        unnamed.wait()
        eventually(lambda: not (scope / "cgroup.procs").read_text().strip())
        for cgroup in (scope, *scope.parents):
            if cgroup == slice_.parent:
                break
            cgroup.rmdir()


def test_a_look_that_hangs_holds_no_caller_past_its_bound(unnamed, tmp_path):
    """A look blocked on a file it reads (here Podman's state, a FIFO no one
    writes to yet, as a command line's read waits on a process stuck in a
    hung fault): name() answers within its bound with the name known so
    far, and the look brings the name when it ends."""
    container_id = "cd" * 32
    scope = Path("/sys/fs/cgroup/unified/machine.slice") / f"libpod-{container_id}.scope"
    if not scope.parent.parent.is_dir():
        scope = Path("/sys/fs/cgroup/machine.slice") / f"libpod-{container_id}.scope"
    scope.mkdir(parents=True)
    state = tmp_path / "containers.json"
    os.mkfifo(state)
    try:
        (scope / "cgroup.procs").write_text(str(unnamed.pid))
        names, inode = NetnsNames(podman=str(state)), inode_of(unnamed.pid)
        answers = []
        for _ in range(2):  # the look that starts, then the same look under way
            caller = threading.Thread(target=lambda: answers.append(names.name(inode)), daemon=True)
            started = time.monotonic()
            caller.start()
            caller.join(timeout=2)
            assert not caller.is_alive() and time.monotonic() - started < 0.5
        assert answers == [f"netns:{inode}"] * 2 and names.scans == 0
        with open(state, "w") as f:  # the state answers: the look ends
            f.write("[]")
        assert eventually(lambda: names.scans == 1)
        assert names.known_name(inode) == f"podman:{container_id[:12]}"
    finally:
        unnamed.kill()
        unnamed.wait()
        eventually(lambda: not (scope / "cgroup.procs").read_text().strip())
        scope.rmdir()


@pytest.fixture(scope="module")
def docker():
    """Docker from Debian (make test installs it): its daemon, started here
    without touching the host's firewall or bridges if none runs, and an
    image made from the Debian root the package tests use."""
    require_root()
    daemon = None
    if subprocess.run(["docker", "info"], capture_output=True).returncode:
        daemon = subprocess.Popen(["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert eventually(lambda: subprocess.run(["docker", "info"], capture_output=True).returncode == 0,
                          timeout=60), "dockerd did not start"
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        subprocess.run(["docker", "import", str(root_tarball(CACHE)), IMAGE], check=True,
                       capture_output=True)
    yield
    if daemon:
        daemon.terminate()
        daemon.wait(timeout=60)


def test_a_docker_containers_name(docker):
    name = "tcpdrop-docker-web"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    subprocess.run(["docker", "run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "300"],
                   check=True, capture_output=True)
    try:
        pid = int(subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", name], check=True,
                                 capture_output=True, text=True).stdout)
        assert NetnsNames().name(inode_of(pid)) == name
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@pytest.fixture(scope="module")
def podman():
    """Podman from Debian (make test installs it), and an image made from the
    Debian root the package tests use."""
    require_root()
    if subprocess.run(["podman", "image", "exists", IMAGE]).returncode:
        subprocess.run(["podman", "import", "-q", str(root_tarball(CACHE)), IMAGE], check=True,
                       capture_output=True)
    return PODMAN


@pytest.fixture
def container(podman):
    """start(name, *options): a container running sleep, removed after the test; its PID."""
    started = []

    def start(name, *options):
        subprocess.run([*podman, "rm", "-f", name], capture_output=True)
        subprocess.run([*podman, "run", "-d", "--name", name, *LIMITS, *options, IMAGE, "sleep", "300"],
                       check=True, capture_output=True)
        started.append(name)
        return int(subprocess.run([*podman, "inspect", "-f", "{{.State.Pid}}", name], check=True,
                                  capture_output=True, text=True).stdout)
    yield start
    for name in started:
        subprocess.run([*podman, "rm", "-f", "-t", "0", name], capture_output=True)


@pytest.mark.parametrize("network", ["none", "bridge"])
def test_a_podman_containers_name(container, network):
    """By its name, not by the /run/netns/netns-<uuid> Podman made for its bridge."""
    pid = container(f"tcpdrop-web-{network}", "--network", network)
    assert NetnsNames().name(inode_of(pid)) == f"tcpdrop-web-{network}"


def test_metrics_split_drops_by_namespace(metrics, container):
    """The issue's example: SYNs to a closed port in two `ip netns` namespaces,
    a container and the host come out as one series each, by name."""
    spaces = [Netns(), Netns()]
    pid = container("tcpdrop-web")
    try:
        m = metrics("--interval", "200ms", "--port", "7601")
        spaces[0].traffic("raw-syns", 7601, 7, 40000)
        spaces[1].traffic("raw-syns", 7601, 11, 40000)
        inside(pid, "raw-syns", 7601, 3, 40000)
        subprocess.run([sys.executable, str(TESTS / "traffic.py"), "raw-syns", "7601", "5", "40000"],
                       check=True)
        expected = {spaces[0].name: 7, spaces[1].name: 11, "tcpdrop-web": 3, "host": 5}
        for name, count in expected.items():
            assert m.wait_total(count, netns=name, flags="SYN") == count, name
        assert m.stop() == 0
        assert {t["netns"] for meas, t, f, _ in m.points if meas == "tcpdrop"} == set(expected)
    finally:
        for ns in spaces:
            ns.delete()


def docker_container(name):
    """A Docker container running sleep (removed by the caller): (pid, id)."""
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    subprocess.run(["docker", "run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "300"],
                   check=True, capture_output=True)
    pid, container_id = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}} {{.Id}}", name], check=True,
                                       capture_output=True, text=True).stdout.split()
    return int(pid), container_id


def inside(pid, kind, *args):
    """tests/traffic.py KIND ARGS in the network namespace of pid."""
    subprocess.run(["nsenter", "-t", str(pid), "-n", sys.executable, str(TESTS / "traffic.py"), kind,
                    *map(str, args)], check=True, capture_output=True)


def listen_drops_of(pid):
    """TcpExtListenDrops of pid's network namespace, as the kernel counts it."""
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "nstat", "-asz", "TcpExtListenDrops"],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[-2])


@pytest.mark.parametrize("in_docker_group", [False, True])
def test_as_telegrafs_user_containers_are_named_and_counted(metrics, container, docker, in_docker_group):
    """User nobody with Telegraf's three capabilities may not read
    /proc/PID/ns/net of root's processes, nor the runtimes' files: the
    probe's task iterator finds the processes, their cgroups and Podman's
    conmon the names. Docker's names are the docker group's (its API), as
    Telegraf's inputs.docker asks for; without it a container is its id."""
    podman_pid = container("tcpdrop-web-user", "--network", "none")
    docker_pid, docker_id = docker_container("tcpdrop-docker-user")
    try:
        nobody = as_nobody_with("bpf", "perfmon", "syslog")
        if in_docker_group:
            nobody[nobody.index("--clear-groups")] = f"--groups={grp.getgrnam('docker').gr_gid}"
        assert subprocess.run([*nobody, "readlink", f"/proc/{podman_pid}/ns/net"],
                              capture_output=True).returncode != 0
        m = metrics("--interval", "200ms", "--netns-counters", prefix=nobody)
        inside(podman_pid, "raw-syns", 7604, 4, 40000)
        inside(docker_pid, "raw-syns", 7604, 6, 40000)
        inside(docker_pid, "listen-full", "127.0.0.1", 7605, 20)
        kernel = listen_drops_of(docker_pid)
        assert kernel >= 18
        docker_tag = "tcpdrop-docker-user" if in_docker_group else f"docker:{docker_id[:12]}"
        assert m.wait_total(4, netns="tcpdrop-web-user", dport="7604") == 4
        assert m.wait_total(6, netns=docker_tag, dport="7604") == 6
        assert m.wait_total(kernel, netns=docker_tag, dport="7605", state="LISTEN") == kernel
        assert m.wait_total(kernel, field="TcpExtListenDrops", measurement="tcpdrop_netstat",
                            netns=docker_tag) == kernel
        assert m.stop() == 0
        netstat = {t["netns"] for meas, t, f, _ in m.points if meas == "tcpdrop_netstat"}
        assert {"host", "tcpdrop-web-user", docker_tag} <= netstat
    finally:
        subprocess.run(["docker", "rm", "-f", "tcpdrop-docker-user"], capture_output=True)


def test_trace_names_the_namespace_and_shows_only_the_one_asked_for():
    require_root()
    shown, hidden = Netns(), Netns()
    t = Tracer("--rate-limit", "0", "--netns", shown.name)
    try:
        hidden.traffic("syn", "127.0.0.1", 7602, 40001)
        shown.traffic("syn", "127.0.0.1", 7602, 40002)
        [drop] = t.wait_for(shown, dport=7602)
        assert (drop["netns"], drop["netns_name"], drop["sport"]) == (shown.inode, shown.name, 40002)
        assert t.stop() == 0
        assert t.events_in(hidden) == [] and {e["netns_name"] for e in t.events} == {shown.name}
    finally:
        shown.delete()
        hidden.delete()


def test_each_namespaces_own_drop_counters_every_interval(metrics, netns):
    """--netns-counters: the kernel's count of refused SYNs in a namespace, as
    tcpdrop_netstat deltas beside the monitor's own count of them."""
    m = metrics("--interval", "200ms", "--port", "7603", "--netns-counters")
    netns.traffic("listen-full", "127.0.0.1", 7603, 20)
    kernel = netns.counter("TcpExtListenDrops")
    assert kernel >= 18
    assert m.wait_total(kernel, field="TcpExtListenDrops", measurement="tcpdrop_netstat",
                        netns=netns.name) == kernel
    assert m.wait_total(kernel, state="LISTEN", dport="7603", netns=netns.name) == kernel
    assert m.stop() == 0
    assert m.total("TcpExtListenDrops", "tcpdrop_netstat", netns=netns.name) == kernel
    netstat = [t["netns"] for meas, t, f, _ in m.points if meas == "tcpdrop_netstat"]
    assert "host" in netstat and netns.name in netstat


@pytest.mark.parametrize("netns_tags", ["inode", "none"])
def test_netstat_points_are_tagged_as_tcpdrops_are(metrics, netns, netns_tags):
    """--netns-tags inode: both measurements tag the inode, and join on it;
    none: neither has the tag, and tcpdrop_netstat is the host's sum."""
    m = metrics("--interval", "200ms", "--port", "7611", "--netns-counters",
                "--netns-tags", netns_tags)
    netns.traffic("listen-full", "127.0.0.1", 7611, 20)
    kernel = netns.counter("TcpExtListenDrops")
    assert kernel >= 18
    tag = {"netns": str(netns.inode)} if netns_tags == "inode" else {}
    assert m.wait_total(kernel, state="LISTEN", dport="7611", **tag) == kernel
    assert m.wait_total(kernel, field="TcpExtListenDrops", measurement="tcpdrop_netstat",
                        **tag) >= kernel
    assert m.stop() == 0
    netstat = [t for meas, t, f, _ in m.points if meas == "tcpdrop_netstat"]
    if netns_tags == "inode":
        assert m.total("TcpExtListenDrops", "tcpdrop_netstat", **tag) == kernel
        assert {str(netns.inode)} <= {t["netns"] for t in netstat}
    else:
        assert netstat and not any("netns" in t for t in netstat)
        times = [t for meas, _, _, t in m.points if meas == "tcpdrop_netstat"]
        assert len(times) == len(set(times))  # one point per interval


def test_a_namespace_named_with_any_bytes_breaks_no_command(metrics):
    """`ip netns add` takes any bytes, and its bind mount shows in the mount
    table before tracefs's (mounted again here, so its line comes after):
    every command starts, and the name is shown with U+FFFD for the byte."""
    require_root()
    raw, shown = b"tcpdrop-\xff-odd", "tcpdrop-\ufffd-odd"
    subprocess.run([b"ip", b"netns", b"add", raw], check=True)
    mounted = False
    try:
        subprocess.run([b"ip", b"netns", b"exec", raw, b"ip", b"link", b"set", b"lo", b"up"], check=True)
        mounted = not subprocess.run(["mount", "--bind", "/sys/kernel/tracing", "/sys/kernel/tracing"],
                                     check=True).returncode
        for command in (["check"], ["audit", "--for", "1s"], ["top", "--once", "--interval", "200ms"]):
            result = subprocess.run([CLI, *command], capture_output=True, text=True, timeout=60)
            assert "Traceback" not in result.stderr, result.stderr
            assert result.returncode == 0, (command, result.stdout, result.stderr)
        tracer = Tracer("--rate-limit", "0", "--netns", shown)
        m = metrics("--interval", "200ms", "--port", "7612")
        subprocess.run([b"ip", b"netns", b"exec", raw, sys.executable.encode(),
                        str(TESTS / "traffic.py").encode(), b"raw-syns", b"7612", b"3", b"40000"],
                       check=True, capture_output=True)
        assert m.wait_total(3, dport="7612", netns=shown) == 3
        assert eventually(lambda: len([e for e in tracer.events if e["dport"] == 7612]) == 3)
        assert {e["netns_name"] for e in tracer.events} == {shown}
        assert tracer.stop() == 0
    finally:
        if mounted:
            subprocess.run(["umount", "-l", "/sys/kernel/tracing"], check=True)  # the one mounted here
        subprocess.run([b"ip", b"netns", b"del", raw])


def test_readme_lists_every_counter_of_tcpdrop_netstat():
    from telegraf_tcpdrop.netstat import DROP_COUNTERS
    readme = (TESTS.parent / "README.md").read_text()
    section = readme[readme.index("- `tcpdrop_netstat`"):readme.index("### Exact")]
    assert [name for name in DROP_COUNTERS if f"`{name}`" not in section] == []


def test_a_namespace_not_found_is_looked_for_again_only_at_the_next_full_scan(unnamed):
    clock, scans = [0.0], []
    names = NetnsNames(clock=lambda: clock[0])
    names.scan = lambda real=names.scan: scans.append(clock[0]) or real()
    inode = inode_of(unnamed.pid)
    names.name(INIT_NET_INODE + 1)  # some other namespace first: a scan at 0.0
    clock[0] = 0.5
    assert names.name(inode) == f"netns:{inode}"  # new, but the last scan was 0.5 s ago
    for clock[0] in (1.5, 4.0, 6.0):
        assert names.name(inode) == f"netns:{inode}"  # scanned at 1.5, not found: not again
    assert scans == [0.0, 1.5]
    clock[0] = 1.5 + RESCAN_SECONDS
    names.name(inode)
    assert scans == [0.0, 1.5, 1.5 + RESCAN_SECONDS]


MALLORY = "tcpdrop-mallory"  # a local user, not root, not Telegraf's
HIERARCHIES = [Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified")]


@pytest.fixture
def mallory():
    """A real unprivileged user, and start(script): their shell running it,
    moved first into a cgroup subtree handed to them as systemd hands
    user@UID.service to its user (made, chowned, the process moved in;
    systemd is not PID 1 here). Each process is killed, and the subtree
    removed, after the test."""
    require_root()
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", MALLORY],
                   capture_output=True)
    uid = pwd.getpwnam(MALLORY).pw_uid
    delegated = [root / f"user.slice/user-{uid}.slice/user@{uid}.service" for root in HIERARCHIES
                 if root.is_dir()]
    for cgroup in delegated:
        cgroup.mkdir(parents=True, exist_ok=True)
        for path in (cgroup, *cgroup.iterdir()):
            os.chown(path, uid, -1)
    started = []

    def start(script):
        """Runs sh -c script as the user once in their subtree ($D: its path in each hierarchy)."""
        wait = "while ! grep -q user@ /proc/self/cgroup; do sleep 0.05; done; "
        proc = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                                 "bash", "-c", wait + script, "bash", *map(str, delegated)])
        started.append(proc)
        for cgroup in delegated:
            (cgroup / "cgroup.procs").write_text(str(proc.pid))
        return proc
    yield uid, start
    for proc in started:
        proc.kill()
        proc.wait()
    for cgroup in delegated:
        for path in [*sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)),
                     cgroup, cgroup.parent, cgroup.parent.parent]:
            eventually(lambda: not (path / "cgroup.procs").read_text().strip())
            try:
                path.rmdir()
            except OSError:  # user.slice holds others' too
                pass
    subprocess.run(["userdel", MALLORY], capture_output=True)


def forged(start, cgroup):
    """The user's process in a cgroup of theirs, `cgroup` (made in each of
    their subtrees), and in a network namespace of its own (unshare -rn: no
    root needed), lo up: its pid."""
    move = "".join(f'mkdir -p "${i}/{cgroup}" && echo $$ > "${i}/{cgroup}/cgroup.procs" && '
                   for i in range(1, len(HIERARCHIES) + 1))
    pid = start(move + "exec unshare -rn sleep 300").pid  # exec, exec: the same process
    assert eventually(lambda: f"/{cgroup}\n" in Path(f"/proc/{pid}/cgroup").read_text() and
                      inode_of(pid) != INIT_NET_INODE, timeout=10)
    subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "link", "set", "lo", "up"], check=True)
    return pid


def test_a_local_user_can_neither_rename_a_container_nor_take_its_or_a_units_name(
        metrics, container, mallory):
    """Mallory runs a process named conmon whose command line names a real
    container with a name of theirs, and two network namespaces of their own
    in cgroups of their own named as that container's and as a system
    unit's. As Telegraf's user, the monitor names the real container by its
    runtime's word, and Mallory's namespaces as Mallory's."""
    uid, start = mallory
    pid = container("tcpdrop-real", "--network", "none")
    container_id = subprocess.run([*PODMAN, "inspect", "-f", "{{.Id}}", "tcpdrop-real"], check=True,
                                  capture_output=True, text=True).stdout.strip()
    # conmon's options as Podman writes them; the script from stdin ("-")
    start(f"exec -a conmon {sys.executable} - -c {container_id} -n forged "
          "<<< 'import time; time.sleep(300)'")
    spaces = {"container": forged(start, f"libpod-{container_id}.scope"),
              "unit": forged(start, "app.slice/nginx.service")}
    assert f"user@{uid}.service/libpod-{container_id}.scope" in \
        Path(f"/proc/{spaces['container']}/cgroup").read_text()
    m = metrics("--interval", "200ms", "--port", "7613",
                prefix=as_nobody_with("bpf", "perfmon", "syslog"))
    inside(pid, "raw-syns", 7613, 2, 40000)
    inside(spaces["container"], "raw-syns", 7613, 3, 40000)
    inside(spaces["unit"], "raw-syns", 7613, 5, 40000)
    assert m.wait_total(2, netns="tcpdrop-real", dport="7613") == 2
    assert m.wait_total(3, netns=f"podman:{uid}/forged", dport="7613") == 3
    assert m.wait_total(5, netns=f"user:{uid}/nginx.service", dport="7613") == 5
    assert m.stop() == 0
    assert {t["netns"] for meas, t, f, _ in m.points if meas == "tcpdrop" and t.get("dport") == "7613"} \
        == {"tcpdrop-real", f"podman:{uid}/forged", f"user:{uid}/nginx.service"}
