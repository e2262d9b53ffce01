"""A clean Debian root (debootstrap minbase: 13 or 12) to install the .deb into, as
a user's host would: dependencies from Debian's archive, the host's kernel
(/proc, /sys and /dev are bound in), and the host's loopback network.

The mirror is this machine's own (its apt sources); the downloaded base
system is cached as a tarball, so later roots unpack without the network.
"""
import os
import shutil
import subprocess
from pathlib import Path

from kernel_vm import host_mirrors
from servers import CACHE

SUITES = ("trixie", "bookworm")  # Debian 13 and 12, the releases the package supports
# Written to by apt, dpkg and the kernel, not by a package's files.
VOLATILE = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/cache", "/var/lib/apt", "/var/lib/dpkg",
            "/var/log", "/root", "/var/lib/systemd", "/etc/ld.so.cache")


def root_tarball(workdir, suite="bookworm"):
    """The clean root as a tarball: debootstrapped once (in workdir), then cached."""
    tarball = CACHE / f"{suite}-minbase.tgz"  # debootstrap's download
    root = CACHE / f"{suite}-minbase-root.tar"  # the root it made from it
    if root.exists():
        return root
    mirror = host_mirrors()[""][0]
    workdir = Path(workdir)
    if not tarball.exists():
        work = workdir / f"debootstrap-download-{suite}"
        subprocess.run(["debootstrap", "--variant=minbase", f"--make-tarball={tarball}",
                        suite, str(work), mirror], check=True, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    made = workdir / f"debootstrap-root-{suite}"
    subprocess.run(["debootstrap", "--variant=minbase", f"--unpack-tarball={tarball}",
                    suite, str(made), mirror], check=True, capture_output=True)
    subprocess.run(["tar", "-cpf", f"{root}.part", "-C", str(made), "."], check=True)
    os.replace(f"{root}.part", root)
    subprocess.run(["rm", "-rf", "--one-file-system", str(made)], check=True)
    return root


def apt_sources(suite):
    """deb822 sources of the suite, from this machine's mirrors."""
    mirrors = host_mirrors()
    return "\n".join(f"Types: deb\nURIs: {uri}\nSuites: {suites}\nComponents: main\nSigned-By: {keyring}\n"
                     for (uri, keyring), suites in ((mirrors[""], f"{suite} {suite}-updates"),
                                                    (mirrors["-security"], f"{suite}-security")))


class DebianRoot:
    def __init__(self, path, suite="bookworm"):
        self.path, self.suite = Path(path), suite
        self.mounts = []

    def create(self):
        self.path.mkdir(parents=True)
        subprocess.run(["tar", "-xpf", str(root_tarball(self.path.parent, self.suite)), "-C",
                        str(self.path)], check=True)
        apt = self.path / "etc" / "apt"
        (apt / "sources.list.d" / "debian.sources").write_text(apt_sources(self.suite))
        (apt / "sources.list").write_text("")
        # A host's own name files (minbase has no /etc/hosts: no "localhost").
        for name in ("resolv.conf", "hosts"):
            shutil.copy(f"/etc/{name}", self.path / "etc" / name)
        # No service starts inside the root (it has no init of its own).
        policy = self.path / "usr" / "sbin" / "policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        self.mount(["-t", "proc", "proc"], "proc")
        self.mount(["--rbind", "/sys"], "sys")
        self.mount(["--rbind", "/dev"], "dev")
        return self

    def mount(self, how, where):
        target = self.path / where
        subprocess.run(["mount", *how, str(target)], check=True)
        subprocess.run(["mount", "--make-rslave", str(target)], check=True)
        self.mounts.append(target)

    ENV = {"PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LANG": "C.UTF-8", "HOME": "/root"}

    def run(self, *cmd, check=True, input=None, timeout=600):
        result = subprocess.run(["chroot", str(self.path), *cmd], capture_output=True, text=True,
                                env=self.ENV, input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def popen(self, *cmd, env=(), **kwargs):
        return subprocess.Popen(["chroot", str(self.path), *cmd], env={**self.ENV, **dict(env)},
                                **kwargs)

    def apt(self, *args):
        return self.run("apt-get", "-y", "-q", "-o", "Dpkg::Use-Pty=0", *args)

    def files(self):
        """Every file, link and directory of the root but the volatile ones."""
        found = set()
        for top, dirs, files in os.walk(self.path):
            inside = "/" + os.path.relpath(top, self.path).lstrip(".")
            dirs[:] = [d for d in dirs if os.path.join(inside, d) not in VOLATILE]
            found.update(os.path.join(inside, name) for name in dirs + files)
        return found

    def destroy(self):
        for target in reversed(self.mounts):
            subprocess.run(["umount", "-R", "-l", str(target)], check=False)
        self.mounts.clear()
        # --one-file-system: never into the host's /dev, /sys or /proc, even
        # if an unmount above had failed.
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.path)], check=False)
