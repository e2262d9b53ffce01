"""`trace --pcap`: the dropped packets, read back by the real tcpdump and tshark.

Frames crafted in a client namespace cross a veth into a server namespace,
where the kernel drops them (a closed port: NO_SOCKET). What was sent is
known to the byte, so each packet in the pcap is compared with it whole; a
SYN the kernel made itself is compared with what tcpdump captured on the
server's veth as it came in.
"""
import subprocess

import pytest

import traffic
from conftest import CLI, Tracer, eventually

pytestmark = pytest.mark.kernel

DPORT = 9  # closed in the server namespace
COUNT = 3
TSHARK_FIELDS = ("frame.number", "tcp.srcport", "tcp.dstport", "tcp.flags", "tcp.seq_raw", "frame.len",
                 "frame.cap_len", "frame.comment")

# name: (tests/traffic.py's kind and its arguments before sport, dport, count; family)
CASES = {
    "ipv4": (("short-tcp", 4, 20), 4),  # the whole SYN
    "ipv4-40-bytes-of-options": (("syn-behind-ip-options", 40), 4),
    "ipv6": (("short-tcp", 6, 20), 6),
    "ipv6-3-extension-headers": (("syn-behind-ipv6-headers", "hop,dest,routing"), 6),
}
SPORTS = {name: 24000 + i for i, name in enumerate(CASES)}


def packets(kind, *args):
    """The IP packets tests/traffic.py sends for kind, byte for byte."""
    return getattr(traffic, kind.replace("-", "_") + "_packets")(*args)


def tshark(path, sport):
    """One dict per packet from sport, of TSHARK_FIELDS, as tshark reads them."""
    out = subprocess.run(["tshark", "-r", str(path), "-Y", f"tcp.srcport == {sport}", "-T", "fields",
                          *(arg for field in TSHARK_FIELDS for arg in ("-e", field))],
                         capture_output=True, text=True, check=True).stdout
    return [dict(zip(TSHARK_FIELDS, line.split("\t"))) for line in out.splitlines()]


def tcpdump_bytes(path, sport, link_header=0):
    """The captured bytes of each packet from sport, as `tcpdump -xx` prints
    them (after link_header bytes of link-layer header). Which packets are
    from sport, tshark says: tcpdump's own filter does not look past IPv6
    extension headers."""
    out = subprocess.run(["tcpdump", "-r", str(path), "-nn", "-xx"],
                         capture_output=True, text=True, check=True).stdout
    dumps = []
    for line in out.splitlines():
        if line.startswith("\t0x"):
            dumps[-1] += bytes.fromhex("".join(line.split(":", 1)[1].split()))
        else:
            dumps.append(b"")
    return [dumps[int(p["frame.number"]) - 1][link_header:] for p in tshark(path, sport)]


def captured(path, sport):
    """The witness's packets from sport, once the file holds them; None while
    tcpdump is still writing one."""
    try:
        return tcpdump_bytes(path, sport, link_header=14)
    except subprocess.CalledProcessError:
        return None


def traced(tmp_path, *args):
    path = tmp_path / "drops.pcapng"
    return Tracer("--no-stack", "--rate-limit", "0", "--pcap", str(path), *args), path


def drops_from(tracer, sport, count):
    return eventually(lambda: len([e for e in tracer.events if e["sport"] == sport]) >= count,
                      timeout=10)


@pytest.mark.parametrize("name", CASES)
def test_crafted_syns_come_back_byte_for_byte(tmp_path, pair, name):
    (kind, *args), family = CASES[name]
    sport = SPORTS[name]
    server, client = pair
    tracer, path = traced(tmp_path)
    client.traffic(kind, *args, sport, DPORT, COUNT)
    assert drops_from(tracer, sport, COUNT)
    assert tracer.stop() == 0

    sent = packets(kind, *args, sport, DPORT, COUNT)
    assert tcpdump_bytes(path, sport) == sent
    seen = tshark(path, sport)
    comment = f"NO_SOCKET at tcp_v{family}_rcv+0x"
    assert [(p["tcp.srcport"], p["tcp.dstport"], p["tcp.flags"], p["tcp.seq_raw"], p["frame.len"],
             p["frame.cap_len"], p["frame.comment"].startswith(comment),
             p["frame.comment"].endswith(f"; state NONE; netns {server.name}")) for p in seen] == \
        [(str(sport), str(DPORT), "0x0002", str(seq), str(len(sent[0])), str(len(sent[0])), True, True)
         for seq in range(COUNT)]


@pytest.mark.parametrize("family", [4, 6])
def test_a_kernel_made_syn_is_what_tcpdump_saw_arrive(tmp_path, pair, family):
    """A real connect() from the client to a closed port: the packet in our pcap
    is the one tcpdump captured on the server's veth (timestamps, options and
    all), with the drop's time close to tcpdump's."""
    server, client = pair
    witness_path = tmp_path / "veth1.pcap"
    witness = subprocess.Popen(["ip", "netns", "exec", server.name, "tcpdump", "-i", "veth1", "--immediate-mode", "-U", "-n",
                                "-w", str(witness_path), "tcp", "and", "dst", "port", str(DPORT)],
                               stderr=subprocess.PIPE, text=True)
    assert "listening on" in witness.stderr.readline()
    tracer, path = traced(tmp_path)
    host = traffic.SERVER_V4 if family == 4 else traffic.SERVER_V6
    sport = int(client.traffic("syn", host, DPORT, 0)["sport"])
    assert drops_from(tracer, sport, 1)
    assert tracer.stop() == 0
    assert eventually(lambda: captured(witness_path, sport))  # tcpdump has written it
    witness.terminate()
    witness.wait(timeout=5)

    ours, theirs = tcpdump_bytes(path, sport), tcpdump_bytes(witness_path, sport, link_header=14)
    assert len(ours) == 1 and ours == theirs[:1], witness.stderr.read()
    [packet] = tshark(path, sport)
    assert (packet["tcp.flags"], packet["tcp.dstport"]) == ("0x0002", str(DPORT))
    times = [float(subprocess.run(["tshark", "-r", str(p), "-Y", f"tcp.srcport == {sport}", "-T",
                                   "fields", "-e", "frame.time_epoch"], capture_output=True,
                                  text=True, check=True).stdout.split()[0])
             for p in (path, witness_path)]
    assert abs(times[0] - times[1]) < 0.05


def test_snaplen_keeps_the_first_bytes_and_says_how_long_the_packet_was(tmp_path, pair):
    server, client = pair
    sport = 24100
    tracer, path = traced(tmp_path, "--snaplen", "100")
    client.traffic("syn-with-data", 4, 1000, sport, DPORT, 1)
    assert drops_from(tracer, sport, 1)
    assert tracer.stop() == 0
    [sent] = packets("syn-with-data", 4, 1000, sport, DPORT, 1)
    assert tcpdump_bytes(path, sport) == [sent[:100]]
    [packet] = tshark(path, sport)
    assert (packet["frame.len"], packet["frame.cap_len"]) == (str(len(sent)), "100")


def test_pcap_on_stdout_streams_to_tcpdump(pair):
    """`trace --pcap - | tcpdump -r -`: each drop reaches the reader as it happens."""
    server, client = pair
    sport = 24200
    pipeline = subprocess.Popen(f"{CLI} trace --pcap - | tcpdump -l -nn -r - 'src port {sport}'",
                                shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    try:
        assert "I! attached" in pipeline.stderr.readline()
        client.traffic("short-tcp", 6, 20, sport, DPORT, 1)
        line = pipeline.stdout.readline()  # before the tracer stops: it came live
        assert f"{traffic.CLIENT_V6}.{sport} > {traffic.SERVER_V6}.{DPORT}: Flags [S], seq 0," in line
    finally:
        subprocess.run(["pkill", "-TERM", "-f", f"{CLI} trace --pcap -"])
        pipeline.wait(timeout=10)


def test_the_rate_limit_holds_packets_back_as_it_does_lines(tmp_path, pair):
    """--rate-limit 2: of 20 SYNs in a burst on one CPU, the pcap has exactly
    the drops trace showed, and the rest are reported held back."""
    server, client = pair
    sport = 24300
    path = tmp_path / "drops.pcapng"
    tracer = Tracer("--no-stack", "--rate-limit", "2", "--pcap", str(path))
    client.traffic("short-tcp", 4, 20, sport, DPORT, 20, cpu=0)
    assert eventually(lambda: server.counter("TcpOutRsts") == 20)
    assert eventually(lambda: any("over the rate limit" in line for line in tracer.stderr), timeout=3)
    assert tracer.stop() == 0
    shown = [e for e in tracer.events if e["sport"] == sport]
    assert 1 <= len(shown) <= 4  # 2 a second, and the burst may straddle a second
    assert len(tshark(path, sport)) == len(shown)
    held_back = sum(int(line.split(",")[1].split()[0]) for line in tracer.stderr
                    if "over the rate limit" in line)
    assert held_back >= 20 - len(shown)
