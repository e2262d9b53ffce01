"""StatsD output: each point's integer fields as StatsD counters (gauges for
a Gauge), tagged in one of three styles, sent as UTF-8 lines packed into
packets of at most STATSD_MAX_PACKET bytes over UDP or TCP.
"""
import socket
import time

from . import log
from .errors import UsageError
from .emit import CONTROLS, MAX_NAME, REPLACEMENT, SURROGATES, Gauge


_STATSD_UNSAFE = {**{ord(c): "_" for c in ":|@#,=; "}, **dict.fromkeys(CONTROLS, "_"),
                  **dict.fromkeys(SURROGATES, REPLACEMENT)}


def statsd_safe(text):
    """StatsD's separators and control characters out of a name or tag value
    (so RST|ACK is RST_ACK), and what is not text (emit.py) as U+FFFD; cut
    at MAX_NAME, as line protocol's are (no datagram holds 64 KiB)."""
    return text[:MAX_NAME].translate(_STATSD_UNSAFE)


def statsd_lines(point, tag_style):
    """The StatsD lines of one point: a counter per integer field (a gauge for
    a Gauge), tags in the chosen style. Strings (stack) have no StatsD form.
    A tag without a value ("") is left out, but for its level in the
    Graphite-style name, "-": each level stays the same tag."""
    every_tag = sorted((statsd_safe(k), statsd_safe(v)) for k, v in point.tags.items())
    tags = [(k, v) for k, v in every_tag if v]
    lines = []
    for field, value in point.fields.items():
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        kind = "g" if isinstance(value, Gauge) else "c"
        if tag_style == "influx":  # Telegraf's statsd input: name,tag=value:1|c
            name = f"{point.measurement}.{field}" + "".join(f",{k}={v}" for k, v in tags)
            lines.append(f"{name}:{value}|{kind}")
        elif tag_style == "dogstatsd":  # name:1|c|#tag:value
            suffix = f"|#{','.join(f'{k}:{v}' for k, v in tags)}" if tags else ""
            lines.append(f"{point.measurement}.{field}:{value}|{kind}{suffix}")
        else:  # tag values folded into the dotted name, in tag-key order; their dots
            # (do_softirq.part.0, a host's domain) would add levels: made _
            name = ".".join([point.measurement, *(v.replace(".", "_") or "-" for _, v in every_tag),
                             field])
            lines.append(f"{name}:{value}|{kind}")
    return lines


# Bytes per UDP packet: Etsy statsd's advice for Ethernet (MTU 1500, less
# headers, with a margin): no packet is fragmented, or lost for being too big.
STATSD_MAX_PACKET = 1432


def statsd_packets(lines, max_bytes):
    """Encoded lines joined by newlines into packets of at most max_bytes; a
    line longer than that goes alone, never with others."""
    packet = b""
    for line in lines:
        if packet and len(packet) + 1 + len(line) > max_bytes:
            yield packet
            packet = b""
        packet = packet + b"\n" + line if packet else line
    if packet:
        yield packet


# A name is looked up again this often: a StatsD server that moved (a
# container started again, a DNS change) gets the datagrams within a minute.
RESOLVE_SECONDS = 60.0


class StatsdUDP:
    """Datagrams of whole lines, each within max_packet bytes unless one line alone is longer."""

    def __init__(self, host, port, max_packet):
        """OSError if host cannot be resolved now."""
        self.host, self.port, self.max_packet = host, port, max_packet
        self.sock = None
        self._resolve()

    def _resolve(self):
        """The name's address now, and a socket of its family; OSError leaves
        both as they were."""
        addresses = socket.getaddrinfo(self.host, self.port, socket.AF_UNSPEC, socket.SOCK_DGRAM)
        # IPv4 first where a name has both: StatsD servers often listen on it
        # alone (Etsy statsd's default), and a datagram to ::1 is lost unseen.
        family, _, _, _, address = min(addresses, key=lambda a: a[0] != socket.AF_INET)
        if self.sock is None or self.sock.family != family:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)  # a full socket buffer is an error, not a wait
            self.close()
            self.sock = sock
        self.address = address
        self._resolve_at = time.monotonic() + RESOLVE_SECONDS

    def frames(self, lines):
        return statsd_packets(lines, self.max_packet)

    def send(self, frame):
        if time.monotonic() >= self._resolve_at:
            try:
                self._resolve()
            except OSError:  # the resolver down: the last address, until the next look
                self._resolve_at = time.monotonic() + RESOLVE_SECONDS
        self.sock.sendto(frame, self.address)

    def close(self):
        if self.sock:
            self.sock.close()


class StatsdTCP:
    """A stream of lines, each ended by a newline; connected at the first send,
    and again at the send after a failure."""

    def __init__(self, host, port):
        self.address, self.sock = (host, port), None

    def frames(self, lines):
        return [b"".join(line + b"\n" for line in lines)] if lines else []

    def send(self, frame):
        try:
            if self.sock is None:
                self.sock = socket.create_connection(self.address, timeout=1.0)
            self.sock.sendall(frame)
        except OSError:
            self.close()
            raise

    def close(self):
        if self.sock:
            self.sock.close()
            self.sock = None


class StatsdOutput:
    """StatsD counters and gauges, UTF-8 (what Etsy statsd and Telegraf's statsd
    input read), over UDP or TCP. Sending never blocks for long and never
    raises: a failed send is counted (send_errors), as StatsD over UDP is
    fire-and-forget."""

    def __init__(self, host, port, protocol="udp", tag_style="influx",
                 max_packet=STATSD_MAX_PACKET):
        self.where = f"{protocol}://{host}:{port}"
        self.transport = StatsdTCP(host, port) if protocol == "tcp" else StatsdUDP(host, port,
                                                                                   max_packet)
        self.tag_style = tag_style
        self.send_errors = self._reported = 0
        self._failing = False

    @classmethod
    def from_args(cls, args):
        try:
            return cls(args.statsd_host, args.statsd_port, args.statsd_protocol, args.statsd_tags)
        except OSError as e:
            raise UsageError(f"StatsD host {args.statsd_host!r}: {e}") from None

    def failed(self, error):
        self.send_errors += 1
        if not self._failing:
            log.warn(f"StatsD at {self.where}: {error.strerror or error}; counts sent meanwhile "
                     "are lost (send_errors counts the failed sends)")
            self._failing = True

    def write(self, points):
        errors = self.send_errors
        lines = [line.encode() for point in points for line in statsd_lines(point, self.tag_style)]
        for frame in self.transport.frames(lines):
            try:
                self.transport.send(frame)
            except OSError as e:
                self.failed(e)
        if self._failing and self.send_errors == errors:
            log.info(f"StatsD at {self.where} takes counts again")
            self._failing = False

    def health(self):
        errors, self._reported = self.send_errors - self._reported, self.send_errors
        return {"send_errors": errors}

    def close(self):
        self.transport.close()
