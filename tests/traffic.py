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
TCP_MD5SIG, IP_MINTTL = 14, 21


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


def tcp_segment(src, dst, sport, dport, seq, flags, payload=b""):
    """A TCP header (no options) and payload, checksummed for src -> dst."""
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0)
    length = len(header) + len(payload)
    if ":" in src:
        pseudo = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + \
            struct.pack("!IxxxB", length, 6)
    else:
        pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!xBH", 6, length)
    return header[:16] + struct.pack("!H", checksum(pseudo + header + payload)) + header[18:] + payload


_raw_ipv4 = None


def send_ipv4(packet_after_header, options=b"", protocol=6):
    """An IPv4 packet 127.0.0.1 -> 127.0.0.1, IP header (with options) built here."""
    global _raw_ipv4
    ihl = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(packet_after_header), 0, 0,
                         64, protocol, 0, socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
    _raw_ipv4 = _raw_ipv4 or socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    _raw_ipv4.sendto(header + options + packet_after_header, ("127.0.0.1", 0))


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
    stale = (snd_nxt - 100000) & 0xFFFFFFFF
    send_ipv4(tcp_segment("127.0.0.1", "127.0.0.1", sport, int(port), stale, 0x18, b"stale data"))
    print(f"sport={sport}")
    time.sleep(0.2)
    accepted.close()


def raw_syns(port, count, sport="random"):
    """count SYNs to port from a raw socket: from sport, or each from a random
    port in the ephemeral range (as a SYN flood would be)."""
    import random
    low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    for i in range(int(count)):
        source = random.randint(low, high) if sport == "random" else int(sport)
        send_ipv4(tcp_segment("127.0.0.1", "127.0.0.1", source, int(port), i, 0x02))


def syn_with_ip_options(port, sport):
    """A SYN in an IPv4 packet with 4 bytes of options (NOPs): the TCP header is not at 20."""
    send_ipv4(tcp_segment("127.0.0.1", "127.0.0.1", int(sport), int(port), 1, 0x02), b"\x01" * 4)
    time.sleep(0.05)


def syn_with_ipv6_extensions(port, sport):
    """A SYN behind two IPv6 extension headers (hop-by-hop, destination options)."""
    segment = tcp_segment("::1", "::1", int(sport), int(port), 1, 0x02)
    hop_by_hop = bytes([60, 0, 1, 4, 0, 0, 0, 0])  # next: dest opts; PadN
    destination = bytes([6, 0, 1, 4, 0, 0, 0, 0])  # next: TCP; PadN
    payload = hop_by_hop + destination + segment
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), 0, 64,
                         socket.inet_pton(socket.AF_INET6, "::1"), socket.inet_pton(socket.AF_INET6, "::1"))
    raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.sendto(header + payload, ("::1", 0))
    time.sleep(0.05)


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


def listen_full(host, port, clients, hold="1.2"):
    """A listener with room for one connection that never accepts, and that
    many clients connecting at once: past the first ones, their SYNs (and the
    retransmit of each, 1 s later) find the accept queue full."""
    server = socket.socket(family_of(host))
    server.bind((host, int(port)))
    server.listen(1)
    connect_storm(host, port, clients, hold)
    server.close()


def connect_storm(host, port, clients, hold="1.2"):
    """That many connections to host:port at once, given hold seconds."""
    waiting = []
    for _ in range(int(clients)):
        client = socket.socket(family_of(host))
        client.setblocking(False)
        client.connect_ex((host, int(port)))
        waiting.append(client)
    time.sleep(float(hold))
    for client in waiting:  # no more retransmits
        client.close()


def syn_queue_full(port, count, hold="0.5"):
    """A listener with room for one request, and count SYNs from random ports
    whose SYN-ACKs no one answers (the test drops the RSTs): the SYN queue
    fills, and with syncookies off the kernel drops the rest."""
    server = socket.socket()
    server.bind(("127.0.0.1", int(port)))
    server.listen(1)
    raw_syns(port, count)
    time.sleep(float(hold))
    server.close()


def bad_checksum(port, sport):
    """A SYN whose TCP checksum is wrong, to a listener: dropped as TCP_CSUM."""
    server = socket.socket()
    server.bind(("127.0.0.1", int(port)))
    server.listen()
    segment = tcp_segment("127.0.0.1", "127.0.0.1", int(sport), int(port), 1, 0x02)
    send_ipv4(segment[:16] + bytes([segment[16] ^ 0xFF]) + segment[17:])
    time.sleep(0.05)


def low_ttl(port):
    """A connection with TTL 1 to a listener that wants 255 (IP_MINTTL): its SYN
    is dropped as TCP_MINTTL, and the retransmit 1 s later too."""
    server = socket.socket()
    server.bind(("127.0.0.1", int(port)))
    server.setsockopt(socket.IPPROTO_IP, IP_MINTTL, 255)
    server.listen()
    client = socket.socket()
    client.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
    client.settimeout(1.5)
    try:
        client.connect(("127.0.0.1", int(port)))
    except (TimeoutError, socket.timeout):
        pass


def md5_not_found(port):
    """A listener that signs with TCP-MD5 for 127.0.0.1, and a client that does
    not: its SYN is dropped as TCP_MD5NOTFOUND."""
    server = socket.socket()
    server.bind(("127.0.0.1", int(port)))
    # struct tcp_md5sig: sockaddr_storage (128), flags, prefixlen, keylen, ifindex, key[80]
    address = struct.pack("=H2s4s", socket.AF_INET, b"", socket.inet_aton("127.0.0.1")).ljust(128, b"\0")
    server.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, address + struct.pack("=BBHI80s", 0, 0, 6, 0, b"secret"))
    server.listen()
    client = socket.socket()
    client.settimeout(0.3)
    try:
        client.connect(("127.0.0.1", int(port)))
    except (TimeoutError, socket.timeout):
        pass


def udp(host, port):
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    s.sendto(b"no one listens", (host, int(port)))
    time.sleep(0.05)


def icmp_bad_checksum():
    """An ICMP echo request with a wrong checksum: dropped by icmp_rcv."""
    send_ipv4(struct.pack("!BBHHH", 8, 0, 0xDEAD, 1, 1) + b"ping", protocol=1)
    time.sleep(0.05)


KINDS = {"bad-checksum": bad_checksum, "low-ttl": low_ttl, "md5-not-found": md5_not_found,
         "listen-full": listen_full, "connect-storm": connect_storm, "syn-queue-full": syn_queue_full, "syn": syn, "syns": syns, "raw-syns": raw_syns, "old-segment": old_segment, "listen-overflow": listen_overflow,
         "syn-with-ip-options": syn_with_ip_options,
         "syn-with-ipv6-extensions": syn_with_ipv6_extensions,
         "udp": udp, "icmp-bad-checksum": icmp_bad_checksum}

if __name__ == "__main__":
    KINDS[sys.argv[1]](*sys.argv[2:])
    sys.stdout.flush()
