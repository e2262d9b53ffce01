"""Writes the man page telegraf-tcpdrop(8) to stdout, in roff, from the
command's own argument parser (so the options cannot drift from --help)
and the fixed sections below."""
import argparse
import os
import sys
import tempfile
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The source directory is plugin/; the package is telegraf_tcpdrop.
_link_dir = tempfile.TemporaryDirectory()  # removed when the interpreter exits
os.symlink(os.path.join(ROOT, "plugin"), os.path.join(_link_dir.name, "telegraf_tcpdrop"))
sys.path.insert(0, _link_dir.name)

from telegraf_tcpdrop import cli  # noqa: E402

SECTIONS = {
    "REQUIREMENTS": """
Linux 5.8+ with BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF=y) and libbpf (libbpf1);
or, without BTF, python3-bpfcc and the kernel's headers (linux-headers-*): the bcc backend.
Root, or the capabilities CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN before Linux 5.8), and
CAP_SYSLOG to read kernel addresses from /proc/kallsyms. The package gives these three to
its launcher, /usr/libexec/telegraf-tcpdrop/metrics (file capabilities; group
tcpdrop-metrics, which telegraf.service gets from
/lib/systemd/system/telegraf.service.d/tcpdrop.conf), which runs
.B telegraf-tcpdrop metrics
with them and Telegraf without them; and to telegraf-tcpdrop.service.""",
    "FIELDS": """
.TP
.B reason
the kernel's drop reason (enum skb_drop_reason, named from the running kernel; UNKNOWN before 5.17);
for a SYN a listener refused where the kernel has no reason, one of ours: listen-overflow (accept
queue full), syn-queue-full (SYN queue full, no syncookies), listen-drop (any other)
.TP
.B frame, location
the drop site: the kernel function that freed the packet, or that refused the SYN
.TP
.B state
TCP state of the socket the drop was charged to (LISTEN for a refused SYN), or NONE
.TP
.B flags
TCP flags of the packet, FIN|SYN|RST|PSH|ACK|URG|ECE|CWR
.TP
.B sport, dport
ports of the packet; in metrics, ports in the ephemeral range are "ephemeral" (--port-tags)
.TP
.B drops, bytes
metrics: packets dropped in the interval, and their IP length
.TP
.B PID, COMM
trace: the task on the CPU at the drop, often unrelated to the packet (softirq)""",
    "OVERHEAD": """
metrics counts each drop in the kernel (a per-CPU hash map update) and reads the map once
per interval: no user-space work per drop. SYNs refused by a listener are found by hooks that
run on every SYN a listener handles (fentry/fexit on tcp_rcv_state_process, or the
skb:consume_skb tracepoint, which runs on every packet freed normally and returns at once
unless a listener freed it). trace sends one event per drop, limited to
--rate-limit events per second per CPU; what is over the limit is counted and reported.""",
    "FILES": """
.TP
.I /etc/telegraf/telegraf.d/tcpdrop.conf
the Telegraf inputs.execd drop-in
.TP
.I /etc/telegraf-tcpdrop/tcpdrop.toml
the configuration of telegraf-tcpdrop.service (metrics --config)
.TP
.I /etc/default/telegraf-tcpdrop
INFLUX_TOKEN for telegraf-tcpdrop.service""",
    "SEE ALSO": "telegraf(1), bpftool(8), /usr/share/doc/telegraf-tcpdrop/README.md",
}


def roff(text):
    return text.replace("\\", "\\e").replace("-", "\\-").replace("\n.", "\n\\&.")


def options(parser):
    lines = []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        flags = ", ".join(f"\\fB{roff(o)}\\fR" for o in action.option_strings)
        if action.nargs != 0:
            flags += f" \\fI{roff(action.metavar or action.dest.upper())}\\fR"
        lines += [".TP", flags, roff(action.help % {"default": action.default})]
    return lines


def main():
    parser, _ = cli.build_parsers()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    date = datetime.fromtimestamp(int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or 0, timezone.utc)
    out = [f'.TH TELEGRAF-TCPDROP 8 "{date:%Y-%m-%d}" "telegraf-tcpdrop" "System Administration"',
           ".SH NAME", "telegraf-tcpdrop \\- TCP packets the Linux kernel drops, and why",
           ".SH SYNOPSIS"]
    for name in commands.choices:
        out += [f".B telegraf-tcpdrop {name}", "[\\fIOPTIONS\\fR]", ".br"]
    out += [".SH DESCRIPTION", roff(parser.description)]
    for name, sub in commands.choices.items():
        out += [f".SH {name.upper()}", roff(sub.description or
                                            next(c.help for c in commands._choices_actions
                                                 if c.dest == name))]
        out += options(sub)
    for title, text in SECTIONS.items():
        if title == "REQUIREMENTS":
            out += [".SH EXAMPLES", ".nf", roff(cli.EXAMPLES.split("\n", 1)[1].rstrip()), ".fi"]
        out += [f".SH {title}", text.strip() if text.lstrip().startswith(".") else roff(text.strip())]
    print("\n".join(out))


main()
