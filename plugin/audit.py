"""`telegraf-tcpdrop audit`: the monitor's counts beside the kernel's own.

For a while (--for), the probe counts drops per network namespace and drop
reason while the kernel keeps its own TCP drop counters per namespace
(/proc/net/netstat and /proc/net/snmp, read through a process in each
namespace). Then each counter that covers a kind of drop is printed beside
what the monitor saw of that kind; a pair that disagrees is marked.
"""
import json
import sys
from dataclasses import dataclass

from . import host, log, stop
from .event import PORT_TAGS_NONE, DropKey, ProbeConfig
from .netns import NetnsNames
from .netstat import DROP_COUNTERS, LISTEN_RISES, Namespaces
from .startup import ALL_REASONS, open_probe, want_reasons



@dataclass
class Row:
    netns: str
    netns_inode: int
    counter: str
    kernel: int
    monitor: int
    reasons: tuple

    @property
    def difference(self):
        return self.monitor - self.kernel


class Audit:
    """The probe's counts per namespace and reason, against the kernel's counters."""

    def __init__(self, probe, reasons, namespaces, names=None):
        self.probe, self.reasons, self.namespaces = probe, reasons, namespaces
        self.names = names or NetnsNames(probe.netns_tasks)
        self._seen = {}  # inode -> {reason name: drops}, since the start
        self.unread = set()  # namespaces there at a snapshot whose counters could not be read

    def monitor(self):
        """{inode: {reason name, or a LISTEN_RISES name: drops}} seen so far."""
        for raw, (drops, _) in self.probe.take_counts().items():
            key = DropKey.from_buffer_copy(raw)
            by_reason = self._seen.setdefault(key.netns, {})
            name = self.reasons.name(key.reason)
            by_reason[name] = by_reason.get(name, 0) + drops
        seen = {inode: dict(by_reason) for inode, by_reason in self._seen.items()}
        for inode, rises in self.probe.listen_rises().items():
            seen.setdefault(inode, {}).update(zip(LISTEN_RISES.values(), rises))
        return seen

    def snapshot(self):
        """(monitor, kernel) read so that no drop falls between the two:
        read again until the monitor's counts did not move meanwhile."""
        for _ in range(10):
            before = self.monitor()
            kernel = self.namespaces.counters()
            if self.monitor() == before:
                break
        self.unread |= self.namespaces.readers.keys() - kernel.keys()
        return before, kernel

    def rows(self, start, end):
        (monitor0, kernel0), (monitor1, kernel1) = start, end
        rows = []
        # A namespace not read at one end (or gone by the end) has no rise to
        # compare, 0 not being its reading; one made meanwhile is in neither
        # the start's namespaces nor its readings, and counts from 0.
        self.unread |= kernel0.keys() - kernel1.keys()
        for inode in sorted((set(kernel1) | set(monitor1)) - self.unread):
            for counter, reasons in DROP_COUNTERS.items():
                kernel = kernel1.get(inode, {}).get(counter, 0) - kernel0.get(inode, {}).get(counter, 0)
                monitor = sum(monitor1.get(inode, {}).get(r, 0) - monitor0.get(inode, {}).get(r, 0)
                              for r in reasons)
                if kernel or monitor:
                    rows.append(Row(self.names.name(inode), inode, counter,
                                    kernel, monitor, reasons))
        return rows


def per_namespace_config():
    """The probe's settings: every drop, of every reason, counted per
    namespace, without ports."""
    config = ProbeConfig(aggregate=1, port_tags=PORT_TAGS_NONE, key_netns=1, other_reasons=1)
    want_reasons(config, ALL_REASONS)
    return config


def format_rows(rows, out):
    if not rows:
        print("no TCP drop counted by the kernel or the monitor", file=out)
        return
    width = max(len("NETNS"), *(len(row.netns) for row in rows))
    print(f"{'NETNS':<{width}}  {'COUNTER':<24} {'KERNEL':>8} {'MONITOR':>8}  DROPS OF", file=out)
    for row in rows:
        mark = "" if not row.difference else f"  ! {row.difference:+d}"
        print(f"{row.netns:<{width}}  {row.counter:<24} {row.kernel:>8} {row.monitor:>8}  "
              f"{', '.join(row.reasons)}{mark}", file=out)


def report(probe, reasons, seconds, as_json=False, out=sys.stdout):
    """Counts for `seconds` (or until SIGINT/SIGTERM), then prints the pairs;
    exit code 0 if every pair agrees, 3 if one does not."""
    audit = Audit(probe, reasons, Namespaces(probe.netns_tasks))
    start = audit.snapshot()
    log.info(f"auditing for {seconds:g} s (Ctrl-C ends it sooner)")
    stop.wait(seconds)
    audit.namespaces = Namespaces(probe.netns_tasks)  # namespaces made meanwhile too
    rows = audit.rows(start, audit.snapshot())
    for inode in sorted(audit.unread):
        log.warn(f"namespace {audit.names.name(inode)}: its counters could not be read at the "
                 "start or the end (its processes exited; one kept by a bind mount needs "
                 "CAP_SYS_ADMIN): left out")
    if as_json:
        for row in rows:
            print(json.dumps({**row.__dict__, "reasons": list(row.reasons),
                              "difference": row.difference}), file=out)
    else:
        format_rows(rows, out)
    return 3 if any(row.difference for row in rows) else 0


def run(args):
    with open_probe(per_namespace_config(), args.backend, verbose=args.verbose,
                    listen_drops=args.listen_drops) as probe:
        return report(probe, host.drop_reasons(host.libbpf()), args.duration, as_json=args.json)
