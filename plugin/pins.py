"""The probe kept in bpffs between runs of `metrics`: a reload, a crash or an
upgrade loses no drop, and counts none twice.

A pin directory (--pin-dir, the monitor's own, mode 0700) is locked by the
run that counts with it (flock, for the run's life) and holds one pinned set,
DIR/<set>/: the programs' links (which keep them attached when no process
holds them), the programs, the maps, and `state`: a map of one JSON value
saying whose build and settings the set is, and which generation's counts
were written but not yet cleared (metrics.py writes an interval, then the
probe clears what it read: a run killed between the two leaves the mark,
and the next one clears that generation instead of writing it again).

A run whose build and settings match the set's takes it over, programs and
all: they never stopped counting. Any other set (another build, other
options) is detached at the instant before this run's programs attach, and
its counts are read and written by this run, then it is removed.
"""
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import secrets
import stat
import time

from . import libbpf as lb
from .event import COUNTER_MAX, HOT_SLOTS, DropCount, DropKey, HotSlot, ProbeConfig
from .libc import LIBC

BPF_FS = "/sys/fs/bpf"  # where systemd mounts bpffs
DEFAULT_DIR = f"{BPF_FS}/telegraf-tcpdrop/metrics"
BPF_FS_MAGIC = 0xCAFE4A11
STATE_BYTES = 4096  # the state map's one value: JSON, NUL-padded
LOCK_WAIT = 10.0  # seconds a run waits for the one before it to write its last interval
LINK, PROGRAM, ITERATOR, MAP = "link_", "prog_", "iter_", "map_"  # bpffs refuses names with a dot


class PinError(Exception):
    """Why this run cannot keep its probe between runs: it counts unpinned."""


class PinBusy(Exception):
    """Another run holds the pin directory."""


def layout():
    """The maps' layout, as this build reads them: another build's counts are
    readable if its layout is this."""
    parts = [(cls.__name__, ctypes.sizeof(cls), [(name, str(kind)) for name, kind in cls._fields_])
             for cls in (DropKey, DropCount, HotSlot, ProbeConfig)]
    return hashlib.sha256(repr((parts, HOT_SLOTS, COUNTER_MAX)).encode()).hexdigest()


def fingerprint(object_path, config, options):
    """Whose a pinned set is: the probe object's bytes, the settings asked
    for (before the kernel's are added at load) and the loader's options."""
    digest = hashlib.sha256()
    with open(object_path, "rb") as f:
        digest.update(f.read())
    digest.update(bytes(config))
    digest.update(repr(options).encode())
    return digest.hexdigest()


