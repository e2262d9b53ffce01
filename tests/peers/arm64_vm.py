"""An arm64 Debian 12 machine, emulated: qemu-system-aarch64 (TCG, software
emulation; no KVM needed) booting Debian's arm64 kernel, with a Debian 12
arm64 root of its own (the host's files are amd64 and cannot be run).

    prepare(packages) -> Machine
        Makes sure the host has what the machine needs (apt: qemu-system-arm
        debootstrap kmod e2fsprogs), downloads the newest Debian
        `linux-image-6.1.0-N-arm64` (and busybox-static for the initramfs)
        if no kernel is cached, and builds the root if none with these
        packages is cached. Needs root, and the network the first time;
        raises Arm64VmError.

    Machine.run(command, job, shares=(), timeout=900) -> (exit, output)
        Boots it (2 CPUs, 2 GiB) and runs the shell string `command` as root
        (PID 1, no init system); `exit` is its exit code (None if it never
        finished), `output` the console: the kernel's errors, the command's
        stdout and stderr. The root is a snapshot: writes are
        gone at power-off. The host directory `job` is shared read-write at
        /run/job (the command's files in and out); each host directory in
        `shares` read-only at the same path. `true` takes ~8 s. A machine
        still running after `timeout` seconds is killed and TimeoutError
        raised.

How it boots: QEMU loads the kernel and a small initramfs made here
(Debian's arm64 busybox and the kernel's own virtio, ext4 and 9p modules),
whose /init mounts the root (ext4 on virtio-blk), /run/job and the shares
(9p), the kernel's modules at /lib/modules (9p, so modprobe works: nftables,
...), and switch_roots to the job.

How the root is made, without running arm64 code on the host (no binfmt,
no qemu-user): `debootstrap --foreign --arch=arm64 --variant=minbase
--include=PACKAGES` unpacks it here, `mke2fs -d` makes it an ext4 image, and
debootstrap's second stage (dpkg configuring every package) runs in the
machine itself: ~17 min on 2 busy cores, once (cached).

Everything is cached under ${TELEGRAF_CACHE:-~/.cache/telegraf-tcpdrop}/arm64/:
apt/ (private apt state: Debian 12 arm64 from the host's mirrors),
<kernel version>/ (boot/, lib/modules/, initrd.gz), root-<hash>.img (one
per package list).
"""
import gzip
import hashlib
import re
import shutil
import tempfile
from pathlib import Path

from kernel_vm import host_mirrors, install_host_packages, ninep, run_job, sh
from servers import CACHE

HOME = CACHE / "arm64"
SUITE = "bookworm"
SERIES = "6.1"
# ipxe-qemu: the ROM of the default NIC (efi-virtio.rom), which qemu will not start without
HOST_PACKAGES = ("qemu-system-arm", "ipxe-qemu", "debootstrap", "kmod", "e2fsprogs")
# In the initramfs: what mounts the root and the shares, and the host's
# randomness (virtio-rng).
INITRD_MODULES = ("virtio_pci", "virtio_blk", "ext4", "9pnet_virtio", "9p", "virtio_rng")
ROOT_SIZE = "2G"  # sparse
QEMU = ["qemu-system-aarch64", "-machine", "virt", "-smp", "2", "-m", "2G",
        # pauth-impdef: pointer authentication with QEMU's own cheap hash
        # instead of the architected one, which costs TCG dearly
        "-cpu", "max,pauth-impdef=on",
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        "-device", "virtio-rng-pci"]
# 9p: the host's files as they are (QEMU runs as root), large messages.
NINEP = "trans=virtio,version=9p2000.L,msize=262144,cache=loose"

INIT = f"""#!/bin/busybox sh
# The initramfs's /init: modules, mounts, then the job (tests/peers/arm64_vm.py).
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {{ echo "initramfs: $* failed" > /dev/console; echo o > /proc/sysrq-trigger; sleep 60; }}
for module in $(cat /insmod.list); do insmod "/lib/$module" || fail "insmod $module"; done
arg() {{ sed -n "s/.*tcpdrop\\.$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline; }}
mount -t ext4 /dev/vda /newroot || fail "mounting the root"
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mkdir /newroot/run/job && mount -t 9p -o {NINEP} job /newroot/run/job || fail "mounting /run/job"
for share in $(arg shares | tr , ' '); do
	mkdir -p "/newroot${{share#*=}}" &&
	mount -t 9p -o {NINEP},ro "${{share%%=*}}" "/newroot${{share#*=}}" || fail "mounting $share"
done
for fs in proc sys dev; do mount --move /$fs /newroot/$fs; done
exec switch_root /newroot /bin/sh /run/job/init.sh
"""

