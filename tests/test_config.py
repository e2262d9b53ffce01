"""--config: a TOML file mirroring every option of `metrics`, checked up front."""
import re
import subprocess
from pathlib import Path

import pytest

from conftest import CLI
from telegraf_tcpdrop.cli import build_parsers, parse_args

ROOT = Path(__file__).parents[1]


def write(tmp_path, text):
    path = tmp_path / "tcpdrop.toml"
    path.write_text(text)
    return str(path)


def test_values_from_the_file_and_the_command_line_wins(tmp_path):
    path = write(tmp_path, 'interval = "1m"\noutput = "statsd"\nstatsd_port = 9125\n'
                           'reason = ["NO_SOCKET"]\nfamily = 6\nstacks = true\n'
                           'influx_url = "https://influx.example:8086"\n')
    args = parse_args(["metrics", "--config", path, "--statsd-port", "8200"])
    assert (args.interval, args.output, args.statsd_port) == (60.0, "statsd", 8200)
    assert (args.reason, args.family, args.stacks) == (["NO_SOCKET"], 6, True)
    assert args.influx_url == "https://influx.example:8086"


def test_a_list_or_a_default_value_on_the_command_line_replaces_the_files(tmp_path):
    path = write(tmp_path, 'reason = ["NO_SOCKET"]\ninterval = "1m"\nstacks = true\n')
    args = parse_args(["metrics", "--config", path, "--reason", "TCP_CSUM", "--interval", "10s"])
    assert (args.reason, args.interval, args.stacks) == (["TCP_CSUM"], 10.0, True)


def test_every_metrics_option_has_a_key():
    """The shipped example names every option (commented out or set)."""
    example = (ROOT / "conf" / "telegraf-tcpdrop" / "tcpdrop.toml").read_text()
    _, metrics = build_parsers()
    options = {a.dest for a in metrics._actions if a.option_strings} - {"help", "config"}
    missing = {dest for dest in options if not re.search(rf"^#? ?{dest} = ", example, re.M)}
    assert missing == set()


@pytest.mark.parametrize("text, message", [
    ('intervall = "10s"', "unknown key 'intervall'"),
    ('influx_url = "localhost:8086"', "key 'influx_url': 'localhost:8086' is not an http(s) URL"),
    ('interval = "10"', "key 'interval': '10' is not a duration"),
    ("interval = 10", "key 'interval': '10' is not a duration"),
    ('output = "kafka"', "key 'output': 'kafka' is not one of stdout, influxdb, statsd"),
    ("stacks = 1", "key 'stacks': 1 is not true or false"),
    ("family = 5", "key 'family': 5 is not 4 or 6"),
    ("port = 70000", "key 'port': '70000' is not a port number"),
    ("reason = [[1]]", "key 'reason': [1] is not a single value"),
    ("interval = ", "not valid TOML"),
])
def test_a_bad_file_is_one_line_naming_the_key_and_exit_2(tmp_path, text, message):
    path = write(tmp_path, text + "\n")
    result = subprocess.run([CLI, "metrics", "--config", path], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"E! config {path}: ")
    assert message in result.stderr


def test_the_systemd_unit_verifies(tmp_path):
    unit = (ROOT / "conf" / "systemd" / "telegraf-tcpdrop.service").read_text()
    (tmp_path / "telegraf-tcpdrop.service").write_text(unit.replace("/usr/bin/telegraf-tcpdrop", CLI))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no",
                             str(tmp_path / "telegraf-tcpdrop.service")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_readme_shows_the_shipped_drop_in():
    """The README opens with the sample config: the very file that ships."""
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    assert shown == (ROOT / "conf" / "telegraf.d" / "tcpdrop.conf").read_text()
