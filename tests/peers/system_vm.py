"""A whole Debian 13 system, emulated: qemu-system-x86_64 (TCG) booting
Debian 13's own kernel and initramfs from a Debian 13 root of its own, with
systemd as PID 1 — the monitored host as users run it.

    prepare(packages) -> Machine
        Builds the root if none with these packages is cached: debootstrap
        (minbase, Debian 13, from this machine's mirrors) with systemd,
        Debian's kernel and `packages`, then an ext4 image of it. Needs root,
        and the network the first time (~4 min); raises SystemVmError.

    Machine.run(command, job, shares=(), timeout=1200) -> (exit, console)
        Boots it (2 CPUs, 2 GiB) into multi-user.target, then runs the shell
        string `command` as root from a unit of its own (tcpdrop-job.service,
        after multi-user.target), and powers it off. `exit` is its exit code
        (None if it never finished); its stdout and stderr are in
        job/output; `console` is the kernel's and systemd's. The root is a
        snapshot: writes are gone at power-off. The host directory `job` is
        shared read-write at /run/job, each directory in `shares` read-only
        at its own path (9p, mounted by systemd: systemd.mount-extra=).

Cached under ${TELEGRAF_CACHE:-~/.cache/telegraf-tcpdrop}/system-vm/:
root-<hash>.img, and the kernel and initramfs it boots (boot-<hash>/).
"""
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from kernel_vm import APPEND, host_mirrors, install_host_packages, ninep, run_job, sh
from servers import CACHE

HOME = CACHE / "system-vm"
SUITE = "trixie"
# ipxe-qemu: the ROM of the default NIC (efi-virtio.rom), which qemu will not start without
HOST_PACKAGES = ("qemu-system-x86", "ipxe-qemu", "debootstrap", "e2fsprogs")
SYSTEM = ("systemd-sysv", "udev", "dbus", "linux-image-amd64", "kmod", "iproute2", "procps",
          "python3")
ROOT_SIZE = "4G"  # sparse
QEMU = ["qemu-system-x86_64", "-machine", "q35", "-smp", "2", "-m", "2G", "-display", "none",
        "-serial", "stdio", "-monitor", "none", "-no-reboot", "-device", "virtio-rng-pci"]
NINEP = "trans=virtio,version=9p2000.L,msize=262144,cache=loose"
# The job's unit, and the 9p modules loaded before the mounts need them.
JOB_UNIT = """[Unit]
Description=telegraf-tcpdrop's system test job
After=multi-user.target
RequiresMountsFor=/run/job

[Service]
Type=oneshot
Environment=PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root
# Then off at once: the root is a snapshot, nothing in it is worth a shutdown.
ExecStart=/bin/sh -c 'sh /run/job/command.sh > /run/job/output 2>&1 < /dev/null; echo $? > /run/job/exit; sync; echo o > /proc/sysrq-trigger'

[Install]
WantedBy=multi-user.target
"""


class SystemVmError(Exception):
    pass


class Machine:
    def __init__(self, root, boot):
        self.root, self.boot = Path(root), Path(boot)

    def run(self, command, job, shares=(), timeout=1200):
        job = Path(job)
        for name in ("exit", "output"):
            (job / name).unlink(missing_ok=True)
        (job / "command.sh").write_text(command + "\n")
        mounts = {"job": (job, "/run/job", False)}
        mounts.update({f"share{i}": (Path(path), str(path), True) for i, path in enumerate(shares)})
        append = ["root=/dev/vda", "rw", "console=ttyS0", "panic=-1", "quiet", *APPEND["6.12"]]
        append += [f"systemd.mount-extra={tag}:{guest}:9p:{NINEP}{',ro' if readonly else ''}"
                   for tag, (_, guest, readonly) in mounts.items()]
        args = [*QEMU, "-kernel", str(self.boot / "vmlinuz"), "-initrd", str(self.boot / "initrd.img"),
                "-append", " ".join(append),
                "-drive", f"file={self.root},if=virtio,format=raw,cache=unsafe,snapshot=on"]
        for tag, (host, _, readonly) in mounts.items():
            args += ninep(tag, host, readonly)
        return run_job(args, job, timeout, "the Debian 13 machine")


def prepare(packages):
    """The machine, its root holding Debian 13 with systemd and `packages` (names)."""
    install_host_packages(HOST_PACKAGES, "the Debian 13 machine's host packages", SystemVmError)
    wanted = sorted(set(SYSTEM) | set(packages))
    key = hashlib.sha256((JOB_UNIT + " ".join(wanted)).encode()).hexdigest()[:12]
    root, boot = HOME / f"root-{key}.img", HOME / f"boot-{key}"
    if not root.exists():
        _make_root(wanted, root, boot)
    return Machine(root, boot)


def _make_root(packages, image, boot):
    HOME.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=HOME, prefix=".root-") as tmp:
        tree = Path(tmp) / "tree"
        _sh(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(tree),
             host_mirrors()[""][0]], "debootstrap (Debian 13)", timeout=3600)
        (tree / "etc" / "hostname").write_text("debian13\n")
        (tree / "etc" / "modules-load.d" / "9p.conf").write_text("9pnet_virtio\n9p\n")
        unit = tree / "etc" / "systemd" / "system" / "tcpdrop-job.service"
        unit.write_text(JOB_UNIT)
        wants = tree / "etc" / "systemd" / "system" / "multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / "tcpdrop-job.service").symlink_to("/etc/systemd/system/tcpdrop-job.service")
        # No other service should wait for a network this machine has none of.
        for name in ("apt-daily.timer", "apt-daily-upgrade.timer"):
            (tree / "etc" / "systemd" / "system" / name).symlink_to("/dev/null")
        staged = Path(tmp) / "boot"
        staged.mkdir()
        shutil.copy(max((tree / "boot").glob("vmlinuz-*")), staged / "vmlinuz")
        shutil.copy(max((tree / "boot").glob("initrd.img-*")), staged / "initrd.img")
        part = Path(tmp) / "root.img"
        _sh(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", str(tree), str(part), ROOT_SIZE], "mke2fs")
        shutil.rmtree(boot, ignore_errors=True)
        staged.rename(boot)
        os.replace(part, image)  # complete or absent


def _sh(cmd, what, **kwargs):
    return sh(cmd, what, SystemVmError, **kwargs)