def _fs_type(path):
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type comes first
    if LIBC.statfs(os.fsencode(path), buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


class PinnedSet:
    """One set of pinned links, programs and maps, and its state."""

    def __init__(self, path):
        self.path = path
        self._lib = lb.load()
        self._state_fd = None

    def names(self, prefix):
        return sorted(name[len(prefix):] for name in os.listdir(self.path) if name.startswith(prefix))

    def get(self, prefix, name):
        """A file descriptor of a pinned object."""
        return lb.check_int(self._lib.bpf_obj_get(os.path.join(self.path, prefix + name).encode()),
                            f"open pinned {prefix}{name}")

    def attached(self):
        return bool(self.names(LINK))

    def create_state(self):
        fd = lb.check_int(self._lib.bpf_map_create(lb.BPF_MAP_TYPE_ARRAY, b"tcpdrop_state", 4,
                                                   STATE_BYTES, 1, None), "create the state map")
        try:
            self.pin(fd, "state")
        except BaseException:
            os.close(fd)
            raise
        self._state_fd = fd

    def state(self):
        """The set's state, or None if it has none this build can read."""
        if self._state_fd is None:
            try:
                self._state_fd = self.get("", "state")
            except lb.LibbpfError:
                return None
        value, key = ctypes.create_string_buffer(STATE_BYTES), ctypes.c_uint32(0)
        if self._lib.bpf_map_lookup_elem(self._state_fd, ctypes.byref(key), value) != 0:
            return None
        try:
            state = json.loads(value.raw.rstrip(b"\0"))
        except ValueError:
            return None
        return state if isinstance(state, dict) else None

    def save(self, state):
        data = json.dumps(state, separators=(",", ":")).encode()
        if len(data) > STATE_BYTES:
            raise PinError(f"the pinned state needs {len(data)} bytes, more than {STATE_BYTES}")
        value, key = ctypes.create_string_buffer(data, STATE_BYTES), ctypes.c_uint32(0)
        lb.check_int(self._lib.bpf_map_update_elem(self._state_fd, ctypes.byref(key), value, 0),
                     "save the pinned state")

    def pin(self, fd, name):
        lb.check_int(self._lib.bpf_obj_pin(fd, os.path.join(self.path, name).encode()), f"pin {name}")

    def pin_link(self, link, name):
        lb.check_int(self._lib.bpf_link__pin(link, os.path.join(self.path, LINK + name).encode()),
                     f"pin the link of {name}")

    def detach(self):
        """Its programs stop, by the time this returns: the links' pins kept
        them attached, and the last close of a link detaches it at once
        (where a pin's removal alone leaves that to a kernel worker)."""
        links = []
        try:
            for name in self.names(LINK):
                links.append(self.get(LINK, name))
                os.unlink(os.path.join(self.path, LINK + name))
        finally:
            for fd in links:
                os.close(fd)

    def close(self):
        if self._state_fd is not None:
            os.close(self._state_fd)
        self._state_fd = None

    def remove(self):
        self.detach()
        self.close()
        for name in os.listdir(self.path):
            os.unlink(os.path.join(self.path, name))
        os.rmdir(self.path)


class PinDir:
    """The pin directory, created if missing and locked for this run."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        self._fd = None

    def open(self, wait=LOCK_WAIT):
        """Locks it; PinError if it cannot be had, PinBusy if another run holds it."""
        try:
            self._make()
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise PinError(f"{self.path}: {e.strerror}") from None
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = next((s.state() or {} for s in self.sets() if s.attached()), {}).get("pid")
                    self.close()
                    raise PinBusy(f"another `metrics`{f' (pid {holder})' if holder else ''} counts "
                                  f"with the probe pinned at {self.path}: one run per pin directory; "
                                  "give this one --pin-dir of its own") from None
                time.sleep(0.1)

    def _make(self):
        """The directory, made if missing (0700), checked if not: its own
        user's and no one else's, in bpffs."""
        parent = os.path.dirname(self.path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if _fs_type(parent) != BPF_FS_MAGIC:
            raise PinError(f"{parent} is not bpffs (mount -t bpf bpf /sys/fs/bpf, or --pin-dir "
                           "in a bpffs mount)")
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        except OSError as e:
            raise PinError(f"cannot make {self.path}: {e.strerror}") from None
        info = os.lstat(self.path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise PinError(f"{self.path} must be a directory of uid {os.geteuid()} that only it may "
                           f"use (it is uid {info.st_uid}, mode {stat.filemode(info.st_mode)}): "
                           "remove it, or give --pin-dir of its own")

    def sets(self):
        return [PinnedSet(os.path.join(self.path, name)) for name in sorted(os.listdir(self.path))
                if os.path.isdir(os.path.join(self.path, name))]

    def new_set(self):
        path = os.path.join(self.path, secrets.token_hex(8))
        os.mkdir(path, 0o700)
        return PinnedSet(path)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)  # lets go of the lock
        self._fd = None


def pinning(probe):
    """Why this host cannot keep the probe between runs, or None if it can:
    bpffs mounted at BPF_FS, and the kernel pins the links of the probe's
    hook (a tracepoint attached through a perf event cannot be, before 5.15)."""
    if _fs_type(BPF_FS) != BPF_FS_MAGIC:
        return f"bpffs is not mounted at {BPF_FS} (mount -t bpf bpf {BPF_FS})"
    pinned = PinnedSet(os.path.join(BPF_FS, f"telegraf-tcpdrop-check-{secrets.token_hex(4)}"))
    try:
        os.mkdir(pinned.path, 0o700)
    except OSError as e:  # systemd's is root's alone (0700)
        return f"this user cannot make a directory in {BPF_FS} ({e.strerror})"
    try:
        probe.pin(pinned)
    except (lb.LibbpfError, PinError) as e:
        return str(e)
    finally:
        remove_quietly(pinned)
    return None


def remove_quietly(pinned):
    """Removes a set whatever is left of it (a run killed while pinning)."""
    try:
        pinned.remove()
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise
