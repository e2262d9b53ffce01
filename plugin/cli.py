"""The `telegraf-tcpdrop` command: argument parsing and start-up, nothing else.

Errors at start-up print one `E! ` line saying what is wrong and how to fix
it, and exit 1; usage errors exit 2 (argparse).
"""
import argparse
import sys
import time
from importlib import metadata

from . import check, log
from .event import ProbeConfig
from .probe import HOOKS, Probe, ProbeError
from .symbols import KernelSymbols, SymbolsUnavailable
from .trace import Tracer

DEFAULT_RATE_LIMIT = 1000

EXAMPLES = """\
examples:
  telegraf-tcpdrop trace                    # every TCP drop, with its kernel stack
  telegraf-tcpdrop trace --no-stack -4      # IPv4 only, one line per drop
  telegraf-tcpdrop trace --port 443         # drops to or from port 443
  telegraf-tcpdrop trace --reason NO_SOCKET --reason NETFILTER_DROP
  telegraf-tcpdrop trace --json             # one JSON object per drop
  telegraf-tcpdrop reasons                  # the drop reasons this kernel knows
  telegraf-tcpdrop check                    # can this host run the probe?
"""


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="telegraf-tcpdrop", description="Trace the TCP packets the Linux kernel drops, and why.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=metadata.version("telegraf-tcpdrop"))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    trace = commands.add_parser(
        "trace", help="print each TCP drop as it happens", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print each TCP drop: TIME PID IP SADDR:SPORT > DADDR:DPORT STATE (FLAGS) REASON,\n"
                    "then the kernel stack from the drop site. PID and COMM are the task on CPU\n"
                    "when the packet was dropped, often unrelated to it (softirq).")
    family = trace.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=4, help="IPv4 only")
    family.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 only")
    trace.add_argument("--port", type=port_number, default=0, help="only drops with this port on either side")
    trace.add_argument("--reason", action="append", default=[], metavar="NAME",
                       help="only this drop reason (repeatable); `reasons` lists them")
    trace.add_argument("--json", action="store_true", help="one JSON object per line")
    trace.add_argument("--stack", action=argparse.BooleanOptionalAction, default=True,
                       help="print the kernel stack of each drop (default: on)")
    trace.add_argument("--rate-limit", type=non_negative, default=DEFAULT_RATE_LIMIT, metavar="N",
                       help=f"events per second per CPU, 0 = unlimited (default: {DEFAULT_RATE_LIMIT}); "
                            "drops over it are counted and reported on stderr")
    trace.add_argument("--hook", choices=("auto", *HOOKS), default="auto",
                       help="where to attach (default: auto = the first that works, in this order)")
    trace.add_argument("-v", "--verbose", action="store_true", help="show libbpf's log")

    commands.add_parser("reasons", help="list the drop reasons of the running kernel")
    commands.add_parser("check", help="check that this host can run the probe, and how")
    return parser.parse_args(argv)


def port_number(text):
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def non_negative(text):
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def reason_mask(names, reasons):
    mask = [0, 0, 0, 0]
    for name in names:
        try:
            value = reasons.number(name)
        except KeyError:
            raise check.StartupError(f"unknown drop reason {name!r}: `telegraf-tcpdrop reasons` "
                                     "lists the ones this kernel has") from None
        if value >= 256:
            raise check.StartupError(f"drop reason {name} ({value}) cannot be filtered on")
        mask[value >> 6] |= 1 << (value & 63)
    return mask


def open_probe(args, reasons):
    """Checks the host, then loads and attaches the probe; StartupError if it cannot."""
    obj = check.probe_object()
    check.privileges()
    check.kernel_btf()
    try:
        check.tracefs()
        tracefs_problem = ""
    except check.StartupError as e:
        tracefs_problem = f"; also, {e}"
    config = ProbeConfig(events_per_sec=args.rate_limit, port=args.port, family=args.family or 0)
    config.reason_mask[:] = reason_mask(args.reason, reasons)
    hooks = tuple(HOOKS) if args.hook == "auto" else (args.hook,)
    started = time.monotonic()
    try:
        probe = Probe(obj, config, hooks, verbose=args.verbose)
    except ProbeError as e:
        raise check.StartupError(f"{e}{tracefs_problem}") from None
    log.info(f"attached to {HOOKS[probe.hook][1]} in {(time.monotonic() - started) * 1000:.0f} ms")
    return probe


def run_trace(args):
    lib = check.libbpf()
    reasons = check.drop_reasons(lib)
    with open_probe(args, reasons) as probe:
        symbols = KernelSymbols()
        symbols.count()  # read now: a kptr_restrict problem is a start-up error
        Tracer(probe, reasons, symbols, as_json=args.json, with_stack=args.stack).run()
    return 0


def run_reasons(_args):
    reasons = check.drop_reasons(check.libbpf())
    if not reasons.names:
        raise check.StartupError("this kernel reports no drop reasons (they came in Linux 5.17): "
                                 "drops show as UNKNOWN, with their drop site")
    for value, name in sorted(reasons.names.items()):
        print(f"{value:>6} {name}")
    return 0


def run_check(_args):
    """Each requirement on one line; then loads and attaches the probe for real."""
    lib = check.libbpf()
    steps = [
        ("libbpf", lambda: lib.libbpf_version_string().decode()),
        ("probe object", check.probe_object),
        ("privileges", check.privileges),
        ("kernel BTF", check.kernel_btf),
        ("tracefs", check.tracefs),
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
    args = argparse.Namespace(hook="auto", rate_limit=0, port=0, family=0, reason=[], verbose=False)
    with open_probe(args, check.drop_reasons(lib)) as probe:
        print(f"ok    hook: {HOOKS[probe.hook][1]} attaches")
    return 0


COMMANDS = {"trace": run_trace, "reasons": run_reasons, "check": run_check}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return COMMANDS[args.command](args)
    except (check.StartupError, ProbeError, SymbolsUnavailable) as e:
        log.error(str(e))
        return 1
    except BrokenPipeError:
        # The reader went away (`trace | head`): not an error.
        sys.stdout = None
        return 0
