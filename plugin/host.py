"""What the probe needs from the host, checked before loading it.

Each check returns a short description of what it found, or raises
StartupError with one line saying what is missing and how to get it.
`telegraf-tcpdrop check` (check.py) runs them all and prints the result.
"""
import importlib.util
import os
import platform

from . import libbpf as lb
from .btf import Btf
from .errors import StartupError
from .names import DropReasons

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))  # the probe object and its source
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
TRACEFS = "/sys/kernel/tracing"
KFREE_SKB_FORMAT = f"{TRACEFS}/events/skb/kfree_skb/format"
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def probe_object():
    path = os.path.join(PACKAGE_DIR, "tcpdrop.bpf.o")
    if not os.path.isfile(path):
        raise StartupError(f"probe object {path} is missing: build it with `make probe` "
                           "(or reinstall the package)")
    return path


def privileges():
    caps = _effective_caps()
    if caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1:
        return "CAP_BPF and CAP_PERFMON"
    if caps >> CAP_SYS_ADMIN & 1:
        return "CAP_SYS_ADMIN"
    raise StartupError("not allowed to load BPF programs: run as root, or grant CAP_BPF and "
                       "CAP_PERFMON (CAP_SYS_ADMIN before Linux 5.8)")


def _effective_caps():
    with open("/proc/self/status", errors="surrogateescape") as f:  # Name: is any bytes
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def kernel_btf():
    if not os.path.exists(VMLINUX_BTF):
        raise StartupError(
            f"kernel {platform.release()} has no BTF ({VMLINUX_BTF} is missing), which the CO-RE "
            "probe needs: use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution "
            "kernels since 2020), or the bcc backend")
    return f"{VMLINUX_BTF} ({os.path.getsize(VMLINUX_BTF)} bytes)"


def bcc():
    """python3-bpfcc, found without importing it (that loads LLVM)."""
    spec = importlib.util.find_spec("bcc")
    if spec is None:
        raise StartupError("bcc's Python module is missing, which the bcc backend needs: "
                           "apt install python3-bpfcc")
    return spec.origin


def kernel_headers():
    """The running kernel's headers, where bcc looks for them."""
    release = platform.release()
    for path in (os.environ.get("BCC_KERNEL_SOURCE"), f"/lib/modules/{release}/build"):
        if path and os.path.isdir(os.path.join(path, "include")):
            return path
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return "/sys/kernel/kheaders.tar.xz"
    raise StartupError(f"no headers for kernel {release} (/lib/modules/{release}/build), which "
                       f"the bcc backend compiles against: apt install linux-headers-{release}")


def backend(requested="auto"):
    """(backend, why): CO-RE where the kernel has BTF, else bcc where it can
    compile; StartupError naming what is missing for both."""
    if requested != "auto":
        return requested, "asked for with --backend"
    try:
        kernel_btf()
        libbpf()
        return "core", "the kernel has BTF and libbpf is installed"
    except StartupError as e:
        no_core = str(e)
    try:
        bcc()
        kernel_headers()
    except StartupError as e:
        raise StartupError(f"{no_core}; {e}") from None
    return "bcc", f"not CO-RE: {no_core}"


def format_file():
    """The text of skb/kfree_skb's tracefs format file: the bcc backend reads
    the tracepoint's fields from it."""
    try:
        with open(KFREE_SKB_FORMAT, errors="surrogateescape") as f:
            return f.read()
    except OSError as e:
        raise StartupError(f"cannot read {KFREE_SKB_FORMAT} ({e.strerror}): is tracefs "
                           f"mounted? mount -t tracefs nodev {TRACEFS}") from None


def libbpf():
    try:
        return lb.load()
    except OSError:
        raise StartupError(f"{lb.LIBBPF_SONAME} not found: install it (apt install libbpf1)") from None


def tracefs_mounted():
    """Read as bytes: a mount point is any bytes anyone chose (`ip netns add`
    takes any name, and its bind mount is listed here)."""
    with open("/proc/self/mounts", "rb") as f:
        return any(line.split()[1:3] == [TRACEFS.encode(), b"tracefs"] for line in f)


def tracefs(backend="core"):
    """Whether tracefs is mounted and open to this user, and what that means.
    Mounts nothing: the monitor mounts it when it starts (startup.mount_tracefs).
    The tp_btf hook and fentry need none of it; the classic tracepoint hook,
    listen(2)'s tracepoint and the bcc backend read it when they attach."""
    mount = f"mount -t tracefs nodev {TRACEFS}"
    if not tracefs_mounted():
        if _effective_caps() >> CAP_SYS_ADMIN & 1:
            return (f"{TRACEFS} not mounted: the monitor mounts it when it starts; the hooks "
                    f"below are attached without it (to mount it now: {mount})")
        problem, fix = (f"{TRACEFS} not mounted, and this user may not mount it (no "
                        "CAP_SYS_ADMIN)"), f"as root: {mount}"
    else:
        try:
            with open(KFREE_SKB_FORMAT):
                return f"{TRACEFS} mounted"
        except OSError as e:
            problem = f"{TRACEFS} mounted, but closed to this user ({e.strerror})"
            fix = (f"to open it to this user's group: mount -o remount,gid={os.getgid()},mode=0750 "
                   f"{TRACEFS}")
    if backend == "bcc":
        raise StartupError(f"{problem}: the bcc backend reads the tracepoint's fields there; {fix}")
    return (f"{problem}: tp_btf and fentry need none of it; the classic tracepoint hook cannot "
            f"attach, and listen(2)'s tracepoint gives way to sock:inet_sock_set_state ({fix})")


def drop_reasons(lib):
    """The running kernel's names for enum skb_drop_reason (empty before 5.17)."""
    if os.path.exists(VMLINUX_BTF):
        with Btf.vmlinux(lib) as btf:
            reasons = DropReasons.from_btf(btf)
        return reasons or DropReasons({})
    try:
        return DropReasons.from_format(format_file())
    except StartupError:
        return DropReasons({})


def bpf_stats_enabled():
    """True when kernel.bpf_stats_enabled is 1: programs' run time is being measured."""
    try:
        with open("/proc/sys/kernel/bpf_stats_enabled") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def possible_cpus(path="/sys/devices/system/cpu/possible"):
    """The ids of the CPUs this kernel may ever run ("0-3,8-11": a host's may
    have gaps), in order."""
    with open(path, "rb") as f:
        ranges = f.read().decode("ascii").strip().split(",")
    ids = []
    for part in ranges:
        first, _, last = part.partition("-")
        ids += range(int(first), int(last or first) + 1)
    return ids
