"""Causes one kind of TCP (or, for negative controls, non-TCP) drop.

Run inside a test's network namespace: `ip netns exec NS python traffic.py KIND ...`.
Prints what the test needs to know (ports, sequence numbers) as `key=value`.
"""
import json
import os
import socket
import struct
import subprocess
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
    """connect() from a fixed source port (any if 0; printed): a SYN (and its
    retransmits until timeout)."""
    s = socket.socket(family_of(host))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", int(sport)))
    print(f"sport={s.getsockname()[1]}")
    sys.stdout.flush()
    s.settimeout(float(timeout))
    try:
        s.connect((host, int(port)))
    except (ConnectionRefusedError, TimeoutError, socket.timeout):
        pass


def syns(host, port, first_sport, count):
    """count SYNs to a closed port, each from its own source port."""
    for sport in range(int(first_sport), int(first_sport) + int(count)):
        syn(host, port, sport)


def tcp_segment(src, dst, sport, dport, seq, flags, payload=b"", ack=0):
    """A TCP header (no options) and payload, checksummed for src -> dst."""
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
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


def steady_syns(port, rate, seconds):
    """SYNs to port, rate a second (in bursts of a tenth of a second's), for
    that many seconds. Prints how many were sent."""
    started, sent = time.monotonic(), 0
    while time.monotonic() < started + float(seconds):
        due = int((time.monotonic() - started) * float(rate))
        for _ in range(due - sent):
            send_ipv4(tcp_segment("127.0.0.1", "127.0.0.1", 40000, int(port), sent, 0x02))
            sent += 1
        time.sleep(0.1)
    print(f"sent={sent}")


def syn_churn(port, seconds, ports, phase_seconds):
    """SYNs to port for that many seconds, each from a random one of `ports`
    source ports; every phase_seconds the other half of them (tag sets that
    go idle, and come back). Prints how many were sent."""
    import random
    started = time.monotonic()
    deadline, sent, half = started + float(seconds), 0, int(ports) // 2
    while time.monotonic() < deadline:
        phase = int((time.monotonic() - started) / float(phase_seconds)) % 2
        for _ in range(100):
            send_ipv4(tcp_segment("127.0.0.1", "127.0.0.1", 20000 + phase * half + random.randrange(half),
                                  int(port), sent, 0x02))
            sent += 1
    print(f"sent={sent}")


def fill_then_stream(port, fill_ports, stream_ports, seconds):
    """A SYN to port from each of fill_ports source ports (enough tag sets to
    fill a small table), then for that many seconds a stream of SYNs from
    stream_ports source ports (a few tag sets). Each is answered with a RST,
    dropped too. Prints how many the stream sent."""
    for sport in range(30000, 30000 + int(fill_ports)):
        send_ipv4(tcp_segment("127.0.0.1", "127.0.0.1", sport, int(port), 1, 0x02))
    deadline, sent = time.monotonic() + float(seconds), 0
    while time.monotonic() < deadline:
        for sport in range(20000, 20000 + int(stream_ports)):
            send_ipv4(tcp_segment("127.0.0.1", "127.0.0.1", sport, int(port), sent, 0x02))
            sent += 1
    print(f"sent={sent}")


def icmp_copies(seconds):
    """Reads every ICMP packet's copy from a raw socket for that many seconds:
    each freed with consume_skb() here, in process context. Prints the count."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.settimeout(0.2)
    deadline, read = time.monotonic() + float(seconds), 0
    while time.monotonic() < deadline:
        try:
            sock.recv(128)
            read += 1
        except (TimeoutError, socket.timeout):
            pass
    print(f"read={read}")


def echo_requests(seconds):
    """ICMP echo requests to 127.0.0.1 for that many seconds, as fast as they
    go: each answered, and freed with consume_skb() in a softirq."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    request = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping"
    request = request[:2] + struct.pack("!H", checksum(request)) + request[4:]
    deadline, sent = time.monotonic() + float(seconds), 0
    while time.monotonic() < deadline:
        for _ in range(100):
            sock.sendto(request, ("127.0.0.1", 0))
        sent += 100
    print(f"sent={sent}")


TUNSETIFF, SIOCETHTOOL, ETHTOOL_SGRO = 0x400454CA, 0x8946, 0x2C
IFF_TAP, IFF_NAPI, IFF_NAPI_FRAGS, IFF_NO_PI = 0x0002, 0x0010, 0x0020, 0x1000
TAP = "tcpdrop-tap"


