"""Runs inside a test machine (tests/test_arm64.py): COUNT SYNs to a closed
port, from a raw socket in a network namespace of their own, while the
installed `telegraf-tcpdrop metrics` runs, beside what the kernel counted of
the same packets: nftables' rule counter (SYNs in) and the namespace's
TcpOutRsts (a RST answers each SYN to a closed port; it is dropped in turn,
no one listens on the SYNs' source port).

    python3 exact_syns.py OUTFILE [COUNT]

Writes OUTFILE (JSON): sent, the monitor's drops per (flags, reason, frame)
for the port, nft_syns, TcpOutRsts, and the monitor's exit code and stderr.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import Netns, eventually, parse_line  # noqa: E402
from guest_scenarios import Run  # noqa: E402

PORT, SPORT = 7999, 40000


def main(outfile, count=1000):
    count = int(count)
    ns = Netns()
    try:
        ns.sh("nft", "-f", "-", input=f"""
            table inet count {{
                chain input {{ type filter hook input priority 0; tcp dport {PORT} counter; }}
            }}""")
        # Run: as guest_scenarios.py runs it (attach waited for up to 10 min:
        # emulation is slow); a newline on stdin emits the counts so far.
        metrics = Run([], ["--port", str(PORT)], "metrics")
        ns.traffic("raw-syns", PORT, count, SPORT)

        def drops():
            """The monitor's drops so far, per (ports, flags, reason, frame)."""
            found = {}
            for measurement, tags, fields, _ in map(parse_line, list(metrics.stdout)):
                if measurement == "tcpdrop":
                    key = f"{tags['sport']}>{tags['dport']} {tags['flags']} {tags['reason']} {tags['frame']}"
                    found[key] = found.get(key, 0) + fields["drops"]
            return found

        def emitted():
            metrics.proc.stdin.write("\n")
            metrics.proc.stdin.flush()
            return sum(drops().values()) >= 2 * count  # the SYNs and the RSTs
        seen = eventually(emitted, timeout=120, interval=1)
        run = metrics.stop()  # emits what is pending
        ruleset = json.loads(ns.sh("nft", "-j", "list", "ruleset"))
        [rule] = [item["rule"] for item in ruleset["nftables"] if "rule" in item]
        [counter] = [expr["counter"] for expr in rule["expr"] if "counter" in expr]
        result = {"sent": count, "port": PORT, "sport": SPORT, "seen_in_time": bool(seen),
                  "drops": drops(), "nft_syns": counter["packets"],
                  "TcpOutRsts": ns.counter("TcpOutRsts"),
                  "exit": run["exit"], "stderr": run["stderr"], "startup_s": run["startup_s"]}
    finally:
        ns.delete()
    Path(outfile).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
