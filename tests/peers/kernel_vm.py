"""Other Linux kernels to run the project on: Debian's 6.1 and 5.10, booted
under QEMU (software emulation, TCG: no /dev/kvm) with virtme-ng.

    prepare(kernel) -> Path    kernel "6.1" or "5.10"; makes sure the host has
        what a VM needs (apt: qemu-system-x86 busybox-static kmod udev, and
        virtme-ng in a venv of its own), downloads the newest Debian
        `linux-image-<kernel>.0-N-amd64` (generic flavour: the cloud one has
        no 9p) and its `linux-headers-*` if they are not cached, and returns
        its directory (boot/vmlinuz-*, lib/modules/* depmod'ed, with build/
        and source/ linked to the headers in usr/src/, where bcc looks). 6.1 comes from this machine's own apt
        sources (bookworm); 5.10 from bullseye and bullseye-security on the
        same mirrors, through a private apt list and state (the host's apt
        is left alone). Needs root and the network; raises KernelVmError.

    run(kernel, command, timeout=600, outdir=None, smp="2") -> (exit_code, output)
        Boots that kernel (the newest cached one; prepare()s it if none is)
        with 2 CPUs (qemu's -smp: smp) and 2 GiB, and runs the shell string `command` as root
        inside. The host's / is the guest's, read-only over 9p (/tmp, /var,
        /etc... are throwaway overlays); `outdir` (default CACHE/vm-out) is
        shared read-write at the same path. output is stdout and stderr
        together. `true` takes ~13 s on 6.1 and ~19 s on 5.10 (boot and
        power-off), and a Python start is several times slower on 5.10; a
        VM still running after `timeout` seconds is killed and TimeoutError
        raised.

Everything is cached under ${TELEGRAF_CACHE:-~/.cache/telegraf-tcpdrop}:
kernels/<version>/, virtme-ng-venv/, apt-bullseye/ (the private apt state).
"""
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from servers import CACHE

KERNELS = CACHE / "kernels"
VENV = CACHE / "virtme-ng-venv"
VIRTME_NG = "virtme-ng==1.42"
HOST_PACKAGES = ("qemu-system-x86", "busybox-static", "kmod", "udev")
# Debian release per kernel series; None: this machine's own apt sources.
RELEASES = {"6.12": "trixie", "6.1": None, "5.10": "bullseye"}
# Debian 13's kernel writes the MSI-X table of a virtio device in a way
# Debian 12's QEMU (7.2) aborts on (msix_table_mmio_write: Assertion `addr +
# size <= ...'): legacy interrupts there.
APPEND = {"6.12": ["pci=nomsi"]}
# Modules udev's coldplug would load in the guest for nothing (~6 s under TCG).
BLACKLIST = ("kvm_amd kvm_intel kvm ccp crct10dif_pclmul crc32_pclmul crc32c_intel "
             "ghash_clmulni_intel sha512_ssse3 sha256_ssse3 sha1_ssse3 sr_mod ahci iTCO_wdt "
             "intel_pmc_bxt aesni_intel psmouse evdev i2c_i801 lpc_ich serio_raw pcspkr i6300esb "
             "qemu_fw_cfg button sg powernow_k8 acpi_cpufreq").split()


class KernelVmError(Exception):
    pass


def prepare(kernel):
    """The directory of the newest Debian kernel of this series, made ready."""
    release = _release(kernel)
    install_host_packages(HOST_PACKAGES, "the VM's host packages")
    _virtme_ng()
    apt = _apt_options(release)
    sh(["apt-get", "-q", *apt, "update"], "apt-get update")
    version = _newest(kernel, apt)
    root = KERNELS / version
    if not (root / "lib" / "modules" / version / "build").exists():
        _download(version, apt, root)
    return root