def frames_in_frags(family, sport, dport, count):
    """count SYNs into a tap whose driver builds each frame as a NIC on the
    GRO frags path does (tun's IFF_NAPI_FRAGS: the first write segment, the
    Ethernet header, is the linear data; the IP packet is in frags[0]), GRO
    off, to a MAC that is not the tap's: ip_rcv_core() drops each as
    OTHERHOST before it pulls the IP header in. Prints the count and the IP
    length."""
    import array
    import fcntl
    if not os.path.exists("/dev/net/tun"):  # tun is a module that nothing loaded yet
        subprocess.run(["modprobe", "tun"], check=True)
    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", TAP.encode(), IFF_TAP | IFF_NO_PI | IFF_NAPI |
                                            IFF_NAPI_FRAGS))
    subprocess.run(["ip", "link", "set", TAP, "up"], check=True)
    gro_off = array.array("I", [ETHTOOL_SGRO, 0])
    with socket.socket() as sock:
        fcntl.ioctl(sock, SIOCETHTOOL, struct.pack("16sP", TAP.encode(), gro_off.buffer_info()[0]))
    segment = tcp_segment(*((CLIENT_V6, SERVER_V6) if family == "6" else (CLIENT_V4, SERVER_V4)),
                          int(sport), int(dport), 1, 0x02)
    packet = ipv6(6, segment) if family == "6" else ipv4(segment, 1)
    ethernet = bytes.fromhex("020000000099" + CLIENT_MAC.replace(":", "")) + \
        struct.pack("!H", ETH_P_IPV6 if family == "6" else ETH_P_IP)
    for _ in range(int(count)):
        os.writev(tun, [ethernet, packet])
    time.sleep(0.1)
    # the device's own count of the frames it dropped as not for this host (5.19+)
    [link] = json.loads(subprocess.run(["ip", "-s", "-s", "-j", "link", "show", TAP],
                                       capture_output=True, text=True, check=True).stdout)
    print(f"sent={count} len={len(packet)} otherhost={link['stats64']['rx'].get('otherhost', '-')}")


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


def cookie_acks(port, count, accepted):
    """Syncookies always on (the test sets net.ipv4.tcp_syncookies=2): count
    SYNs from a raw socket each get a cookie in their SYN-ACK; then two
    connections fill the accept queue of a listener with room for two (which
    never accepts until told); the count ACKs that answer the cookies find it
    full and are refused (cookie_v4_check(): ListenOverflows, ListenDrops, the
    ACK dropped). Then the two are accepted, and that many more connections
    are made and accepted. Prints the refused ACKs' first source port."""
    server = socket.socket()
    server.bind(("127.0.0.1", int(port)))
    server.listen(1)
    sports = range(31000, 31000 + int(count))
    cookies = syn_acks(port, sports)
    queued = [socket.create_connection(("127.0.0.1", int(port))) for _ in range(2)]
    time.sleep(0.1)  # both in the accept queue: it is full
    for sport, cookie in cookies.items():
        send_ipv4(tcp_segment("127.0.0.1", "127.0.0.1", sport, int(port), 1001, 0x10,
                              ack=(cookie + 1) & 0xFFFFFFFF))
    time.sleep(0.1)
    accepted_sockets = [server.accept()[0] for _ in queued]
    for _ in range(int(accepted)):
        queued.append(socket.create_connection(("127.0.0.1", int(port))))
        accepted_sockets.append(server.accept()[0])
    print(f"sport={sports[0]}")
    for s in queued + accepted_sockets:
        s.close()


def syn_acks(port, sports):
    """Sends a SYN to port from each of sports (a raw socket: no socket of
    ours there) and returns {sport: the SYN-ACK's sequence number}."""
    sniffer = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    sniffer.settimeout(5)
    for sport in sports:
        send_ipv4(tcp_segment("127.0.0.1", "127.0.0.1", sport, int(port), 1000, 0x02))
    isns = {}
    while len(isns) < len(sports):
        packet = sniffer.recv(128)
        tcp = packet[(packet[0] & 0x0F) * 4:]
        source, dest, seq = struct.unpack("!HHI", tcp[:8])
        if source == int(port) and dest in sports and tcp[13] & 0x12 == 0x12:  # SYN|ACK
            isns[dest] = seq
    return isns


