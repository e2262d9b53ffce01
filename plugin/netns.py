"""Network namespaces by the names a person knows them by.

A drop's namespace comes from the kernel as an inode number; the `netns` tag
is, in this order of preference:

    host              the initial namespace
    NAME              given by `ip netns add NAME` (/run/netns/NAME)
    CONTAINER         a Docker or Podman container's name, or POD_NAMESPACE/POD_NAME
                      under Kubernetes: from the cgroup of a process in the
                      namespace and the runtime's own state (its files,
                      Docker's API, Podman's conmon's command line)
    RUNTIME:ID        a container whose name the runtime keeps from this user
                      (docker:3f2a9c1b7d4e): the 12 hex digits `docker ps` shows
    UNIT.service      a systemd unit (PrivateNetwork=), from that cgroup
    RUNTIME:UID/NAME  a rootless container of user UID (podman:1000/web), or
    RUNTIME:UID/ID    its id where its name is not found; user:UID/UNIT a
                      unit of that user's own systemd
    netns:INODE       none of these

Who made a name is the kernel's word, never the name's: a cgroup under
user@UID.service is that user's to make (systemd delegates it), so a
container, pod or unit found there is named as that user's, whatever its
path says; a conmon process's command line names a container only if its
owner is the one the container's cgroup says (root, or that user).

Names that runtimes make up for their own bind mounts (Podman's
/run/netns/netns-<uuid>, CNI's cni-<uuid>) rank below all these.

Which process is in which namespace comes from `tasks`: the probe's task
iterator, which sees every process, or else /proc/PID/ns/net, which only
the process's own user (or CAP_SYS_PTRACE) may read. A process's cgroup and
command line are open to all. Nothing is read per drop: the names are kept,
and looked for again when an inode not seen before turns up (at most once a
second) or every RESCAN_SECONDS (namespaces go, their inodes are reused, and
one not found is looked for again then).

A look reads other processes' files (a command line takes the process's
memory lock, which a process stuck in a hung FUSE or NFS fault holds): it
runs in a thread of its own, one at a time, and a caller waits for it at
most LOOK_WAIT_SECONDS, then goes on with the names known so far; the look
brings its names when it ends.
"""
import json
import os
import re
import threading
import time

from .emit import printable

INIT_NET_INODE = 0xEFFFFFF9  # PROC_NET_INIT_INO, include/linux/proc_ns.h
UNKNOWN = "unknown"  # the probe could not tell (no device, no socket): inode 0
RESCAN_SECONDS = 10.0
UNKNOWN_RESCAN_SECONDS = 1.0
LOOK_WAIT_SECONDS = 0.2  # the most a caller waits on a look, at each look