def run(kernel, command, timeout=600, outdir=None, smp="2"):
    """(exit code, output) of the shell string `command`, run as root in a VM;
    smp: qemu's -smp ("16": 16 CPUs; under TCG 16 is the most a guest boots with)."""
    root = _cached(kernel) or prepare(kernel)
    version = root.name
    outdir = Path(outdir or CACHE / "vm-out")
    outdir.mkdir(parents=True, exist_ok=True)
    args = [str(VENV / "bin" / "vng"), "--run", str(root / "boot" / f"vmlinuz-{version}"),
            "--disable-kvm", "--force-9p", "--memory", "2G", "--cpus", smp,
            "--append", " ".join(["modprobe.blacklist=" + ",".join(BLACKLIST), *APPEND.get(kernel, [])]),
            f"--rwdir={outdir}", "--exec", command]
    env = {**os.environ, "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    code, output = run_machine(args, timeout, f"VM with kernel {version}", env=env)
    if code == 255:  # also vng's code for a guest that never reported one
        output += (f"\n(exit 255: the command's, or the VM with kernel {version} ended before"
                   " the command did: a kernel panic, or out of memory)")
    return code, output


def run_machine(args, timeout, what, env=None):
    """(exit code, console) of a machine's qemu (or vng) command, killed with
    all it started if still running after timeout seconds (TimeoutError)."""
    # The output goes to a pipe: qemu reopens its stdout, which clobbers a plain file.
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise TimeoutError(f"{what} still running after {timeout} s") from None
    return proc.returncode, output.decode(errors="replace")


def run_job(args, job, timeout, what):
    """(the job's exit code from job/exit, or None if it never finished;
    the console) of a machine that runs a job and powers off."""
    _, console = run_machine(args, timeout, what)
    exit_file = Path(job) / "exit"
    return (int(exit_file.read_text()) if exit_file.exists() else None), console


def ninep(tag, path, readonly):
    """qemu's arguments sharing a host directory with the guest over 9p."""
    return ["-fsdev", f"local,id={tag},path={path},security_model=passthrough"
                      f"{',readonly=on' if readonly else ''}",
            "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]


def _release(kernel):
    if kernel not in RELEASES:
        raise KernelVmError(f"unknown kernel {kernel!r}: one of {', '.join(RELEASES)}")
    return RELEASES[kernel]


def _cached(kernel):
    """The newest prepared kernel of this series, or None."""
    _release(kernel)
    found = [p for p in KERNELS.glob(f"{kernel}.*-amd64") if re.fullmatch(_versions(kernel), p.name)
             and (p / "lib" / "modules" / p.name / "build").exists()]
    return max(found, key=lambda p: _abi(p.name), default=None) if VENV.exists() else None


def _versions(kernel):
    """The kernel versions of a series, as Debian names them: 6.1.0-56-amd64
    (Debian 12, 11), 6.12.48+deb13-amd64 (Debian 13)."""
    return rf"{re.escape(kernel)}(\.0-[0-9]+|\.[0-9]+\+deb[0-9]+)-amd64"


def _abi(version):
    """6.1.0-56-amd64 -> (6, 1, 0, 56), 6.12.48+deb13-amd64 -> (6, 12, 48, 13): newer is greater."""
    return tuple(int(n) for n in re.findall(r"[0-9]+", version))


def sh(cmd, what, error=KernelVmError, **kwargs):
    """cmd's stdout; error(what failed, and the tail of its output) if it fails."""
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise error(f"{what} failed ({result.returncode}): {' '.join(map(str, cmd))}\n"
                    f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout



def install_host_packages(packages, what, error=KernelVmError):
    """apt-get install what is missing; /dev/kvm's owner and mode as they were."""
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}\n", *packages],
                            capture_output=True, text=True)
    if status.returncode == 0 and status.stdout.count("install ok installed") == len(packages):
        return
    kvm = os.stat("/dev/kvm") if os.path.exists("/dev/kvm") else None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh(["apt-get", "update", "-q"], "apt-get update", error, env=env)
    sh(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
       f"installing {what}", error, env=env)
    if kvm:  # udev's postinst re-owns and re-chmods /dev/kvm
        os.chown("/dev/kvm", kvm.st_uid, kvm.st_gid)
        os.chmod("/dev/kvm", kvm.st_mode & 0o7777)


def _virtme_ng():
    if (VENV / "bin" / "vng").exists():
        return
    shutil.rmtree(VENV, ignore_errors=True)
    sh(["python3", "-m", "venv", str(VENV)], "making the virtme-ng venv")
    sh([str(VENV / "bin" / "pip"), "install", "-q", VIRTME_NG], f"pip install {VIRTME_NG}")


def _apt_options(release):
    """apt-get/apt-cache options: none for the host's own sources, else a
    private sources list, package lists and cache for `release`."""
    if release is None:
        return []
    state = CACHE / f"apt-{release}"
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "sources.list").write_text("".join(
        f"deb [signed-by={keyring}] {uri} {release}{suffix} main\n"
        for suffix, (uri, keyring) in host_mirrors().items()))
    return ["-o", f"Dir::Etc::SourceList={state / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={state / 'lists'}",
            "-o", f"Dir::Cache={state / 'cache'}"]


