"""`telegraf-tcpdrop trace`: one line per dropped TCP packet, for a human at
a terminal (or one JSON object per line with --json), and with --pcap the
packets themselves (pcap.py).

A drop travels: kernel -> ring buffer -> DropEvent -> Drop (decoded) -> line.
"""
import ipaddress
import json
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from . import host, log, stop
from .errors import UsageError
from .event import COUNTER_LOST, COUNTER_RATELIMITED, COUNTER_STACKS_LOST
from .names import flags_tag, state_name
from .netns import NetnsNames
from .pcap import PcapngWriter
from .startup import loaded_symbols, open_probe, probe_config
from .symbols import drop_site_stack

HEADER = (f"{'TIME':<8} {'PID':<7} {'NETNS':<12} {'IP':<2} {'SADDR:SPORT':<21} > {'DADDR:DPORT':<21} "
          "STATE (FLAGS) REASON")
COUNTER_CHECK_SECONDS = 1.0


@dataclass
class Drop:
    """One drop, decoded: what --json prints, key for key."""
    time: str
    pid: int
    comm: str
    family: int
    saddr: str
    sport: int | None  # None: the packet ended before its ports
    daddr: str
    dport: int | None
    state: str
    flags: str
    reason: str
    location: str
    netns: int
    netns_name: str
    len: int
    stack: list


def decode(event, reasons, symbols, stack_ips, now, netns_name):
    key = event.key

    def addr(raw):
        if key.family == 4:
            return str(ipaddress.IPv4Address(bytes(raw[:4])))
        return str(ipaddress.IPv6Address(bytes(raw)))

    sport, dport = event.ports()
    return Drop(
        time=now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        pid=event.pid,
        comm=event.comm.decode(errors="replace"),
        family=key.family,
        saddr=addr(event.saddr),
        sport=sport,
        daddr=addr(event.daddr),
        dport=dport,
        state=state_name(key.state),
        flags=flags_tag(key.flags, key.marks),
        reason=reasons.name(key.reason),
        location=symbols.format(key.location),
        netns=event.netns,
        netns_name=netns_name,
        len=event.len,
        stack=[symbols.format(ip) for ip in drop_site_stack(stack_ips, key.location, symbols.function)],
    )


def endpoint(family, addr, port):
    port = "-" if port is None else port
    return f"{addr}:{port}" if family == 4 else f"[{addr}]:{port}"


def format_line(drop):
    local = datetime.fromisoformat(drop.time.replace("Z", "+00:00")).astimezone()
    return (f"{local:%H:%M:%S} {drop.pid:<7} {drop.netns_name:<12} {drop.family:<2} "
            f"{endpoint(drop.family, drop.saddr, drop.sport):<21} > "
            f"{endpoint(drop.family, drop.daddr, drop.dport):<21} "
            f"{drop.state} ({drop.flags}) {drop.reason}")


def pcap_comment(drop):
    """What the packet cannot say of its drop, as its pcapng comment."""
    return f"{drop.reason} at {drop.location}; state {drop.state}; netns {drop.netns_name}"


class Tracer:
    """Prints each event the probe delivers; reports what it could not print."""

    def __init__(self, probe, reasons, symbols, as_json=False, with_stack=True, netns=None,
                 netns_names=None, out=sys.stdout, pcap=None):
        """netns: print only the drops of the namespace of that name (netns.py).
        out: None to print no lines (stdout carries the pcap). pcap: a
        pcap.PcapngWriter, that each drop shown is written to as well."""
        self.probe, self.reasons, self.symbols = probe, reasons, symbols
        self.as_json, self.with_stack, self.out, self.pcap = as_json, with_stack, out, pcap
        self.netns, self.netns_names = netns, netns_names or NetnsNames(probe.netns_tasks)
        # The probe stamps drops with CLOCK_MONOTONIC (bpf_ktime_get_ns), as
        # time.monotonic_ns() reads it: this turns them into wall-clock time.
        self._wall_offset_ns = time.time_ns() - time.monotonic_ns()
        self.printed = 0
        self._not_shown = [0, 0, 0]  # lost, over the rate limit, stacks lost, as last reported

    def on_event(self, event):
        netns_name = self.netns_names.name(event.netns)
        if self.netns and netns_name != self.netns:
            return
        stack_ips = event.stack_ips() if self.with_stack else []
        wall_ns = event.time_ns + self._wall_offset_ns
        drop = decode(event, self.reasons, self.symbols, stack_ips,
                      datetime.fromtimestamp(wall_ns / 1e9, timezone.utc), netns_name)
        if self.pcap:
            self.pcap.write(wall_ns, event.packet_bytes(), event.len, pcap_comment(drop))
        if self.out:
            self.out.write(self.text(drop))
            self.out.flush()
        self.printed += 1

    def text(self, drop):
        if self.as_json:
            return json.dumps(asdict(drop)) + "\n"
        stack = "".join(f"{frame}\n" for frame in drop.stack) + "\n" if self.with_stack else ""
        return format_line(drop) + "\n" + stack

    def report_not_shown(self):
        """One W! line when drops went unprinted since the last report."""
        counters = self.probe.counters()
        now = [counters[COUNTER_LOST], counters[COUNTER_RATELIMITED], counters[COUNTER_STACKS_LOST]]
        new_lost, new_limited, new_stackless = (n - last for n, last in zip(now, self._not_shown))
        if new_lost or new_limited:
            log.warn(f"{new_lost + new_limited} drops not shown: {new_lost} lost (ring buffer "
                     f"full), {new_limited} over the rate limit (--rate-limit)")
        if new_stackless:
            log.warn(f"{new_stackless} drops shown without their kernel stack (the kernel could "
                     "not take it)")
        self._not_shown = now

    def run(self):
        self.probe.on_event(self.on_event)
        if self.out and not self.as_json:
            self.out.write(HEADER + "\n")
            self.out.flush()
        next_check = time.monotonic() + COUNTER_CHECK_SECONDS
        while not stop.requested():
            self.probe.poll(100)
            if time.monotonic() >= next_check:
                self.report_not_shown()
                next_check += COUNTER_CHECK_SECONDS
        self.probe.poll(0)  # what arrived before the signal
        self.report_not_shown()


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


def run(args):
    pcap_file = pcap_output(args) if args.pcap else None
    lines = args.pcap != "-"
    reasons = host.drop_reasons(host.libbpf())
    config = probe_config(args, reasons, events=1, stacks=int(args.stack and lines),
                          events_per_sec=args.rate_limit,
                          snaplen=args.snaplen if pcap_file else 0)
    with open_probe(config, args.backend, args.hook, args.verbose, args.listen_drops) as probe:
        tracer = Tracer(probe, reasons, loaded_symbols(), as_json=args.json,
                        with_stack=args.stack and lines, netns=args.netns,
                        out=sys.stdout if lines else None,
                        pcap=PcapngWriter(pcap_file, args.snaplen) if pcap_file else None)
        tracer.run()
    return 0
