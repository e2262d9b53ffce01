"""`trace --pcap`: the dropped packets as a pcapng stream, for tcpdump and Wireshark.

pcapng rather than classic pcap: each packet carries a comment (the drop's
reason, drop site, TCP state and network namespace), which Wireshark shows as
`frame.comment` and `tcpdump -r` reads past. One interface, link type RAW:
the probe copies from the IP header on (the kernel's link header is gone, or
not yet there, at most drop sites), and RAW says IPv4 or IPv6 by the first
nibble. Timestamps in nanoseconds (if_tsresol 9).

Each block is written whole and flushed, so that a reader on a pipe
(`| wireshark -k -i -`) sees each drop as it happens.
"""
import struct

LINKTYPE_RAW = 101
SECTION_HEADER, INTERFACE_DESCRIPTION, ENHANCED_PACKET = 0x0A0D0D0A, 1, 6
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_END, OPT_COMMENT = 0, 1
SHB_USERAPPL = 4
IF_NAME, IF_TSRESOL = 2, 9


def option(code, value):
    """One option: code, length, value padded to 32 bits."""
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)


def block(block_type, body):
    """A block: type, total length, body (32-bit aligned), total length again."""
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


class PcapngWriter:
    """Writes drops to out (a binary file) as pcapng packets."""

    def __init__(self, out, snaplen):
        self.out = out
        section = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)  # length -1: not known
        section += option(SHB_USERAPPL, b"telegraf-tcpdrop trace") + option(OPT_END, b"")
        interface = struct.pack("<HHI", LINKTYPE_RAW, 0, snaplen)
        interface += option(IF_NAME, b"tcpdrop") + option(IF_TSRESOL, bytes([9])) + option(OPT_END, b"")
        self._write(block(SECTION_HEADER, section) + block(INTERFACE_DESCRIPTION, interface))

    def write(self, time_ns, packet, length, comment):
        """One dropped packet: its first bytes as copied (packet), the length
        the kernel held (length), the drop's wall-clock time, a comment."""
        body = struct.pack("<IIIII", 0, time_ns >> 32, time_ns & 0xFFFFFFFF, len(packet), length)
        body += packet + bytes(-len(packet) % 4)
        body += option(OPT_COMMENT, comment.encode()) + option(OPT_END, b"")
        self._write(block(ENHANCED_PACKET, body))

    def _write(self, data):
        self.out.write(data)
        self.out.flush()
