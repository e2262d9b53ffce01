"""Every bad input, of every command, is answered in one line: the option, the
value and what is allowed, on stderr; a non-zero exit code; no traceback, no
usage block, no hang. (A config file's keys and values: test_config.py.)"""
import os
import subprocess

import pytest

from conftest import CLI

CONFIG_CASES = {  # {name} in a case below -> a config file of these bytes
    "binary": b"\xff\xfe\x00interval",
    "huge": b"# " + b"x" * (2 << 20) + b"\n",
}

CASES = [  # (arguments, exit code, words the one line must have)
    (["trace", "--port", "0"], 2, "'0' is not a port number (1-65535)"),
    (["trace", "--port", "http"], 2, "'http' is not a port number"),
    (["trace", "--port", "-1"], 2, "'-1' is not a port number"),
    (["trace", "--port", "70000"], 2, "'70000' is not a port number"),
    (["trace", "--rate-limit", "-1"], 2, "'-1' is not a whole number from 0 to 1,000,000"),
    (["trace", "--rate-limit", "99999999999"], 2, "from 0 to 1,000,000"),
    (["trace", "-4", "-6"], 2, "argument -6: not allowed with argument -4"),
    (["trace", "--hook", "fentry"], 2, "argument --hook: invalid choice: 'fentry'"),
    (["trace", "--pcap", "x.pcapng", "--snaplen", "5000"], 2, "'5000' is not a whole number from 1 to 2,048"),
    (["trace", "--snaplen", "0"], 2, "from 1 to 2,048"),
    (["trace", "--pcap", "/nonexistent/drops.pcapng"], 2, "cannot write the pcap file /nonexistent/drops.pcapng"),
    (["trace", "--pcap", "-", "--json"], 2, "--pcap - and --json both want stdout"),
    (["trace", "--netns", ""], 2, "'' is not a namespace's name"),
    (["trace", "--netns", "a\nb"], 2, "is not a namespace's name"),
    (["trace", "--reason", "NO_SUCH_REASON"], 1, "unknown drop reason 'NO_SUCH_REASON'", "telegraf-tcpdrop reasons"),
    (["trace", "--colour"], 2, "unrecognized arguments: --colour"),
    (["metrics", "--interval", "10"], 2, "'10' is not a duration (examples: 10s"),
    (["metrics", "--interval", "0s"], 2, "'0s' is not longer than 0"),
    (["metrics", "--interval", "-1s"], 2, "'-1s' is not a duration"),
    (["metrics", "--interval", "1ns"], 2, "'1ns' is not from 10ms to 24h"),
    (["metrics", "--interval", "1000h"], 2, "'1000h' is not from 10ms to 24h"),
    (["metrics", "--signal", "SIGHUP"], 2, "argument --signal: invalid choice: 'SIGHUP'"),
    (["metrics", "--port-tags", "some"], 2, "argument --port-tags: invalid choice"),
    (["metrics", "--max-keys", "0"], 2, "'0' is not a whole number from 1 to"),
    (["metrics", "--max-keys", "99999999999"], 2, "--max-keys", "is not a whole number from 1 to",
     "(each is kept on every CPU)"),
    (["metrics", "--max-buffered-points", "0"], 2, "from 1 to 10,000,000"),
    (["metrics", "--influx-url", "localhost:8086"], 2, "'localhost:8086' is not an http(s) URL"),
    (["metrics", "--output", "kafka"], 2, "argument --output: invalid choice: 'kafka'"),
    (["metrics", "--output", "influxdb"], 2, "--output influxdb needs --influx-bucket"),
    (["metrics", "--output", "influxdb", "--influx-bucket", "b"], 2, "no InfluxDB token: set INFLUX_TOKEN"),
    (["metrics", "--output", "influxdb", "--influx-bucket", "b", "--influx-token-file", "/nonexistent"], 2,
     "cannot read the InfluxDB token file /nonexistent: No such file or directory"),
    (["metrics", "--output", "influxdb", "--influx-bucket", "b", "--influx-token-file", "{binary}"], 2,
     "is not UTF-8 text (invalid start byte at byte 0): write the token alone in it"),
    (["metrics", "--statsd-port", "0"], 2, "argument --statsd-port: '0' is not a port number"),
    (["metrics", "--statsd-host", ""], 2, "'' is not a host name or address"),
    (["metrics", "--config", "/dev/zero"], 2, "config /dev/zero: not a regular file"),
    (["metrics", "--config", "/nonexistent.toml"], 2, "config /nonexistent.toml: No such file or directory"),
    (["metrics", "--config", "{fifo}"], 2, "not a regular file"),
    (["metrics", "--config", "{huge}"], 2, "larger than 1 MiB"),
    (["metrics", "--config", "{binary}"], 2, "not UTF-8 text"),
    (["top"], 2, "top draws on a terminal, and stdout is not one"),
    (["top", "--sort", "colour"], 2, "argument --sort: invalid choice: 'colour'"),
    (["top", "--interval", "-5s"], 2, "'-5s' is not a duration"),
    (["audit", "--for", "0s"], 2, "'0s' is not longer than 0"),
    (["audit", "--backend", "ebpf"], 2, "argument --backend: invalid choice: 'ebpf'"),
    (["reasons", "extra"], 2, "unrecognized arguments: extra"),
    (["check", "--backend", "ebpf"], 2, "invalid choice: 'ebpf'"),
    ([], 2, "the following arguments are required: COMMAND"),
    (["tcpdump"], 2, "argument COMMAND: invalid choice: 'tcpdump'"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{name: path} of the bad config files, and a FIFO no one writes to."""
    root = tmp_path_factory.mktemp("bad-input")
    paths = {}
    for name, data in CONFIG_CASES.items():
        paths[name] = root / f"{name}.toml"
        paths[name].write_bytes(data)
    paths["fifo"] = root / "fifo"
    os.mkfifo(paths["fifo"])
    return paths


def test_there_are_enough_cases_across_every_command():
    commands = {args[0] for args, *_ in CASES if args}
    assert len(CASES) >= 25 and commands == {"trace", "metrics", "top", "audit", "reasons", "check",
                                             "tcpdump"}


@pytest.mark.parametrize("case", CASES, ids=[" ".join(args) or "no command" for args, *_ in CASES])
def test_a_bad_input_is_one_line_and_an_exit_code(files, case):
    args, code, *words = case
    args = [arg.format(**{name: str(path) for name, path in files.items()}) for arg in args]
    env = {k: v for k, v in os.environ.items() if k != "INFLUX_TOKEN"}
    result = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=5, env=env,
                            stdin=subprocess.DEVNULL)
    lines = result.stderr.splitlines()
    assert result.returncode == code and len(lines) == 1, result
    assert lines[0].startswith("E! ") and "Traceback" not in result.stderr, lines
    for word in words:
        assert word in lines[0], lines[0]