# The job, as PID 1: its exit code in /run/job/exit, then power off.
JOB_INIT = """export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
hostname arm64
sh /run/job/command.sh < /dev/null > /dev/console 2>&1
echo $? > /run/job/exit
sync
[ -e /proc/sysrq-trigger ] || mount -t proc proc /proc  # debootstrap unmounts it
echo o > /proc/sysrq-trigger
sleep 60
"""


class Arm64VmError(Exception):
    pass


class Machine:
    def __init__(self, kernel, root):
        self.kernel, self.root = Path(kernel), Path(root)
        self.version = self.kernel.name

    def run(self, command, job, shares=(), timeout=900, snapshot=True, modules=True):
        """(exit code or None, console output) of `command`, run as root in
        the machine. snapshot=False: its writes to the root are kept;
        modules=False: no /lib/modules."""
        job = Path(job)
        (job / "exit").unlink(missing_ok=True)
        (job / "init.sh").write_text(JOB_INIT)
        (job / "command.sh").write_text(command + "\n")
        mounts = {"modules": (self.kernel / "lib" / "modules", "/lib/modules")} if modules else {}
        mounts.update({f"share{i}": (Path(path), str(path)) for i, path in enumerate(shares)})
        args = [*QEMU, "-kernel", str(self.kernel / "boot" / f"vmlinuz-{self.version}"),
                "-initrd", str(self.kernel / "initrd.gz"),
                "-append", "console=ttyAMA0 panic=-1 quiet tcpdrop.shares=" +
                ",".join(f"{tag}={guest}" for tag, (_, guest) in mounts.items()),
                "-drive", f"file={self.root},if=virtio,format=raw,cache=unsafe"
                          f"{',snapshot=on' if snapshot else ''}",
                *ninep("job", job, readonly=False)]
        for tag, (host, _) in mounts.items():
            args += ninep(tag, host, readonly=True)
        return run_job(args, job, timeout, "the arm64 machine")


def prepare(packages):
    """The machine, its root holding Debian 12's minbase and `packages` (names)."""
    install_host_packages(HOST_PACKAGES, "the arm64 machine's host packages", Arm64VmError)
    kernel = _cached_kernel() or _download_kernel()
    key = hashlib.sha256(" ".join(sorted(set(packages))).encode()).hexdigest()[:12]
    root = HOME / f"root-{key}.img"
    if not root.exists():
        _make_root(sorted(set(packages)), kernel, root)
    return Machine(kernel, root)


def _sh(cmd, what, **kwargs):
    return sh(cmd, what, Arm64VmError, **kwargs)


def _apt():
    """apt-get/apt-cache options for Debian 12 arm64: a private sources list,
    package lists and cache (the host's apt and dpkg are left alone)."""
    state = HOME / "apt"
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    mirrors = host_mirrors()
    (state / "sources.list").write_text("".join(
        f"deb [arch=arm64 signed-by={keyring}] {uri} {SUITE}{suffix} main\n"
        for suffix, (uri, keyring) in (("", mirrors[""]), ("-updates", mirrors[""]),
                                       ("-security", mirrors["-security"]))))
    return ["-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
            "-o", f"Dir::Etc::SourceList={state / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={state / 'lists'}",
            "-o", f"Dir::Cache={state / 'cache'}",
            "-o", "Dir::State::status=/dev/null"]


def _abi(version):
    """6.1.0-57-arm64 -> 57"""
    return int(version.split("-")[1])


def _cached_kernel():
    found = [p for p in HOME.glob(f"{SERIES}.0-*-arm64") if (p / "initrd.gz").exists()]
    return max(found, key=lambda p: _abi(p.name), default=None)


