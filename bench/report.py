"""docs/performance.md and its plots, from one bench/run.py results file.

    python bench/report.py [bench/results/<date>.json]   (default: the newest)

The tables are generated: edit this script, not the markdown.
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"
OURS = {"metrics": "tp_btf/kfree_skb", "metrics-tracepoint": "tracepoint/skb/kfree_skb"}
MIB = 1024
NOT_PROCESSES = ("none", "floor", "floor-keyed")  # no CPU, RSS or counts of their own


def kernel_ns(run):
    """Kernel ns of all the monitor's BPF programs per drop of the storm (per
    connection where none are dropped); None where nothing ran."""
    total = sum(p["ns"] for p in run["programs"].values())
    count = run["drops_expected"] or run["packets"]
    return total / count if total and count else None


def fmt(value, digits=0):
    return "–" if value is None else f"{value:,.{digits}f}"


def table(runs):
    lines = ["| monitor | drops/s | kernel ns/drop | × floor | CPU % | peak RSS MiB | seen / expected | "
             "events (held back) | start-up s |", "|" + " --- |" * 9]
    floor = next((kernel_ns(r) for r in runs if r["monitor"] == "floor"), None)
    for r in runs:
        ns, seen = kernel_ns(r), r["seen"]
        ratio = f"{ns / floor:.2f}" if ns and floor else "–"
        counted = f"{seen['drops']:,} / {r['drops_expected']:,}" if "drops" in seen else "–"
        events = f"{seen['events']:,} ({seen['held_back']:,})" if "events" in seen else "–"
        process = r["monitor"] not in NOT_PROCESSES
        lines.append(f"| {r['monitor']} | {fmt(r['drops_per_s'])} | {fmt(ns, 1)} | {ratio} | "
                     f"{fmt(r['cpu_percent'], 2) if process else '–'} | "
                     f"{fmt(r['peak_rss_kib'] / MIB, 1) if process else '–'} | {counted} | {events} | "
                     f"{fmt(r['startup_s'], 2) if process else '–'} |")
    return "\n".join(lines)


def process_value(field, scale=1):
    """A monitor process's own figure (CPU %, RSS); None for none and the floor."""
    return lambda r: None if r["monitor"] in NOT_PROCESSES else r[field] / scale


KERNEL_NS = (kernel_ns, "kernel ns per drop (bpf_stats)")
CPU = (process_value("cpu_percent"), "CPU % of one core (--interval 1s)")
RSS = (process_value("peak_rss_kib", MIB), "peak RSS MiB")


def plot(runs, x, xlabel, path, title, panels=(KERNEL_NS,)):
    """One panel per (value of a run, its label), the monitors as lines."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 1 + 3 * len(panels)), squeeze=False)
    monitors = sorted({r["monitor"] for r in runs} - {"none"})
    for ax, (value, ylabel) in zip(axes[:, 0], panels):
        for i, monitor in enumerate(monitors):
            points = sorted((x(r), value(r)) for r in runs if r["monitor"] == monitor and value(r))
            if points:  # each monitor one colour in every panel
                ax.plot(*zip(*points), marker="o", label=monitor, color=f"C{i}")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def floor_of(runs, run, floor="floor"):
    """That floor's kernel ns in the same step of the same sweep as run."""
    return next(kernel_ns(r) for r in runs if r["monitor"] == floor and r["sweep"] == run["sweep"]
                and (r["packets"], r["sports"], r["pps_asked"]) == (run["packets"], run["sports"], run["pps_asked"]))


def changes():
    """Sections of before/after runs of a change (bench/changes.json)."""
    bench = Path(__file__).resolve().parent
    out = ["\n## Changes, before and after\n",
           "Each change measured with the code before it and after it, back to back on this host "
           "(bench/changes.json): kernel ns per drop, drops counted without any tag "
           "(`map_overflow_drops`), and the monitor's CPU and peak RSS. *keys*: one storm of "
           "1,000,000 SYNs at full speed; *steady*: each port 4 SYNs a second for 10 s.\n"]
    for change in json.loads((bench / "changes.json").read_text()):
        before, after = ({(r["sweep"], r["monitor"], r["sports"]): r for r in
                          json.loads((bench / "results" / change[side]).read_text())["runs"]}
                         for side in ("before", "after"))
        out += [f"### {change['change']}\n",
                f"{change['before_commit']} → {change['after_commit']}: {change['how']}. "
                f"{change.get('note', '')}.\n",
                "| sweep | monitor | source ports | before ns | after ns | without any tag before | after | "
                "CPU % before | after | RSS MiB before | after |",
                "|" + " --- |" * 11]
        for key in sorted(before, key=lambda k: (k[0], k[1], k[2] or 0)):
            if key in after and key[1] not in NOT_PROCESSES:
                b, a = before[key], after[key]
                out.append(f"| {key[0]} | {key[1]} | {key[2] or 0:,} | {fmt(kernel_ns(b), 1)} | "
                           f"{fmt(kernel_ns(a), 1)} | {b['seen'].get('overflow', 0):,} | "
                           f"{a['seen'].get('overflow', 0):,} | {fmt(b['cpu_percent'], 2)} | "
                           f"{fmt(a['cpu_percent'], 2)} | {fmt(b['peak_rss_kib'] / MIB, 1)} | "
                           f"{fmt(a['peak_rss_kib'] / MIB, 1)} |")
        out.append("")
    return out


