"""The `telegraf-tcpdrop` command: its options parsed, and the command run.

Errors at start-up print one `E! ` line saying what is wrong and how to fix
it, and exit 1; usage errors exit 2 (argparse).
"""
import argparse
import importlib
import os
import re
import sys
import urllib.parse

from . import config, log, stop
from .btf import BtfError
from .errors import StartupError, UsageError
from .duration import parse_duration
from .emit import printable
from .event import MAX_SNAPLEN
from .execd import SIGNALS
from .libbpf import LibbpfError
from .metrics import STACK_SAMPLES
from .outputs import DEFAULT_MAX_BUFFERED, OUTPUTS, STATSD_TAG_STYLES, TOKEN_ENV
from .pins import DEFAULT_DIR as PIN_DIR
from .probe import DEFAULT_MAX_KEYS, HOOKS, MAX_KEYS, ProbeError
from .startup import DEFAULT_EXCLUDE, PORT_TAGS
from .symbols import SymbolsUnavailable
from .top import SORTS

TRACE_RATE_LIMIT = 1000  # events per second per CPU
MAX_RATE_LIMIT = 1_000_000
MAX_BUFFERED = 10_000_000  # points: some GiB, no more
INTERVALS = (0.01, 86400)  # seconds: 10ms to a day
DEFAULT_SNAPLEN = 256    # trace --pcap: the headers of a packet with IP and TCP options

EXAMPLES = """\
examples:
  telegraf-tcpdrop trace                    # every TCP drop, with its kernel stack
  telegraf-tcpdrop trace --no-stack -4      # IPv4 only, one line per drop
  telegraf-tcpdrop trace --port 443         # drops to or from port 443
  telegraf-tcpdrop trace --reason NO_SOCKET --reason NETFILTER_DROP
  telegraf-tcpdrop trace --json             # one JSON object per drop
  telegraf-tcpdrop trace --netns web1       # drops in the container web1's namespace
  telegraf-tcpdrop trace --pcap - | wireshark -k -i -   # the dropped packets themselves
  telegraf-tcpdrop metrics --interval 10s   # counts per tag set, line protocol on stdout
  telegraf-tcpdrop top --port 443           # the busiest tag sets, live (q quits)
  telegraf-tcpdrop audit --for 30s          # the counts beside the kernel's own counters
  telegraf-tcpdrop reasons                  # the drop reasons this kernel knows
  telegraf-tcpdrop check                    # can this host run the probe?
"""


BACKENDS = ("auto", "core", "bcc")
LISTEN_DROPS = ("auto", "fentry", "tracepoints", "off")
LISTEN_DROPS_HELP = ("how to see the SYNs listeners refuse: auto = the best way the kernel allows "
                     "(default); fentry, tracepoints: that way or an error; off: not at all")
NETNS_TAGS = ("name", "inode", "none")
NOT_GIVEN = object()  # an option the command line did not give (parse_args)


