"""What `make run` installs on a host that only wants the monitor."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]
# The tests' peers: Debian starts an InfluxDB 1.6 without authentication and
# Docker rewrites the firewall, on a host that only asked for `trace`.
PEERS = {"docker.io", "podman", "runc", "influxdb", "victoria-metrics", "tshark", "tcpdump",
         "nftables", "debootstrap", "python3-pytest"}


def installs(target):
    """The Debian packages `make TARGET` would install, every one taken as missing."""
    # -n: print, run nothing; -W: as if pyproject.toml had changed, so the venv's rules run
    out = subprocess.run(["make", "-n", "-W", "pyproject.toml", "-C", str(ROOT), target],
                         capture_output=True, text=True, check=True).stdout
    return {package for line in re.findall(r"apt-get install -y -qq --no-install-recommends ([^;]+);",
                                           out) for package in line.split()}


def test_make_run_installs_the_monitors_needs_and_no_test_peer():
    run = installs("run")
    assert {"clang", "libbpf1", "libbpf-dev", "python3-venv"} <= run
    assert not run & PEERS


def test_make_test_installs_the_peers_too():
    assert PEERS <= installs("test")
