"""Causes one kind of TCP (or, for negative controls, non-TCP) drop.

Run inside a test's network namespace: `ip netns exec NS python traffic.py KIND ...`.
Prints what the test needs to know (ports, sequence numbers) as `key=value`.
"""
import socket
import struct
import sys
import time

TCP_DEFER_ACCEPT, TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ = 9, 19, 20, 21
TCP_SEND_QUEUE = 2


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def syn(host, port, sport, timeout="1"):
    """connect() from a fixed source port: a SYN (and its retransmits until timeout)."""
    s = socket.socket(family_of(host))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(sport)))
    s.settimeout(float(timeout))
    try:
        s.connect((host, int(port)))
    except (ConnectionRefusedError, TimeoutError, socket.timeout):
        pass


def syns(host, port, first_sport, count):
    """count SYNs to a closed port, each from its own source port."""
    for sport in range(int(first_sport), int(first_sport) + int(count)):
        syn(host, port, sport)


def old_segment(port):
    """An established connection, then a data segment far behind its window."""
    server = socket.socket()
    server.bind(("127.0.0.1", int(port)))
    server.listen(1)
    client = socket.create_connection(("127.0.0.1", int(port)))
    accepted, _ = server.accept()
    sport = client.getsockname()[1]
    # Repair mode shows the client's next sequence number; the client stays in
    # it, so it never sends on its own (leaving would send a window probe).
    client.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    client.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
    snd_nxt = client.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ) & 0xFFFFFFFF
    payload = b"stale data"
    seq = (snd_nxt - 100000) & 0xFFFFFFFF
    header = struct.pack("!HHIIBBHHH", sport, int(port), seq, 1, 5 << 4, 0x18, 65535, 0, 0)
    pseudo = socket.inet_aton("127.0.0.1") * 2 + struct.pack("!BBH", 0, 6, len(header) + len(payload))
    header = header[:16] + struct.pack("!H", checksum(pseudo + header + payload)) + header[18:]
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(header) + len(payload), 0, 0, 64, 6, 0,
                     socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
    raw.sendto(ip + header + payload, ("127.0.0.1", 0))
    print(f"sport={sport}")
    time.sleep(0.2)
    accepted.close()


def listen_overflow(port):
    """A listener with room for one connection and two clients: one client's
    data segment completes its handshake (deferred by TCP_DEFER_ACCEPT) when
    the other already fills the accept queue. Which one depends on whether
    the kernel answered its SYN with a syncookie (full SYN queue)."""
    server = socket.socket()
    server.bind(("127.0.0.1", int(port)))
    server.listen(0)  # room for one connection
    server.setsockopt(socket.IPPROTO_TCP, TCP_DEFER_ACCEPT, 5)
    first = socket.create_connection(("127.0.0.1", int(port)))
    second = socket.create_connection(("127.0.0.1", int(port)))
    first.send(b"1")
    time.sleep(0.1)
    second.send(b"2")
    print(f"sports={first.getsockname()[1]},{second.getsockname()[1]}")
    time.sleep(0.2)


def udp(host, port):
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    s.sendto(b"no one listens", (host, int(port)))
    time.sleep(0.05)


def icmp_bad_checksum(host):
    """An ICMP echo request with a wrong checksum: dropped by icmp_rcv."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    packet = struct.pack("!BBHHH", 8, 0, 0xDEAD, 1, 1) + b"ping"
    s.sendto(packet, (host, 0))
    time.sleep(0.05)


KINDS = {"syn": syn, "syns": syns, "old-segment": old_segment, "listen-overflow": listen_overflow,
         "udp": udp, "icmp-bad-checksum": icmp_bad_checksum}

if __name__ == "__main__":
    KINDS[sys.argv[1]](*sys.argv[2:])
    sys.stdout.flush()