def parse_args(argv):
    """The command line, over the --config file's values where it has one: an
    option on the command line wins whole (a list is not added to the file's)."""
    parser, metrics = build_parsers()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        from_file = config.load(args.config, metrics)
        # Parsed again with the file's options unset, to see which the command line gave.
        appends = {a.dest for a in metrics._actions if isinstance(a, argparse._AppendAction)}
        metrics.set_defaults(**{dest: None if dest in appends else NOT_GIVEN for dest in from_file})
        given = vars(parser.parse_args(argv))
        for dest, value in from_file.items():
            if given[dest] is NOT_GIVEN or given[dest] is None and dest in appends:
                setattr(args, dest, value)
    return args


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `E! ` line and a hint, not the usage
    block; and a value that starts with a minus (`--interval -1s`, `--port
    -1`) is read as the option's value, to be refused for what it is, not as
    an unknown option."""

    def error(self, message):
        log.error(f"{self.prog}: {message}; see {self.prog} --help")
        self.exit(2)

    def _parse_optional(self, arg_string):
        if re.match(r"-[\d.]", arg_string) and arg_string not in self._option_string_actions:
            return None
        return super()._parse_optional(arg_string)


def build_parsers():
    parser = Parser(
        prog="telegraf-tcpdrop", description="The TCP packets the Linux kernel drops, and why.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=VersionAction)
    interval = duration_between(*INTERVALS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    probe = argparse.ArgumentParser(add_help=False)  # options of both trace and metrics
    family = probe.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=4, help="IPv4 only")
    family.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 only")
    probe.add_argument("--port", type=port_number, default=0, help="only drops with this port on either side")
    probe.add_argument("--reason", action="append", default=[], metavar="NAME",
                       help="only this drop reason (repeatable); `reasons` lists them")
    probe.add_argument("--exclude-reason", action="append", metavar="NAME",
                       help="not this drop reason (repeatable; default without --reason: "
                            f"{', '.join(DEFAULT_EXCLUDE)}; `--exclude-reason none` for none)")
    probe.add_argument("--hook", choices=("auto", *HOOKS), default="auto",
                       help="where to attach (default: auto = the first that works, in this order)")
    probe.add_argument("--backend", choices=BACKENDS, default="auto",
                       help="core: the CO-RE object (needs kernel BTF); bcc: compile here with "
                            "bcc (needs python3-bpfcc and kernel headers); default: auto = core "
                            "where the kernel has BTF, else bcc")
    probe.add_argument("--listen-drops", choices=LISTEN_DROPS, default="auto",
                       help=LISTEN_DROPS_HELP)
    probe.add_argument("-v", "--verbose", action="store_true", help="show libbpf's log")

    counting = argparse.ArgumentParser(add_help=False)  # of metrics and top: the tag sets
    counting.add_argument("--port-tags", choices=tuple(PORT_TAGS), default="bucketed",
                          help="bucketed: ports in the ephemeral range become 'ephemeral' "
                               "(default); all: every port; none: no port tags")
    counting.add_argument("--netns-tags", choices=NETNS_TAGS, default="name",
                          help="name: tag `netns` with the namespace's name (host, ip netns name, "
                               "container, systemd unit; default); inode: its inode; none: no tag")
    counting.add_argument("--max-keys", type=whole_number(1, MAX_KEYS, " (each is kept on every CPU)"), default=DEFAULT_MAX_KEYS, metavar="N",
                          help=f"tag sets the kernel keeps (default: {DEFAULT_MAX_KEYS}); drops "
                               "beyond are counted without their ports (overflow), in room for an "
                               "eighth as many, then in tcpdrop_agent.map_overflow_drops")

    trace = commands.add_parser(
        "trace", parents=[probe], help="print each TCP drop as it happens", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print each TCP drop: TIME PID NETNS IP SADDR:SPORT > DADDR:DPORT STATE (FLAGS)\n"
                    "REASON, then the kernel stack from the drop site. PID and COMM are the task on\n"
                    "CPU when the packet was dropped, often unrelated to it (softirq).")
    trace.add_argument("--json", action="store_true", help="one JSON object per line")
    trace.add_argument("--netns", type=netns_name, metavar="NAME",
                       help="only the drops in this network namespace: host, an ip netns name, a "
                            "container's, a systemd unit's, or netns:INODE (as the NETNS column)")
    trace.add_argument("--stack", action=argparse.BooleanOptionalAction, default=True,
                       help="print the kernel stack of each drop (default: on)")
    trace.add_argument("--rate-limit", type=whole_number(0, MAX_RATE_LIMIT), default=TRACE_RATE_LIMIT, metavar="N",
                       help=f"events per second per CPU, 0 = unlimited (default: {TRACE_RATE_LIMIT}); "
                            "drops over it are counted and reported on stderr")
    trace.add_argument("--pcap", metavar="FILE",
                       help="also write each drop shown as a packet to FILE (pcapng, a comment per "
                            "packet with its reason, drop site, state and netns); - for stdout, "
                            "then without the lines: | wireshark -k -i -")
    trace.add_argument("--snaplen", type=whole_number(1, MAX_SNAPLEN), default=DEFAULT_SNAPLEN, metavar="BYTES",
                       help="with --pcap, the bytes of each packet to keep from its IP header on, "
                            f"at most what the kernel holds (default: {DEFAULT_SNAPLEN}, "
                            f"at most {MAX_SNAPLEN})")

    metrics = commands.add_parser(
        "metrics", parents=[probe, counting], help="count drops in the kernel; line protocol every interval",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Count drops in the kernel per tag set (reason, state, flags, family, ports,\n"
                    "drop site) and write the counts of each interval as InfluxDB line protocol,\n"
                    "for Telegraf's inputs.execd.")
    metrics.add_argument("--interval", type=interval, default=10.0, metavar="DURATION",
                         help="how often to emit with --signal none (default: 10s; e.g. 500ms, 1m)")
    metrics.add_argument("--signal", choices=SIGNALS, default="none",
                         help="none: emit every interval; STDIN: emit on each line read from stdin "
                              "(match inputs.execd's signal; default: none)")
    metrics.add_argument("--netns-counters", action="store_true",
                         help="add a point tcpdrop_netstat per network namespace each interval: "
                              "the rise of the kernel's own TCP drop counters there")
    metrics.add_argument("--stacks", action="store_true",
                         help="add a field `stack`: the folded kernel stack of one drop of each "
                              f"tag set (sampled, at most {STACK_SAMPLES}/s per CPU)")
    metrics.add_argument("--pin-dir", metavar="DIR",
                         help="keep the probe counting in bpffs at DIR between runs (e.g. "
                              f"{PIN_DIR}), so a restart or a crash loses no drop; one run per DIR "
                              "(default: none, the probe stops with the run)")
    metrics.add_argument("--config", metavar="PATH",
                         help="a TOML file with any of these options (key = option name with _ "
                              "for -); the command line wins")
    out = metrics.add_argument_group("outputs")
    out.add_argument("--output", choices=tuple(OUTPUTS), default="stdout",
                     help="stdout: line protocol for Telegraf's inputs.execd (default); influxdb: "
                          "the v2 write API; statsd: StatsD counters")
    out.add_argument("--influx-url", type=http_url, default="http://localhost:8086", metavar="URL",
                     help="InfluxDB's URL (default: http://localhost:8086)")
    out.add_argument("--influx-org", default="", metavar="ORG",
                     help="organization (InfluxDB 2.x, 3.x, Cloud; 1.8 ignores it)")
    out.add_argument("--influx-bucket", default="", metavar="BUCKET",
                     help="bucket; on InfluxDB 1.8 DATABASE/RETENTION-POLICY")
    out.add_argument("--influx-token-file", metavar="PATH",
                     help=f"a file holding the token; else ${TOKEN_ENV}. On 1.8: USER:PASSWORD")
    out.add_argument("--max-buffered-points", type=whole_number(1, MAX_BUFFERED), default=DEFAULT_MAX_BUFFERED,
                     metavar="N", help="points kept while InfluxDB is unreachable (default: "
                                       f"{DEFAULT_MAX_BUFFERED}); beyond, the oldest merge per tag set")
    out.add_argument("--statsd-host", type=host_or_address, default="localhost", metavar="HOST",
                     help="StatsD server (default: localhost)")
    out.add_argument("--statsd-port", type=port_number, default=8125, metavar="PORT",
                     help="(default: 8125)")
    out.add_argument("--statsd-protocol", choices=("udp", "tcp"), default="udp",
                     help="(default: udp)")
    out.add_argument("--statsd-tags", choices=STATSD_TAG_STYLES, default="influx",
                     help="influx: name,tag=value:1|c (Telegraf's statsd input, default); "
                          "dogstatsd: name:1|c|#tag:value; none: tag values in the dotted name")

    top_command = commands.add_parser(
        "top", parents=[probe, counting], help="the counts per tag set, live on the terminal",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Count drops in the kernel as metrics does, and show each tag set's drops\n"
                    "per second over the last interval and its total since top started, with\n"
                    "the monitor's health; q quits, s sorts by the next column.")
    top_command.add_argument("--interval", type=interval, default=1.0, metavar="DURATION",
                             help="how often to take the counts (default: 1s; e.g. 500ms, 5s)")
    top_command.add_argument("--sort", choices=tuple(SORTS), default="rate",
                             help="the order of the rows: rate, total: the busiest first "
                                  "(default: rate); reason, netns, site: by name; port: by the "
                                  "lower numbered port")
    top_command.add_argument("--once", action="store_true",
                             help="wait one interval, print the table as plain text and exit "
                                  "(for scripts)")

    audit_command = commands.add_parser(
        "audit", help="the monitor's counts beside the kernel's own drop counters",
        description="Count drops per network namespace for a while, then print each of the\n"
                    "kernel's TCP drop counters (nstat names) beside the monitor's count of the\n"
                    "drops it covers. Exit code 3 if a pair disagrees.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    audit_command.add_argument("--for", dest="duration", type=interval, default=10.0,
                               metavar="DURATION", help="how long to count (default: 10s)")
    audit_command.add_argument("--json", action="store_true", help="one JSON object per pair")
    audit_command.add_argument("--backend", choices=BACKENDS, default="auto",
                               help="as for trace and metrics")
    audit_command.add_argument("--listen-drops", choices=LISTEN_DROPS, default="auto",
                               help=LISTEN_DROPS_HELP)
    audit_command.add_argument("-v", "--verbose", action="store_true", help="show libbpf's log")

    commands.add_parser("reasons", help="list the drop reasons of the running kernel")
    check_command = commands.add_parser("check", help="check that this host can run the probe, and how")
    check_command.add_argument("--backend", choices=BACKENDS, default="auto",
                               help="the backend to check (default: auto, the one trace and "
                                    "metrics would use)")
    return parser, metrics


class VersionAction(argparse.Action):
    """--version, looked up only when asked for (the man page is built from
    this parser before the package is installed)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib import metadata  # 20 ms of start-up, for this alone

        print(metadata.version("telegraf-tcpdrop"))
        parser.exit()


