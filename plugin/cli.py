"""The `telegraf-tcpdrop` command: argument parsing and start-up, nothing else.

Errors at start-up print one `E! ` line saying what is wrong and how to fix
it, and exit 1; usage errors exit 2 (argparse).
"""
import argparse
import ctypes
import ctypes.util
import os
import socket
import sys
import time
import urllib.parse

from . import check, config, log, stop, top
from .duration import parse_duration
from .emit import InfluxOutput, StdoutOutput
from .statsd_output import STATSD_TAG_STYLES, StatsdOutput
from .event import MAX_SNAPLEN, REASON_OURS_FIRST, REASON_UNKNOWN, ProbeConfig
from .execd import SIGNALS, Execd
from .metrics import NETNS_TAGS, PORT_TAGS, Collector, ephemeral_range
from .netns import NetnsNames
from .netstat import NetstatPoints
from .names import OWN_REASONS
from .bcc_loader import BccLoader
from .btf import BtfError
from .probe import DEFAULT_MAX_KEYS, HOOKS, CoreLoader, Probe, ProbeError
from .symbols import KernelSymbols, SymbolsUnavailable

TRACE_RATE_LIMIT = 1000  # events per second per CPU
DEFAULT_SNAPLEN = 256    # trace --pcap: the headers of a packet with IP and TCP options
STACK_SAMPLES = 20       # per second per CPU, for metrics --stacks
# Drops that are housekeeping, not the network: data still queued on a socket
# when it is closed (also every raw socket's copy of TCP packets).
DEFAULT_EXCLUDE = ["QUEUE_PURGE"]

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


DEFAULT_MAX_BUFFERED = 50000
BACKENDS = ("auto", "core", "bcc")
TOKEN_ENV = "INFLUX_TOKEN"


def parse_args(argv):
    """The command line, over the --config file's values where it has one."""
    parser, metrics = build_parsers()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        metrics.set_defaults(**config.load(args.config, metrics))
        args = parser.parse_args(argv)
    return args