RUNTIME_MADE = re.compile(r"(netns|cni)-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")
# A container's id in its cgroup path: docker-<id>.scope, /docker/<id>,
# libpod-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, ...
CONTAINER = re.compile(r"(docker|libpod|cri-containerd|crio)[-/]([0-9a-f]{64})(\.scope)?(/|$)", re.M)
# A Kubernetes pod's uid: kubepods-besteffort-pod<uid with _>.slice, /kubepods/burstable/pod<uid>/
POD = re.compile(r"kubepods.*?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
UNIT = re.compile(r"/([^/\n]+\.service)(?=/|$)", re.M)  # the innermost: not user@1000.service
# Where a user's own cgroups start: systemd makes user@UID.service and hands it
# to UID; everything below is that user's to make and name. The first one
# counts (a user can make a "user@0.service" below their own).
DELEGATED = re.compile(r"/user@(\d+)\.service(?=/|$)")

# Where each runtime keeps its containers' names (rootful, default roots).
DOCKER_CONTAINERS = "/var/lib/docker/containers"
DOCKER_API = "/var/run/docker.sock"  # root's and the docker group's
DOCKER_API_SECONDS = 1.0  # at most this long to wait for its answer
PODMAN_CONTAINERS = "/var/lib/containers/storage/overlay-containers/containers.json"
KUBELET_PODS = "/var/log/pods"  # <namespace>_<name>_<uid>/
# The runtimes as their cgroup paths name them -> as a person does.
RUNTIMES = {"docker": "docker", "libpod": "podman", "cri-containerd": "containerd", "crio": "crio"}
# The ranks of names (lower wins) when two fit one namespace.
IP_NETNS, CONTAINER_NAME, CONTAINER_ID, UNIT_NAME, RUNTIME_MADE_NAME = range(5)


def proc_tasks(proc="/proc"):
    """[(pid, network namespace inode)] of the processes this user may see into."""
    tasks = []
    for pid in filter(str.isdigit, listdir(proc)):
        inode = inode_of(f"{proc}/{pid}/ns/net")
        if inode:
            tasks.append((int(pid), inode))
    return tasks


class NetnsNames:
    """inode -> name, kept; see the module's docstring for the order."""

    def __init__(self, tasks=proc_tasks, proc="/proc", run_netns="/run/netns", docker=DOCKER_CONTAINERS,
                 docker_api=DOCKER_API, podman=PODMAN_CONTAINERS, pods=KUBELET_PODS, clock=time.monotonic,
                 wait=LOOK_WAIT_SECONDS):
        """tasks(): [(pid, network namespace inode)], as proc_tasks."""
        self.tasks, self.proc, self.run_netns = tasks, proc, run_netns
        self.docker, self.docker_api, self.podman, self.pods = docker, docker_api, podman, pods
        self.clock, self.wait = clock, wait
        self._names = {}
        self._scanned = None  # clock() of the last scan's end
        self.scans = 0
        self._looked = threading.Condition()  # a look ended
        self._looking = False
        self._wait_until = 0.0  # time.monotonic() past which no caller waits on this look

    def name(self, inode):
        """The inode's name, looked for again first where that is due."""
        if inode in (INIT_NET_INODE, 0):
            return self.known_name(inode)
        if self.rescan_if_due(after=RESCAN_SECONDS if inode in self._names else UNKNOWN_RESCAN_SECONDS):
            # Not found even now: so named until the next full scan, not
            # looked for at every call.
            self._names.setdefault(inode, f"netns:{inode}")
        return self.known_name(inode)

    def known_name(self, inode):
        """The inode's name as last found: never looks again."""
        if inode == INIT_NET_INODE:
            return "host"
        if inode == 0:
            return UNKNOWN
        return self._names.get(inode, f"netns:{inode}")

    def rescan_if_due(self, after=RESCAN_SECONDS):
        """Looks again if `after` seconds have passed since the last look
        ended (or waits on the look under way), for at most `wait` seconds;
        whether a look ended meanwhile. Names change only when a look ends:
        `scans` counts them."""
        with self._looked:
            scans = self.scans
            if not self._looking:
                if self._scanned is not None and self.clock() - self._scanned < after:
                    return False
                self._looking = True
                self._wait_until = time.monotonic() + self.wait
                threading.Thread(target=self._look, name="netns-names", daemon=True).start()
            self._looked.wait_for(lambda: not self._looking,
                                  timeout=max(0.0, self._wait_until - time.monotonic()))
            return self.scans > scans

    def _look(self):
        names = None
        try:
            names = self.scan()
        finally:
            with self._looked:
                if names is not None:
                    self._names = names
                    self.scans += 1
                self._scanned = self.clock()  # after the look, which may take a while
                self._looking = False
                self._looked.notify_all()

    def scan(self):
        """{inode: name} of every namespace found now, each by its best name."""
        ranked = {}  # inode -> (rank, name); lower ranks win

        def offer(inode, rank, name):
            if inode not in ranked or rank < ranked[inode][0]:
                ranked[inode] = (rank, printable(name))  # any bytes: a file's, a process's

        for name in listdir(self.run_netns):
            inode = inode_of(os.path.join(self.run_netns, name))
            if inode:
                offer(inode, RUNTIME_MADE_NAME if RUNTIME_MADE.fullmatch(name) else IP_NETNS, name)
        containers = {}  # runtime state, read once a scan
        for pid, inode in self.tasks():
            if inode == INIT_NET_INODE or (inode in ranked and ranked[inode][0] <= CONTAINER_NAME):
                continue
            found = self._from_cgroup(_read_text(f"{self.proc}/{pid}/cgroup"), containers)
            if found:
                offer(inode, *found)
        return {inode: name for inode, (_, name) in ranked.items()}

    def _from_cgroup(self, cgroup, containers):
        """(rank, name) of the container or unit a process's cgroup file
        names (the best of its hierarchies' paths), or None."""
        found = [self._from_path(line.split(":", 2)[-1], containers)
                 for line in cgroup.splitlines()]
        return min(filter(None, found), default=None)

    def _from_path(self, path, containers):
        """(rank, name) from one cgroup path: system names from the part root
        made, the delegated user's own from the rest."""
        delegated = DELEGATED.search(path)
        system, owner = (path[:delegated.end()], int(delegated.group(1))) if delegated else (path, None)
        pod = POD.search(system)
        if pod:
            name = self._pod_name(pod.group(1).replace("_", "-"))
            if name:
                return CONTAINER_NAME, name
        container = CONTAINER.search(system)
        if container:
            return self._container(container, 0, containers)
        if owner is not None:
            users = path[delegated.end():]
            container = CONTAINER.search(users)
            if container:
                return self._container(container, owner, containers)
            units = UNIT.findall(users)
            if units:
                return UNIT_NAME, f"user:{owner}/{units[-1]}"
        units = UNIT.findall(system)
        if units:
            return UNIT_NAME, units[-1]
        return None

    def _container(self, match, owner, containers):
        """(rank, name) of the container of this id, run by owner (0: root):
        named as the runtime's state says where its owner keeps it."""
        runtime, container_id = match.group(1), match.group(2)
        if runtime not in containers:
            containers[runtime] = self._container_names(runtime)
        name = containers[runtime].get((owner, container_id))
        users = f"{owner}/" if owner else ""  # a rootless container: whose it is, first
        if name:
            return CONTAINER_NAME, f"{RUNTIMES[runtime]}:{users}{name}" if owner else name
        return CONTAINER_ID, f"{RUNTIMES[runtime]}:{users}{container_id[:12]}"

    def _container_names(self, runtime):
        """{(owner uid, container id): name} from the runtime's own state:
        root's files and API (owner 0), and Podman's conmon processes."""
        names = {}
        if runtime == "docker":
            from .docker_api import container_names  # only where Docker runs: see there
            names = container_names(self.docker_api, DOCKER_API_SECONDS)  # the files are root's
            for container_id in listdir(self.docker):
                config = _read_json(os.path.join(self.docker, container_id, "config.v2.json"))
                if isinstance(config, dict) and config.get("Name"):
                    names[container_id] = config["Name"].lstrip("/")
            names = {(0, container_id): name for container_id, name in names.items()}
        elif runtime == "libpod":
            names = self._conmon_names()  # rootless too; the state file is root's
            for container in _read_json(self.podman) or []:
                if isinstance(container, dict) and container.get("names"):
                    names[(0, container.get("id"))] = container["names"][0]
        return names

    def _conmon_names(self):
        """{(owner uid, container id): name} from the command lines of
        Podman's conmon processes (conmon -c ID ... -n NAME), which any user
        may read, and which any user may also write: each counts for its
        owner's containers only."""
        names = {}
        for pid in filter(str.isdigit, listdir(self.proc)):
            argv = _read_text(f"{self.proc}/{pid}/cmdline").split("\0")
            if not argv[0].endswith("conmon"):
                continue
            try:
                owner = os.stat(f"{self.proc}/{pid}").st_uid  # the kernel's word: its user's
            except OSError:
                continue
            options = {}
            for option, value in zip(argv[1:], argv[2:]):
                options.setdefault(option, value)  # the first: --exit-command-arg values follow
            container_id = options.get("-c") or options.get("--cid")
            name = options.get("-n") or options.get("--name")
            if container_id and name:
                names[(owner, container_id)] = name
        return names

    def _pod_name(self, uid):
        """POD_NAMESPACE/POD_NAME of the pod with this uid, from the kubelet's log directories."""
        for entry in listdir(self.pods):
            namespace, _, rest = entry.partition("_")
            name, _, pod_uid = rest.rpartition("_")
            if pod_uid == uid and namespace and name:
                return f"{namespace}/{name}"
        return None


def listdir(path):
    """The names in a directory; none if it cannot be read."""
    try:
        return os.listdir(path)
    except OSError:
        return []


def inode_of(path):
    """A namespace file's inode; None if it is gone, or not ours to see."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _read_text(path):
    try:
        with open(path, errors="replace") as f:  # a command line is any bytes
            return f.read()
    except OSError:
        return ""


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