def icmp_aborts_requests(port, count):
    """A listener, count SYNs from a raw socket (the test drops the RSTs that
    would answer their SYN-ACKs), then for each an ICMP host unreachable that
    quotes its SYN-ACK: tcp_req_err() drops the request and counts it in
    ListenDrops, though no packet of it is dropped. Prints the count."""
    server = socket.socket()
    server.bind(("127.0.0.1", int(port)))
    server.listen(int(count) + 1)
    sports = range(32000, 32000 + int(count))
    for sport, isn in syn_acks(port, sports).items():
        quoted = ipv4_header(int(port), sport) + struct.pack("!HHI", int(port), sport, isn)
        error = struct.pack("!BBHI", 3, 1, 0, 0) + quoted  # destination unreachable: host
        send_ipv4(error[:2] + struct.pack("!H", checksum(error)) + error[4:], protocol=1)
    time.sleep(0.1)
    print(f"sent={count}")
    server.close()


def ipv4_header(sport, dport):
    """The IPv4 header of a SYN-ACK 127.0.0.1:sport -> 127.0.0.1:dport, as an ICMP error quotes it."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 44, 0, 0, 64, 6, 0,
                         socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:]


CLONE_NEWNET, SIOCSIFFLAGS, IFF_UP = 0x40000000, 0x8914, 0x1


def many_listeners(namespaces, port, clients):
    """That many network namespaces, each with a listener with room for two
    connections that never accepts: first every listener listens, then each
    gets that many connections at once, one namespace after another. Prints
    each namespace's inode and its ListenDrops, as `ns<inode>=<drops>`.
    One process moves between them (a process each would take more memory
    than a small VM has)."""
    import ctypes
    import fcntl
    import resource
    libc = ctypes.CDLL(None, use_errno=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # a listener and a handle to each namespace
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listening = []
    for _ in range(int(namespaces)):
        if libc.unshare(CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), "unshare")
        with socket.socket() as sock:  # lo up
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", b"lo", IFF_UP))
        server = socket.socket()
        server.bind(("127.0.0.1", int(port)))
        server.listen(1)
        listening.append((os.open("/proc/thread-self/ns/net", os.O_RDONLY), server))
    for netns, _ in listening:
        if libc.setns(netns, CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), "setns")
        connect_storm("127.0.0.1", port, clients, "0.05")  # refused at once, on loopback
        with open("/proc/thread-self/net/netstat") as f:
            names, values = [line.split() for line in f][:2]
        print(f"ns{os.fstat(netns).st_ino}={values[names.index('ListenDrops')]}")


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


# Crafted frames (tests/test_malformed.py): its veth pair joins the client's
# namespace (VETH) to the server's; frames go out of VETH as they are built.
VETH = "veth0"
CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
CLIENT_V4, SERVER_V4 = "10.99.0.1", "10.99.0.2"
CLIENT_V6, SERVER_V6 = "fd99::1", "fd99::2"
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
IP_MF = 0x2000  # IPv4: more fragments (the offset is the low 13 bits, in 8 bytes)
# IPv6 extension headers (next header numbers), as ipv6_chain() builds them.
IPV6_EXT = {"hop": 0, "routing": 43, "fragment": 44, "ah": 51, "mobility": 135,
            "dest": 60, "hip": 139, "shim6": 140}


def send_frames(packets):
    """Each IP packet, as it is, in an Ethernet frame out of VETH to the server
    (AF_PACKET: no byte of it changed). Prints the count and the IP length."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((VETH, 0))
    macs = bytes.fromhex(SERVER_MAC.replace(":", "") + CLIENT_MAC.replace(":", ""))
    for packet in packets:
        sock.send(macs + struct.pack("!H", ETH_P_IP if packet[0] >> 4 == 4 else ETH_P_IPV6) + packet)
    print(f"sent={len(packets)} len={len(packets[0])}")


def ipv4(payload, ident, tot_len=None, options=b"", frag=0):
    """An IPv4 header CLIENT_V4 -> SERVER_V4 (TCP, checksummed) before payload;
    tot_len: the length it claims, if not the real one; frag: its flags and
    fragment offset field (IP_MF | offset in 8 bytes)."""
    ihl = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot_len or ihl * 4 + len(payload), ident,
                         frag, 64, 6, 0, socket.inet_aton(CLIENT_V4), socket.inet_aton(SERVER_V4))
    header += options
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def ipv6(nexthdr, payload, payload_len=None):
    """An IPv6 header CLIENT_V6 -> SERVER_V6 before payload; payload_len: the
    length it claims, if not the real one."""
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload) if payload_len is None else payload_len,
                       nexthdr, 64, socket.inet_pton(socket.AF_INET6, CLIENT_V6),
                       socket.inet_pton(socket.AF_INET6, SERVER_V6)) + payload