def build_parsers():
    parser = argparse.ArgumentParser(
        prog="telegraf-tcpdrop", description="The TCP packets the Linux kernel drops, and why.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=VersionAction)
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
    probe.add_argument("-v", "--verbose", action="store_true", help="show libbpf's log")

    counting = argparse.ArgumentParser(add_help=False)  # of metrics and top: the tag sets
    counting.add_argument("--port-tags", choices=tuple(PORT_TAGS), default="bucketed",
                          help="bucketed: ports in the ephemeral range become 'ephemeral' "
                               "(default); all: every port; none: no port tags")
    counting.add_argument("--netns-tags", choices=NETNS_TAGS, default="name",
                          help="name: tag `netns` with the namespace's name (host, ip netns name, "
                               "container, systemd unit; default); inode: its inode; none: no tag")
    counting.add_argument("--max-keys", type=positive, default=DEFAULT_MAX_KEYS, metavar="N",
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
    trace.add_argument("--netns", metavar="NAME",
                       help="only the drops in this network namespace: host, an ip netns name, a "
                            "container's, a systemd unit's, or netns:INODE (as the NETNS column)")
    trace.add_argument("--stack", action=argparse.BooleanOptionalAction, default=True,
                       help="print the kernel stack of each drop (default: on)")
    trace.add_argument("--rate-limit", type=non_negative, default=TRACE_RATE_LIMIT, metavar="N",
                       help=f"events per second per CPU, 0 = unlimited (default: {TRACE_RATE_LIMIT}); "
                            "drops over it are counted and reported on stderr")
    trace.add_argument("--pcap", metavar="FILE",
                       help="also write each drop shown as a packet to FILE (pcapng, a comment per "
                            "packet with its reason, drop site, state and netns); - for stdout, "
                            "then without the lines: | wireshark -k -i -")
    trace.add_argument("--snaplen", type=snaplen, default=DEFAULT_SNAPLEN, metavar="BYTES",
                       help="with --pcap, the bytes of each packet to keep from its IP header on, "
                            f"at most what the kernel holds (default: {DEFAULT_SNAPLEN}, "
                            f"at most {MAX_SNAPLEN})")

    metrics = commands.add_parser(
        "metrics", parents=[probe, counting], help="count drops in the kernel; line protocol every interval",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Count drops in the kernel per tag set (reason, state, flags, family, ports,\n"
                    "drop site) and write the counts of each interval as InfluxDB line protocol,\n"
                    "for Telegraf's inputs.execd.")
    metrics.add_argument("--interval", type=duration, default=10.0, metavar="DURATION",
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
    metrics.add_argument("--config", metavar="PATH",
                         help="a TOML file with any of these options (key = option name with _ "
                              "for -); the command line wins")
    out = metrics.add_argument_group("outputs")
    out.add_argument("--output", choices=("stdout", "influxdb", "statsd"), default="stdout",
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
    out.add_argument("--max-buffered-points", type=positive, default=DEFAULT_MAX_BUFFERED,
                     metavar="N", help="points kept while InfluxDB is unreachable (default: "
                                       f"{DEFAULT_MAX_BUFFERED}); beyond, the oldest merge per tag set")
    out.add_argument("--statsd-host", default="localhost", metavar="HOST",
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
    top_command.add_argument("--interval", type=duration, default=1.0, metavar="DURATION",
                             help="how often to take the counts (default: 1s; e.g. 500ms, 5s)")
    top_command.add_argument("--sort", choices=tuple(top.SORTS), default="rate",
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
    audit_command.add_argument("--for", dest="duration", type=duration, default=10.0,
                               metavar="DURATION", help="how long to count (default: 10s)")
    audit_command.add_argument("--json", action="store_true", help="one JSON object per pair")
    audit_command.add_argument("--backend", choices=BACKENDS, default="auto",
                               help="as for trace and metrics")
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


def snaplen(text):
    if not text.isdigit() or not 1 <= int(text) <= MAX_SNAPLEN:
        raise argparse.ArgumentTypeError(f"{text!r} is not a length from 1 to {MAX_SNAPLEN}")
    return int(text)


def non_negative(text):
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def positive(text):
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number > 0")
    return int(text)


def duration(text):
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def http_url(text):
    url = urllib.parse.urlsplit(text)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL "
                                         "(example: http://localhost:8086)")
    return text


def influx_token(args):
    """From --influx-token-file, else $INFLUX_TOKEN: never from the command line."""
    if args.influx_token_file:
        try:
            with open(args.influx_token_file) as f:
                return f.read().strip()
        except OSError as e:
            raise UsageError(f"cannot read the InfluxDB token file {args.influx_token_file}: "
                             f"{e.strerror}") from None
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    raise UsageError(f"no InfluxDB token: set {TOKEN_ENV} or --influx-token-file "
                     "(on InfluxDB 1.8: USER:PASSWORD)")


def make_output(args):
    if args.output == "influxdb":
        if not args.influx_bucket:
            raise UsageError("--output influxdb needs --influx-bucket (on 1.8: DATABASE/RP)")
        return InfluxOutput(args.influx_url, args.influx_org, args.influx_bucket,
                            influx_token(args), args.max_buffered_points)
    if args.output == "statsd":
        try:
            return StatsdOutput(args.statsd_host, args.statsd_port, args.statsd_protocol,
                                args.statsd_tags)
        except OSError as e:
            raise UsageError(f"StatsD host {args.statsd_host!r}: {e}") from None
    return StdoutOutput()


class UsageError(Exception):
    """A bad option or config value found after parsing: exit 2, like argparse's."""


def reason_numbers(names, reasons):
    numbers = set()
    for name in names:
        try:
            numbers.add(reasons.number(name))
        except KeyError:
            raise check.StartupError(f"unknown drop reason {name!r}: `telegraf-tcpdrop reasons` "
                                     "lists the ones this kernel has") from None
    return numbers


def probe_config(args, reasons, **mode):
    """The probe's filters from --reason/--exclude-reason/-4/-6/--port, plus mode fields."""
    if args.exclude_reason is not None:
        exclude = [name for name in args.exclude_reason if name.lower() != "none"]
    else:  # the default: unless --reason names what to count, or the kernel lacks it
        exclude = [name for name in DEFAULT_EXCLUDE
                   if not args.reason and name in reasons.names.values()]
    if args.reason:
        wanted = reason_numbers(args.reason, reasons)
        if any(256 <= value < REASON_OURS_FIRST for value in wanted):
            raise check.StartupError("drop reasons above 255 cannot be selected with --reason")
    else:
        wanted = set(range(256)) | set(OWN_REASONS)
    wanted -= reason_numbers(exclude, reasons)
    config = ProbeConfig(port=args.port, family=args.family or 0,
                         other_reasons=not args.reason, **mode)
    for value in wanted:
        if value >= REASON_OURS_FIRST:
            config.own_reasons |= 1 << (REASON_UNKNOWN - value)
        else:
            config.reason_mask[value >> 6] |= 1 << (value & 63)
    return config


def mount_tracefs():
    """Mounts tracefs where it is not: the classic tracepoint hook, listen(2)'s
    tracepoint and the bcc backend read it when they attach (tp_btf and fentry
    do not). StartupError if it cannot. `check` only says whether it is."""
    if check.tracefs_mounted():
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"nodev", check.TRACEFS.encode(), b"tracefs", 0, None) != 0:
        raise check.StartupError(f"tracefs is not mounted and mounting it failed "
                                 f"({os.strerror(ctypes.get_errno())}): mount -t tracefs nodev "
                                 f"{check.TRACEFS}")


def open_probe(args, config, mount=True, **probe_options):
    """Checks the host, mounts tracefs where it is not (unless mount is False:
    `check` changes nothing), then loads and attaches the probe; StartupError
    if it cannot."""
    backend, _ = check.backend(args.backend)
    hooks = (CoreLoader if backend == "core" else BccLoader).hooks
    if args.hook != "auto":
        if args.hook not in hooks:
            raise UsageError(f"--hook {args.hook} needs kernel BTF, which the bcc backend is "
                             "for the lack of: use --backend core")
        hooks = (args.hook,)
    check.privileges()
    tracefs_problem = ""
    try:
        if mount:
            mount_tracefs()
    except check.StartupError as e:
        tracefs_problem = f"; also, {e}"
    if backend == "core":
        loader = CoreLoader(check.probe_object(), verbose=args.verbose)
        check.kernel_btf()
    else:
        check.bcc()
        check.kernel_headers()
        loader = BccLoader(check.format_file(), verbose=args.verbose)
    started = time.monotonic()
    try:
        probe = Probe(loader, config, hooks, **probe_options)
    except ProbeError as e:
        raise check.StartupError(f"{e}{tracefs_problem}") from None
    log.info(f"attached to {HOOKS[probe.hook][1]} ({backend}) in "
             f"{(time.monotonic() - started) * 1000:.0f} ms; listen-queue drops: {probe.listen}")
    if probe.unseen:
        log.warn(probe.unseen)
    return probe


def loaded_symbols():
    symbols = KernelSymbols()
    symbols.count()  # read now: a kptr_restrict problem is a start-up error
    return symbols


def pcap_output(args):
    """The binary file --pcap names (stdout for -), checked before the probe loads."""
    if args.pcap != "-":
        try:
            return open(args.pcap, "wb")
        except OSError as e:
            raise UsageError(f"cannot write the pcap file {args.pcap}: {e.strerror}") from None
    if args.json:
        raise UsageError("--pcap - and --json both want stdout: give --pcap a file")
    if sys.stdout.isatty():
        raise UsageError("--pcap -: stdout is a terminal; pipe it (| wireshark -k -i -, "
                         "| tcpdump -r -) or give a file")
    return sys.stdout.buffer


def run_trace(args):
    from .pcap import PcapngWriter  # trace's imports are its own: not the monitor's start-up
    from .trace import Tracer

    pcap_file = pcap_output(args) if args.pcap else None
    lines = args.pcap != "-"
    reasons = check.drop_reasons(check.libbpf())
    config = probe_config(args, reasons, events=1, stacks=int(args.stack and lines),
                          events_per_sec=args.rate_limit,
                          snaplen=args.snaplen if pcap_file else 0)
    with open_probe(args, config) as probe:
        tracer = Tracer(probe, reasons, loaded_symbols(), as_json=args.json,
                        with_stack=args.stack and lines, netns=args.netns,
                        out=sys.stdout if lines else None,
                        pcap=PcapngWriter(pcap_file, args.snaplen) if pcap_file else None)
        tracer.run()
    return 0


def host_name():
    """This host's name for the host tag: bytes that are not UTF-8 (which
    gethostname() keeps as surrogates, unencodable) become U+FFFD."""
    return socket.gethostname().encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def counting_config(args, reasons, **mode):
    """The probe's settings to count drops per tag set (metrics, top)."""
    low, high = ephemeral_range()
    return probe_config(args, reasons, aggregate=1, port_tags=PORT_TAGS[args.port_tags],
                        ephemeral_low=low, ephemeral_high=high,
                        key_netns=int(args.netns_tags != "none"), **mode)


def run_metrics(args):
    output = make_output(args)
    reasons = check.drop_reasons(check.libbpf())
    probe_settings = counting_config(args, reasons, events=int(args.stacks),
                                     stacks=int(args.stacks), events_per_sec=STACK_SAMPLES)
    # Telegraf adds the host tag to what it reads from stdout.
    host = None if args.output == "stdout" else host_name()
    with open_probe(args, probe_settings, max_keys=args.max_keys) as probe:
        names = NetnsNames(probe.netns_tasks)
        netstat = NetstatPoints(names, host) if args.netns_counters else None
        collector = Collector(probe, reasons, loaded_symbols(), probe_settings.port_tags,
                              netns_tags=args.netns_tags, netns_names=names, netstat=netstat,
                              stats_enabled=check.bpf_stats_enabled, output_health=output.health,
                              host=host)
        if args.stacks:
            probe.on_event(collector.on_event)
        Execd(collector.collect, output, args.interval, args.signal,
              events=probe if args.stacks else None).run()
    return 0


def run_audit(args):
    from . import audit  # its imports are its own: not the monitor's start-up

    args.hook = "auto"
    with open_probe(args, audit.probe_config()) as probe:
        return audit.run(probe, check.drop_reasons(check.libbpf()), args.duration, as_json=args.json)


def run_top(args):
    if not args.once:
        if not sys.stdout.isatty():
            raise UsageError("top draws on a terminal, and stdout is not one: --once prints the "
                             "table once, as plain text")
        top.check_terminal()
    reasons = check.drop_reasons(check.libbpf())
    settings = counting_config(args, reasons)
    with open_probe(args, settings, max_keys=args.max_keys) as probe:
        collector = Collector(probe, reasons, loaded_symbols(), settings.port_tags,
                              netns_tags=args.netns_tags)
        return top.run(collector, args.interval, args.sort, once=args.once)


def run_reasons(_args):
    reasons = check.drop_reasons(check.libbpf())
    if not reasons.names:
        raise check.StartupError("this kernel reports no drop reasons (they came in Linux 5.17): "
                                 "drops show as UNKNOWN, with their drop site")
    for value, name in sorted(reasons.names.items()):
        print(f"{value:>6} {name}")
    return 0


def run_check(args):
    """Each requirement on one line; then loads and attaches the probe for real."""
    try:
        backend, why = check.backend(args.backend)
        print(f"ok    backend: {backend} ({why})", flush=True)
    except check.StartupError as e:
        print(f"FAIL  backend: {e}", flush=True)
        return 1
    lib = check.libbpf()
    if backend == "core":
        needs = [("libbpf", lambda: lib.libbpf_version_string().decode()),
                 ("probe object", check.probe_object),
                 ("kernel BTF", check.kernel_btf)]
    else:
        needs = [("bcc", check.bcc), ("kernel headers", check.kernel_headers)]
    steps = [
        *needs,
        ("privileges", check.privileges),
        ("tracefs", lambda: check.tracefs(backend)),
        ("drop reasons", lambda: f"{len(check.drop_reasons(lib).names)} names from the running kernel"),
        ("symbols", lambda: f"{KernelSymbols().count()} kernel functions in /proc/kallsyms"),
    ]
    failed = 0
    for label, step in steps:
        try:
            print(f"ok    {label}: {step()}", flush=True)
        except (check.StartupError, SymbolsUnavailable) as e:
            print(f"FAIL  {label}: {e}", flush=True)
            failed += 1
    if failed:
        return 1
    options = argparse.Namespace(backend=backend, hook="auto", verbose=False)
    with open_probe(options, ProbeConfig(), mount=False) as probe:
        print(f"ok    hook: {HOOKS[probe.hook][1]} attaches", flush=True)
        print(f"ok    listen-queue drops: {probe.listen}", flush=True)
    return 0


COMMANDS = {"trace": run_trace, "metrics": run_metrics, "top": run_top, "audit": run_audit,
            "reasons": run_reasons, "check": run_check}


def main(argv=None):
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except config.ConfigError as e:
        log.error(str(e))
        return 2
    stop.catch()
    try:
        return COMMANDS[args.command](args)
    except (check.StartupError, ProbeError, BtfError, SymbolsUnavailable) as e:
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