def targets(runs):
    """Each target of the aggregation path: (target, measured, met)."""
    rate = [r for r in runs if r["sweep"] == "rate"]
    at_max = {r["monitor"]: r for r in rate if r["pps_asked"] == 0 and r["packets"]}
    idle = {r["monitor"]: r for r in rate if r["packets"] == 0}
    ratios = [kernel_ns(r) / kernel_ns(f) for r in rate if r["monitor"] == "metrics" and r["packets"]
              for f in rate if f["monitor"] == "floor" and f["packets"] == r["packets"]]
    ours, floor, bpftrace = (kernel_ns(at_max[m]) for m in ("metrics", "floor", "bpftrace"))
    counted = [r for r in runs if r["monitor"].startswith("metrics") and r["sweep"] != "accept"]
    typical = [r for r in counted if r["sweep"] not in ("keys", "steady")]  # 2 tag sets
    steady = {r["sports"]: r for r in counted if r["sweep"] == "steady"}
    most_keys = max((r for r in counted if r["sweep"] == "keys"), key=lambda r: r["sports"])
    listen = {r["monitor"]: r for r in runs if r["sweep"] == "listen"}
    accept = {r["monitor"]: r for r in runs if r["sweep"] == "accept"}
    netns = {r["monitor"]: kernel_ns(r) for r in runs if r["sweep"] == "netns"}
    keys = {(r["monitor"], r["sports"]): r for r in runs if r["sweep"] == "keys"}
    full, hit = keys[("metrics-full", most_keys["sports"])], keys[("metrics", 10)]
    keyed_floor = floor_of(runs, most_keys, "floor-keyed")
    listen_ours, listen_floor = kernel_ns(listen["metrics"]), kernel_ns(listen["floor"])
    trace = at_max["trace"]
    held = trace["seen"]["held_back"] + trace["seen"]["events"] == trace["drops_expected"]
    cpu_max, cpu_idle = at_max["metrics"]["cpu_percent"], idle["metrics"]["cpu_percent"]
    return [
        ("kernel cost ≤ 1.5× the floor (direct loads, 6.2+), at the max storm",
         f"{ours:.0f} ns = {ours / floor:.2f}× floor ({floor:.0f} ns)", ours <= 1.5 * floor),
        ("the same, at every rate of the sweep", f"{min(ratios):.2f}× to {max(ratios):.2f}×",
         max(ratios) <= 1.5),
        ("well below bpftrace's count by (reason, location)", f"{ours:.0f} vs {bpftrace:.0f} ns",
         ours < bpftrace),
        ("user CPU < 1% of a core at the max storm", f"{cpu_max:.2f}%", cpu_max < 1),
        ("user CPU ≤ 1.1× idle", f"{cpu_max:.3f}% vs {cpu_idle:.3f}% idle",
         cpu_max <= 1.1 * cpu_idle),
        ("seen == sent in every metrics run (overflow counted)",
         f"{sum(r['seen']['drops'] == r['drops_expected'] for r in counted)} of {len(counted)} runs",
         all(r["seen"]["drops"] == r["drops_expected"] for r in counted)),
        ("start-up to attached < 0.3 s", f"{max(r['startup_s'] for r in typical):.2f} s at most",
         max(r["startup_s"] for r in typical) < 0.3),
        ("RSS < 40 MiB", f"{max(r['peak_rss_kib'] for r in typical) / MIB:.1f} MiB at most",
         max(r["peak_rss_kib"] for r in typical) < 40 * MIB),
        (f"kernel cost ≤ 2.0× the floor at {2 * most_keys['sports']:,} tag sets",
         f"{kernel_ns(most_keys):.0f} ns = {kernel_ns(most_keys) / floor_of(runs, most_keys):.2f}× floor",
         kernel_ns(most_keys) <= 2 * floor_of(runs, most_keys)),
        (f"(no target) the keyed floor at {2 * most_keys['sports']:,} tag sets: the least a count per "
         "tag set costs here", f"{keyed_floor:.0f} ns = {keyed_floor / floor_of(runs, most_keys):.2f}× "
         "floor, for its one counter at a hashed index", None),
        (f"kernel cost ≤ 2.0× the keyed floor at {2 * most_keys['sports']:,} tag sets",
         f"{kernel_ns(most_keys):.0f} ns = {kernel_ns(most_keys) / keyed_floor:.2f}× keyed floor",
         kernel_ns(most_keys) <= 2 * keyed_floor),
        ("a full table keeps each drop's why: none counted without any tag (`--max-keys 64`, "
         f"{2 * most_keys['sports']:,} tag sets)",
         f"{full['seen']['overflow']:,} of {full['drops_expected']:,} without any tag",
         full["seen"]["overflow"] == 0),
        ("the full-table path no dearer than a hit (`--max-keys 64` against 20 tag sets that fit)",
         f"{kernel_ns(full):.0f} vs {kernel_ns(hit):.0f} ns", kernel_ns(full) <= kernel_ns(hit)),
        (f"the full-table path no dearer than a hit at the same {2 * most_keys['sports']:,} tag sets "
         "(`--max-keys 64` against the default's room)",
         f"{kernel_ns(full):.0f} vs {kernel_ns(most_keys):.0f} ns", kernel_ns(full) <= kernel_ns(most_keys)),
        (f"(no target) RSS and CPU with {2 * most_keys['sports']:,} tag sets in one storm, more than "
         "`--max-keys`", f"{most_keys['peak_rss_kib'] / MIB:.1f} MiB, {most_keys['cpu_percent']:.1f}% "
         "at --interval 1s, each tag set's tags made as it first drops", None),
        *[(f"user space with {2 * sports:,} tag sets dropping in every interval (`--interval 1s`): "
           f"CPU ≤ {cpu}%", f"{steady[sports]['cpu_percent']:.2f}%", steady[sports]["cpu_percent"] <= cpu)
          for sports, cpu in ((500, 0.2), (5000, 1))],
        ("the same with 10,000 tag sets: RSS < 40 MiB", f"{steady[5000]['peak_rss_kib'] / MIB:.1f} MiB",
         steady[5000]["peak_rss_kib"] < 40 * MIB),
        ("listen-queue drops (SYNs a full accept queue refuses): kernel cost ≤ 2.0× the floor",
         f"{listen_ours:.0f} ns = {listen_ours / listen_floor:.2f}× floor ({listen_floor:.0f} ns)",
         listen_ours <= 2 * listen_floor),
        ("listen-queue drops: seen == sent", f"{listen['metrics']['seen']['drops']:,} of "
         f"{listen['metrics']['drops_expected']:,}; bpftrace on kfree_skb: "
         f"{listen['bpftrace']['seen']['drops']:,}",
         listen["metrics"]["seen"]["drops"] == listen["metrics"]["drops_expected"]),
        ("(no target) kernel time added to each accepted connection",
         f"{kernel_ns(accept['metrics']):.0f} ns by all our programs (the floor's: "
         f"{kernel_ns(accept['floor']):.0f} ns)", None),
        ("the namespace in the key (`--netns-tags`, the default): kernel cost ≤ 2.0× the floor",
         f"{netns['metrics']:.0f} ns = {netns['metrics'] / netns['floor']:.2f}× floor "
         f"({netns['floor']:.0f} ns); without it (`none`): {netns['metrics-no-netns']:.0f} ns = "
         f"{netns['metrics-no-netns'] / netns['floor']:.2f}×", netns["metrics"] <= 2 * netns["floor"]),
        ("trace: rate limit holds, the rest counted", f"{trace['seen']['events']:,} shown, "
         f"{trace['seen']['held_back']:,} held back and reported, of {trace['drops_expected']:,}; "
         f"stopped in {trace['stop_s']:.2f} s", held),
    ]