def ipv6_chain(kinds, last=6, ident=1, offset=0, more=False):
    """IPv6 extension headers of these IPV6_EXT kinds, in order, the last one's
    next header `last`: (the IPv6 header's next header, the headers' bytes).
    Options headers carry one PadN; routing is type 0 with no segment left
    (the kernel skips it); fragment: offset (8-byte units) and more; AH has a
    4-byte ICV; HIP is its 40-byte minimum (sender and receiver HITs)."""
    chain = b""
    for kind, nexthdr in reversed(list(zip(kinds, [IPV6_EXT[k] for k in kinds[1:]] + [last]))):
        if kind in ("hop", "dest", "shim6"):
            header = bytes([nexthdr, 0, 1, 4, 0, 0, 0, 0])
        elif kind == "routing":
            header = bytes([nexthdr, 0, 0, 0, 0, 0, 0, 0])
        elif kind == "fragment":
            header = struct.pack("!BxHI", nexthdr, offset << 3 | more, ident)
        elif kind == "ah":
            header = struct.pack("!BBxxIII", nexthdr, 2, 0x100, 1, 0)  # length in 4 bytes, minus 2
        elif kind == "hip":
            header = bytes([nexthdr, 4, 1, 0x11]) + bytes(36)  # I1, HIP version 1
        chain = header + chain
    return IPV6_EXT[kinds[0]] if kinds else last, chain


def crafted_syn(family, sport, dport, seq):
    """A SYN CLIENT -> SERVER (family 4 or 6), TCP-checksummed: 20 bytes."""
    src, dst = (CLIENT_V4, SERVER_V4) if int(family) == 4 else (CLIENT_V6, SERVER_V6)
    return tcp_segment(src, dst, int(sport), int(dport), seq, 0x02)


def lying_length(family, sport, dport, count):
    """SYNs to dport whose IP header claims 1500 bytes (IPv6: a 1460-byte
    payload) where the packet holds 40 (IPv6: 60): ip_rcv_core()/ip6_rcv_core()
    drop them as PKT_TOO_SMALL (Ip(6)InTruncatedPkts)."""
    if int(family) == 4:
        send_frames([ipv4(crafted_syn(4, sport, dport, i), i + 1, tot_len=1500) for i in range(int(count))])
    else:
        send_frames([ipv6(6, crafted_syn(6, sport, dport, i), payload_len=1460) for i in range(int(count))])


def short_tcp_packets(family, tcp_bytes, sport, dport, count):
    """Packets holding only the first tcp_bytes bytes of a SYN's TCP header, their
    IP lengths true: tcp_v4_rcv()/tcp_v6_rcv() cannot pull 20 bytes and drop them
    (TcpInSegs counts them; no RST). 20 bytes: the whole SYN, to a closed port.
    SYN i has sequence number i."""
    segments = [crafted_syn(family, sport, dport, i)[:int(tcp_bytes)] for i in range(int(count))]
    if int(family) == 4:
        return [ipv4(s, i + 1) for i, s in enumerate(segments)]
    return [ipv6(6, s) for s in segments]


def short_tcp(*args):
    send_frames(short_tcp_packets(*args))


def syn_behind_ip_options_packets(option_bytes, sport, dport, count):
    """SYNs to a closed port in IPv4 packets with option_bytes of options (NOPs,
    then an End of Options list): NO_SOCKET, the TCP header at 20 + option_bytes.
    SYN i has sequence number i."""
    options = b"\x01" * (int(option_bytes) - 1) + b"\x00"
    return [ipv4(crafted_syn(4, sport, dport, i), i + 1, options=options) for i in range(int(count))]


def syn_behind_ipv6_headers_packets(kinds, sport, dport, count):
    """SYNs behind the IPv6 extension headers kinds (comma-separated IPV6_EXT
    names, or "none"): to a closed port, NO_SOCKET where the kernel walks them
    all; it has no handler for AH (this kernel), HIP, Shim6 or Mobility. SYN i
    has sequence number i."""
    kinds = [] if kinds == "none" else kinds.split(",")
    packets = []
    for i in range(int(count)):
        first, chain = ipv6_chain(kinds, ident=i + 1)
        packets.append(ipv6(first, chain + crafted_syn(6, sport, dport, i)))
    return packets