def port_number(text):
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def whole_number(low, high, why=""):
    """The type of an option that is a whole number from low to high."""
    def parse(text):
        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {low:,} to "
                                             f"{high:,}{why}")
        return int(text)
    return parse


def duration_between(low, high):
    """The type of an option that is a duration from low to high seconds."""
    def parse(text):
        try:
            seconds = parse_duration(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if not low <= seconds <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not from {format_seconds(low)} to "
                                             f"{format_seconds(high)}")
        return seconds
    return parse


def format_seconds(seconds):
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds / 3600:g}h" if seconds >= 3600 \
        else f"{seconds:g}s"


def netns_name(text):
    """As the NETNS column shows it: a byte that is not UTF-8 as U+FFFD."""
    name = printable(text)  # a control character: a space, and then refused
    if not text or len(text) > 255 or not name.isprintable() or " " in name and name != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a namespace's name: host, an ip netns "
                                         "name, a container's, a unit's, or netns:INODE")
    return name


def host_or_address(text):
    if not text or len(text) > 253 or not text.isprintable() or " " in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or address")
    return text


def http_url(text):
    url = urllib.parse.urlsplit(text)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL "
                                         "(example: http://localhost:8086)")
    return text


def main(argv=None):
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except config.ConfigError as e:
        log.error(str(e))
        return 2
    stop.catch()
    try:
        # Each command is the module of its name, with run(args) -> exit code,
        # imported when it runs: trace's imports are not the monitor's.
        return importlib.import_module(f".{args.command}", __package__).run(args)
    except (StartupError, ProbeError, BtfError, SymbolsUnavailable, LibbpfError) as e:
        log.error(str(e))
        return 1
    except UsageError as e:
        log.error(str(e))
        return 2
    except BrokenPipeError:
        # The reader went away (`trace | head`, Telegraf gone): not an error.
        # Point stdout at /dev/null so that the exit's flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