def main(results_path):
    results = json.loads(Path(results_path).read_text())
    runs = results["runs"]
    host = [r for r in runs if r["kernel"] == results["kernel"]]
    DOCS.mkdir(exist_ok=True)
    rate = [r for r in host if r["sweep"] == "rate" and r["packets"]]
    plot(rate, lambda r: r["drops_per_s"], "drops per second", DOCS / "perf-rate.png",
         "Kernel cost per drop vs drop rate")
    plot([r for r in host if r["sweep"] == "keys"], lambda r: r["sports"],
         "distinct source ports (tag sets: 2 per port, SYN and RST)", DOCS / "perf-keys.png",
         "Cost vs tag sets: the kernel's per drop, the monitor's CPU and memory", (KERNEL_NS, CPU, RSS))
    out = [f"# Performance\n\nGenerated by `make bench` (bench/run.py, then bench/report.py) from "
           f"`{Path(results_path).name}`: kernel {results['kernel']}, {results['cpus']} CPUs. "
           "Do not edit: run `make bench`.\n",
           "Every storm is an exact number of SYNs (bench/synflood.c: a raw socket, `sendmmsg`, "
           "64 per call) in a network namespace of its own. *closed*: to a closed port, so the "
           "SYN and the RST that answers it are both dropped (2 drops per packet, `NO_SOCKET`); "
           "*nft*: to a port nftables drops on input (1 per packet, `NETFILTER_DROP`); *nft-out*: "
           "dropped by nftables on output, so the sender's socket is still attached (the storm in "
           "the 6.1 VM: bcc's tcpdrop reports only drops with a socket); *listen*: to a listener "
           "whose accept queue is full, which refuses each SYN (1 per packet, freed by "
           "`consume_skb`, not `kfree_skb`); *accept*: connections a listener accepts, one after "
           "another (none dropped: what the listen-queue hooks cost on the normal path). Kernel ns "
           "per drop is the `run_time_ns` of all the monitor's BPF programs together "
           "(`kernel.bpf_stats_enabled`, which itself adds two clock reads) over the drops of the "
           "storm (over the connections, for *accept*). *floor*: empty `tp_btf/kfree_skb` and "
           "`tp_btf/consume_skb` programs that bump a per-CPU counter (bench/floor.bpf.c); *floor-keyed*: the least a count per "
           "tag set can cost, the ports read from the packet and one per-CPU counter bumped at a "
           "hash of them, in a table of 16,384 (no key compared, no collision handled). CPU % is the monitor's user + system time over the storm and "
           "the metrics interval after it, measured after start-up settled; RSS is peak "
           "(VmHWM). `metrics` runs with `--interval 1s`; `trace` with its default rate limit "
           "(1,000 events/s per CPU); bpftrace counts `skb:kfree_skb` by reason and location. "
           "CPU time comes from `/proc/PID/task/*/schedstat`, which also charges a task with the "
           "softirqs that interrupt it.\n",
           "## Targets\n", "| target | measured | met |", "| --- | --- | --- |"]
    out += [f"| {name} | {value} | {'–' if met is None else 'yes' if met else '**no**'} |"
            for name, value, met in targets(host)]
    for sweep, title in (("rate", "Drop rate sweep (closed port)"), ("nft", "nftables-dropped port, max rate"),
                         ("listen", "SYNs refused by a full accept queue, max rate"),
                         ("accept", "Connections accepted (the non-drop path), one after another"),
                         ("netns", "The namespace in the key, and without it (closed port, max rate)"),
                         ("keys", "Tag-set sweep (closed port, `--port-tags all`, max rate)"),
                         ("steady", "Tag sets dropping in every interval (closed port, `--port-tags all`, "
                                    "each port 4 SYNs a second for 10 s)")):
        sweep_runs = [r for r in host if r["sweep"] == sweep]
        out.append(f"\n## {title}\n")
        for step in sorted({(r["packets"], r["sports"], r["pps_asked"]) for r in sweep_runs},
                           key=lambda s: (s[1] or 0, s[2] or 10**9, s[0])):
            packets, sports, pps = step
            unit = "connections" if sweep == "accept" else "packets"
            label = ("idle, 3 s" if not packets else f"{packets:,} {unit}" +
                     (f" at {pps:,}/s" if pps else " at full speed") +
                     (f", {sports:,} source ports" if sports else ""))
            out.append(f"### {label}\n")
            out.append(table([r for r in sweep_runs if (r["packets"], r["sports"], r["pps_asked"]) == step]) + "\n")
    out.append("![kernel cost vs rate](perf-rate.png)\n\n![kernel cost, CPU and RSS vs tag sets](perf-keys.png)\n")
    out += changes()
    anchor = [r for r in runs if r["sweep"] == "anchor"]
    if anchor:
        out.append(f"\n## In Debian's 6.1 kernel, with bcc's tcpdrop ({anchor[0]['kernel']})\n")
        out.append("Under QEMU's software emulation (TCG): absolute figures are inflated many times; "
                   "compare within the table. `metrics-bcc` is ours on the bcc backend (BTF hidden); "
                   "`bcc-tcpdrop` is bcc's own tool (bpfcc-tools), which prints every drop with its "
                   "stack through a perf buffer.\n")
        out.append(table(anchor) + "\n")
    (DOCS / "performance.md").write_text("\n".join(out))
    print(DOCS / "performance.md")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else
         max((Path(__file__).resolve().parent / "results").glob("*.json")))