def syn_with_data_packets(family, data_bytes, sport, dport, count):
    """SYNs carrying data_bytes of data (byte i % 256 at offset i) to a closed
    port: NO_SOCKET. SYN i has sequence number i."""
    src, dst = (CLIENT_V4, SERVER_V4) if int(family) == 4 else (CLIENT_V6, SERVER_V6)
    data = bytes(i % 256 for i in range(int(data_bytes)))
    segments = [tcp_segment(src, dst, int(sport), int(dport), i, 0x02, data) for i in range(int(count))]
    if int(family) == 4:
        return [ipv4(s, i + 1) for i, s in enumerate(segments)]
    return [ipv6(6, s) for s in segments]


def syn_behind_ip_options(*args):
    send_frames(syn_behind_ip_options_packets(*args))


def syn_behind_ipv6_headers(*args):
    send_frames(syn_behind_ipv6_headers_packets(*args))


def syn_with_data(*args):
    send_frames(syn_with_data_packets(*args))


def syn_behind_mobility(payload_proto, sport, dport, count):
    """A Mobility header (Binding Refresh Request, checksummed) whose payload
    proto is payload_proto (59, no next header, is the only one RFC 6275
    allows), then a SYN's bytes: no protocol handler takes Mobility."""
    packets = []
    for i in range(int(count)):
        mobility = bytes([int(payload_proto), 0, 0, 0, 0, 0, 0, 0])
        pseudo = socket.inet_pton(socket.AF_INET6, CLIENT_V6) + socket.inet_pton(socket.AF_INET6, SERVER_V6) + \
            struct.pack("!IxxxB", len(mobility), 135)
        mobility = mobility[:4] + struct.pack("!H", checksum(pseudo + mobility)) + mobility[6:]
        packets.append(ipv6(135, mobility + crafted_syn(6, sport, dport, i)))
    send_frames(packets)


def fragment(family, which, sport, dport, count):
    """Fragments of SYNs that never complete, each of its own datagram: which=first
    carries the TCP header (the SYN, 4 bytes of data, more to come); which=later
    is at offset 24, the last, holding a SYN's bytes as data. The server frees
    them at its reassembly timeout (FRAG_REASM_TIMEOUT; Ip(6)ReasmFails)."""
    packets = []
    for i in range(int(count)):
        syn = crafted_syn(family, sport, dport, i)
        data = syn + b"data" if which == "first" else syn
        if int(family) == 4:
            frag = IP_MF if which == "first" else 24 // 8
            packets.append(ipv4(data, i + 1, frag=frag))
        else:
            first, chain = ipv6_chain(["fragment"], ident=i + 1, offset=0 if which == "first" else 24 // 8,
                                      more=which == "first")
            packets.append(ipv6(first, chain + data))
    send_frames(packets)


KINDS = {"bad-checksum": bad_checksum, "low-ttl": low_ttl, "md5-not-found": md5_not_found,
         "listen-full": listen_full, "connect-storm": connect_storm, "syn-queue-full": syn_queue_full,
         "cookie-acks": cookie_acks, "many-listeners": many_listeners,
         "icmp-aborts-requests": icmp_aborts_requests, "syn": syn, "syns": syns, "raw-syns": raw_syns,
         "syn-churn": syn_churn, "steady-syns": steady_syns,
         "fill-then-stream": fill_then_stream, "old-segment": old_segment, "listen-overflow": listen_overflow,
         "syn-with-ip-options": syn_with_ip_options,
         "syn-with-ipv6-extensions": syn_with_ipv6_extensions,
         "udp": udp, "icmp-bad-checksum": icmp_bad_checksum,
         "icmp-copies": icmp_copies, "echo-requests": echo_requests,
         "frames-in-frags": frames_in_frags,
         "lying-length": lying_length, "short-tcp": short_tcp,
         "syn-behind-ip-options": syn_behind_ip_options,
         "syn-behind-ipv6-headers": syn_behind_ipv6_headers,
         "syn-behind-mobility": syn_behind_mobility, "fragment": fragment,
         "syn-with-data": syn_with_data}

if __name__ == "__main__":
    KINDS[sys.argv[1]](*sys.argv[2:])
    sys.stdout.flush()