def _download_kernel():
    """The newest linux-image-6.1.0-N-arm64: unpacked, depmod'ed, with an initramfs."""
    apt = _apt()
    _sh(["apt-get", "-q", *apt, "update"], "apt-get update (arm64)")
    pattern = rf"^linux-image-{re.escape(SERIES)}\.0-[0-9]+-arm64$"
    names = _sh(["apt-cache", *apt, "search", "--names-only", pattern], "apt-cache search")
    versions = [line.split()[0].removeprefix("linux-image-") for line in names.splitlines()]
    if not versions:
        raise Arm64VmError(f"no package matches {pattern} in Debian 12 arm64")
    version = max(versions, key=_abi)
    HOME.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=HOME, prefix=".download-") as tmp:
        tmp = Path(tmp)
        _sh(["apt-get", "-q", *apt, "download", f"linux-image-{version}", "busybox-static"],
            f"downloading linux-image-{version} busybox-static (arm64)", cwd=tmp)
        tree = tmp / "tree"
        for deb in tmp.glob("*.deb"):
            _sh(["dpkg-deb", "-x", str(deb), str(tree)], f"unpacking {deb.name}")
        staged = tmp / version
        (staged / "lib" / "modules").mkdir(parents=True)
        (tree / "boot").rename(staged / "boot")
        modules = next(m for m in (tree / "lib" / "modules" / version,
                                   tree / "usr" / "lib" / "modules" / version) if m.is_dir())
        modules.rename(staged / "lib" / "modules" / version)
        _sh(["depmod", "-b", str(staged), version], "depmod")
        busybox = next(b for b in (tree / "bin" / "busybox", tree / "usr" / "bin" / "busybox")
                       if b.exists())
        _initrd(staged, version, busybox)
        target = HOME / version
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)  # complete or absent
    return target


def _initrd(kernel, version, busybox):
    """initrd.gz: busybox, the modules INIT needs (in load order) and INIT."""
    listing = _sh(["modprobe", "-d", str(kernel), "-S", version, "--show-depends", "-a",
                   *INITRD_MODULES], "modprobe --show-depends")
    paths = list(dict.fromkeys(line.split()[1] for line in listing.splitlines()
                               if line.startswith("insmod ")))
    files = [("bin", None, 0o755), ("lib", None, 0o755),
             ("bin/busybox", busybox.read_bytes(), 0o755), ("init", INIT.encode(), 0o755),
             ("insmod.list", "".join(Path(p).name + "\n" for p in paths).encode(), 0o644)]
    files += [(f"lib/{Path(p).name}", Path(p).read_bytes(), 0o644) for p in paths]
    (kernel / "initrd.gz").write_bytes(gzip.compress(_cpio(files), compresslevel=6, mtime=0))


def _cpio(files):
    """A cpio archive (newc, as the kernel unpacks an initramfs) of
    (name, data or None for a directory, mode)."""
    out = bytearray()

    def entry(ino, name, mode, data):
        name = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + name)
        out.extend(b"\0" * (-len(out) % 4) + data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, data, mode) in enumerate(files, 1):
        entry(ino, name, (0o040000 if data is None else 0o100000) | mode, data or b"")
    entry(0, "TRAILER!!!", 0, b"")
    return bytes(out)


def _make_root(packages, kernel, image):
    """debootstrap's first stage here, an ext4 image of it, its second stage
    in the machine; image appears only when all went well."""
    with tempfile.TemporaryDirectory(dir=HOME, prefix=".root-") as tmp:
        tree = Path(tmp) / "tree"
        _sh(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
             f"--include={','.join(packages)}", SUITE, str(tree), host_mirrors()[""][0]],
            "debootstrap --foreign (arm64)")
        # In a container debootstrap links proc to the host's /proc: the
        # machine mounts its own there.
        if (tree / "proc").is_symlink():
            (tree / "proc").unlink()
            (tree / "proc").mkdir()
        part = Path(tmp) / "root.img"
        _sh(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", str(tree), str(part), ROOT_SIZE],
            "mke2fs")
        shutil.rmtree(tree)
        job = Path(tmp) / "job"
        job.mkdir()
        code, output = Machine(kernel, part).run(
            "/debootstrap/debootstrap --second-stage && apt-get clean", job, timeout=3600,
            snapshot=False, modules=False)
        if code != 0:
            raise Arm64VmError(f"debootstrap --second-stage in the arm64 machine failed "
                               f"({code}):\n{output[-3000:]}")
        part.rename(image)
