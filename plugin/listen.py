"""Listen-queue drops: what the probe needs to see them on the running kernel.

A SYN a listener refuses (accept queue full, ...) is freed with consume_skb(),
not kfree_skb(): the probe finds it by the rise of the namespace's per-CPU
ListenDrops counter across the listener's handling of the SYN (tcpdrop.c,
"Listen-queue drops"). For that it needs kernel addresses (/proc/kallsyms)
and the counters' indices, which move between versions (BTF). `settings`
writes them into the ProbeConfig and says which ways of seeing them this
kernel may allow, best first; the loader tries each in turn.
"""
from .event import LISTEN_BRACKET, LISTEN_CHAIN, LISTEN_OFF, REASON_LISTEN_OVERFLOW

# Each way of seeing them, best first: its mode (tcpdrop.c), its programs,
# and what the start-up line says of it. LISTEN_BRACKET's brackets around the
# calls that may raise the counters beside tcp_rcv_state_process() are added
# for each of those functions the kernel has (bracket()).
BRACKET = (LISTEN_BRACKET, ("listen_enter", "listen_exit"), "fentry/fexit on tcp_rcv_state_process")
ASIDE = {"tcp_check_req": ("check_req_enter", "check_req_exit"),
         "cookie_v4_check": ("cookie_v4_enter", "cookie_v4_exit"),
         "cookie_v6_check": ("cookie_v6_enter", "cookie_v6_exit"),
         "tcp_req_err": ("req_err_enter", "req_err_exit")}
CHAIN = (LISTEN_CHAIN, ("consume_skb_btf", "listen_start"),
         "tracepoints skb:consume_skb, skb:kfree_skb and syscalls:sys_enter_listen")
# Where tracefs is closed to the monitor (root-only, as for Telegraf's user):
# the socket's state change instead of listen(2), at ten runs per connection.
CHAIN_NO_TRACEFS = (LISTEN_CHAIN, ("consume_skb_btf", "listen_start_state"),
                    "tracepoints skb:consume_skb, skb:kfree_skb and sock:inet_sock_set_state")
PROGRAMS = {name for _, programs, _ in (BRACKET, CHAIN, CHAIN_NO_TRACEFS) for name in programs} | \
    {name for pair in ASIDE.values() for name in pair}
# --listen-drops: the ways of each choice
CHOICES = {"fentry": LISTEN_BRACKET, "tracepoints": LISTEN_CHAIN}

# The counters of `struct linux_mib` the probe reads, by their enum names.
MIB = {"mib_listen_drops": "LINUX_MIB_LISTENDROPS",
       "mib_listen_overflows": "LINUX_MIB_LISTENOVERFLOWS",
       "mib_synq_full": "LINUX_MIB_TCPREQQFULLDROP"}
# The kernel functions whose addresses the probe needs, by their config field.
FUNCTIONS = {"conn_request": "tcp_conn_request", "syn_site": "tcp_rcv_state_process",
             "icmp_site": "icmp_rcv", "icmp6_site": "icmpv6_rcv"}
SPANS = ("syn_site", "icmp_site", "icmp6_site")  # with their length: where in them the SYN is freed


def settings(config, btf, reasons, spans, ncpus, fentry_attaches, direct_loads):
    """Fills config's listen fields; the ways to try, (mode, programs, what
    it is), best first, ending with LISTEN_OFF and why nothing better could
    be had. spans: {name: (address, length)} of (at least) FUNCTIONS, from
    kallsyms; fentry_attaches(btf id): whether the kernel lets a program
    attach at that function's entry; direct_loads: whether the programs that
    call bpf_rdonly_cast() are loaded, as LISTEN_CHAIN's are."""
    mib = btf.enumerators(set(MIB.values()))
    missing = [name for name in (*MIB.values(), *FUNCTIONS.values())
               if name not in mib and name not in spans and name != "icmpv6_rcv"]
    if missing:
        return [(LISTEN_OFF, (), f"not seen: this kernel has no {', '.join(missing)}")]
    for field, name in MIB.items():
        setattr(config, field, mib[name])
    for field, name in FUNCTIONS.items():
        address, length = spans.get(name, (0, 0))
        setattr(config, field, address)
        if field in SPANS:
            setattr(config, f"{field}_len", length)
    try:
        config.listen_overflow_reason = reasons.number("TCP_LISTEN_OVERFLOW")
    except KeyError:
        config.listen_overflow_reason = REASON_LISTEN_OVERFLOW
    config.ncpus = ncpus
    state_process = btf.function_id(FUNCTIONS["syn_site"])
    fentry = state_process is not None and fentry_attaches(state_process)
    # the brackets beside it may fail to attach where it does: then without them
    ways = [bracket(btf), BRACKET] if fentry else []
    if not btf.has_member("trace_event_raw_consume_skb", "location"):
        why = "no fentry, and skb:consume_skb has no location (Linux 6.3+)"
    elif not btf.has_member("trace_event_raw_kfree_skb", "rx_sk"):
        why = "no fentry, and skb:kfree_skb has no rx_sk (Linux 6.11+)"
    elif not direct_loads:
        why = "no fentry, and no bpf_rdonly_cast() (Linux 6.2+)"
    else:
        ways += [CHAIN, CHAIN_NO_TRACEFS]
        why = "neither fentry nor the tracepoints could be used"
    return ways + [(LISTEN_OFF, (), f"not seen: {why}")]


def bracket(btf):
    """LISTEN_BRACKET, with a bracket around each other call that may raise
    the counters where the kernel's BTF has that function; the start-up line
    names those it has not (their rises then differ in `audit`)."""
    mode, programs, why = BRACKET
    found = [name for name in ASIDE if btf.function_id(name) is not None]
    missing = [name for name in ASIDE if name not in found]
    return (mode, (*programs, *(program for name in found for program in ASIDE[name])),
            ", ".join([why, *found]) + (f" (not {', '.join(missing)}: not in the kernel's BTF)"
                                        if missing else ""))