def host_mirrors():
    """{"": (debian URI, keyring), "-security": (debian-security URI, keyring)}
    from this machine's apt sources (deb822 or one-line)."""
    mirrors = {}
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        for stanza in re.split(r"\n\s*\n", deb822.read_text()):
            fields = dict(re.findall(r"^([\w-]+):[ \t]*(.*)$", stanza, re.M))
            if "deb" not in fields.get("Types", "").split() or "URIs" not in fields:
                continue
            kind = "-security" if "-security" in fields.get("Suites", "") else ""
            mirrors.setdefault(kind, (fields["URIs"].split()[0], fields.get("Signed-By", keyring)))
    else:
        text = Path("/etc/apt/sources.list").read_text()
        for uri, suite in re.findall(r"^deb(?:\s+\[[^]]*\])?\s+(\S+)\s+(\S+)", text, re.M):
            mirrors.setdefault("-security" if "-security" in suite else "", (uri, keyring))
    if set(mirrors) != {"", "-security"}:
        raise KernelVmError("this machine's apt sources name no Debian archive and security "
                            f"archive (found {mirrors})")
    return mirrors


def _newest(kernel, apt):
    """The newest generic linux-image-<version>-amd64 of the series apt knows, as a version."""
    pattern = rf"^linux-image-{_versions(kernel)}$"
    names = sh(["apt-cache", *apt, "search", "--names-only", pattern], "apt-cache search")
    versions = [line.split()[0].removeprefix("linux-image-") for line in names.splitlines()]
    if not versions:
        raise KernelVmError(f"no package matches {pattern} in "
                            f"{_release(kernel) or 'this machine'}'s apt sources")
    return max(versions, key=_abi)


def _download(version, apt, root):
    """apt-get download + dpkg-deb -x the image and the headers into root,
    then depmod."""
    KERNELS.mkdir(parents=True, exist_ok=True)
    common = version.removesuffix("-amd64") + "-common"
    packages = [f"linux-image-{version}", f"linux-headers-{version}", f"linux-headers-{common}"]
    with tempfile.TemporaryDirectory(dir=KERNELS, prefix=".download-") as tmp:
        sh(["apt-get", "-q", *apt, "download", *packages], f"downloading {' '.join(packages)}",
            cwd=tmp)
        tree = Path(tmp) / "tree"
        for deb in Path(tmp).glob("*.deb"):
            sh(["dpkg-deb", "-x", str(deb), str(tree)], f"unpacking {deb.name}")
        modules = next((m for m in (tree / "lib" / "modules" / version,
                                    tree / "usr" / "lib" / "modules" / version) if m.is_dir()), None)
        if modules is None:
            raise KernelVmError(f"linux-image-{version} has no lib/modules/{version}")
        staged = Path(tmp) / "kernel"
        (staged / "lib" / "modules").mkdir(parents=True)
        (tree / "boot").rename(staged / "boot")
        (tree / "usr" / "src").rename(staged / "src")
        modules.rename(staged / "lib" / "modules" / version)
        sh(["depmod", "-b", str(staged), version], "depmod")
        # Where bcc finds the headers: absolute links, valid in the guest,
        # which sees the host's files at the same paths.
        for link, headers in (("build", version), ("source", common)):
            target = staged / "lib" / "modules" / version / link
            target.unlink(missing_ok=True)
            target.symlink_to(root / "src" / f"linux-headers-{headers}")
        shutil.rmtree(root, ignore_errors=True)
        staged.rename(root)  # complete or absent
