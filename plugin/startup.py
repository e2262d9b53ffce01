"""What every command does before its own work: the probe's settings from
the options, then the probe loaded and attached on a host checked for it.

An option that cannot work is errors.UsageError (exit 2); a host that cannot
run the probe, errors.StartupError, or the loader's ProbeError, BtfError,
SymbolsUnavailable, LibbpfError (exit 1): cli.main makes each one `E! ` line.
"""
import ctypes
import os
import socket
import time

from . import host, log
from .bcc_loader import BccLoader
from .errors import StartupError, UsageError
from .event import (PORT_TAGS_ALL, PORT_TAGS_BUCKETED, PORT_TAGS_NONE, REASON_OURS_FIRST,
                    REASON_UNKNOWN, ProbeConfig)
from .libc import LIBC
from .names import OWN_REASONS
from .pins import PinBusy, PinDir, PinError
from .probe import HOOKS, CoreLoader, Probe, ProbeError
from .symbols import KernelSymbols

# Drops that are housekeeping, not the network: data still queued on a socket
# when it is closed (also every raw socket's copy of TCP packets).
DEFAULT_EXCLUDE = ["QUEUE_PURGE"]
ALL_REASONS = frozenset(range(256)) | frozenset(OWN_REASONS)  # the kernel's (a u8 here) and ours
PORT_TAGS = {"bucketed": PORT_TAGS_BUCKETED, "all": PORT_TAGS_ALL, "none": PORT_TAGS_NONE}


def reason_numbers(names, reasons):
    numbers = set()
    for name in names:
        try:
            numbers.add(reasons.number(name))
        except KeyError:
            raise StartupError(f"unknown drop reason {name!r}: `telegraf-tcpdrop reasons` "
                               "lists the ones this kernel has") from None
    return numbers


def probe_config(args, reasons, **mode):
    """The probe's filters from --reason/--exclude-reason/-4/-6/--port, plus mode fields."""
    if args.exclude_reason is not None:
        exclude = [name for name in args.exclude_reason if name.lower() != "none"]
    else:  # the default: unless --reason names what to count, or the kernel lacks it
        exclude = [name for name in DEFAULT_EXCLUDE
                   if not args.reason and name in reasons.names.values()]
    if args.reason:
        wanted = reason_numbers(args.reason, reasons)
        if any(256 <= value < REASON_OURS_FIRST for value in wanted):
            raise StartupError("drop reasons above 255 cannot be selected with --reason")
    else:
        wanted = set(ALL_REASONS)
    wanted -= reason_numbers(exclude, reasons)
    config = ProbeConfig(port=args.port, family=args.family or 0,
                         other_reasons=not args.reason, **mode)
    want_reasons(config, wanted)
    return config


def want_reasons(config, numbers):
    """Sets the bits of these drop reasons in config (the kernel's, then ours)."""
    for value in numbers:
        if value >= REASON_OURS_FIRST:
            config.own_reasons |= 1 << (REASON_UNKNOWN - value)
        else:
            config.reason_mask[value >> 6] |= 1 << (value & 63)


def ephemeral_range(path="/proc/sys/net/ipv4/ip_local_port_range"):
    with open(path, "rb") as f:
        low, high = f.read().split()
    return int(low), int(high)


def counting_config(args, reasons, **mode):
    """The probe's settings to count drops per tag set (metrics, top)."""
    low, high = ephemeral_range()
    return probe_config(args, reasons, aggregate=1, port_tags=PORT_TAGS[args.port_tags],
                        ephemeral_low=low, ephemeral_high=high,
                        key_netns=int(args.netns_tags != "none"), **mode)


def mount_tracefs():
    """Mounts tracefs where it is not: the classic tracepoint hook, listen(2)'s
    tracepoint and the bcc backend read it when they attach (tp_btf and fentry
    do not). StartupError if it cannot. `check` only says whether it is."""
    if host.tracefs_mounted():
        return
    if LIBC.mount(b"nodev", host.TRACEFS.encode(), b"tracefs", 0, None) != 0:
        raise StartupError(f"tracefs is not mounted and mounting it failed "
                           f"({os.strerror(ctypes.get_errno())}): mount -t tracefs nodev "
                           f"{host.TRACEFS}")


def open_probe(config, backend="auto", hook="auto", verbose=False, listen_drops="auto", mount=True,
               pin_dir=None, **probe_options):
    """Checks the host, mounts tracefs where it is not (unless mount is False:
    `check` changes nothing), then loads and attaches the probe with the
    backend, hook and way of seeing listen-queue drops asked for (--backend,
    --hook, --listen-drops; "auto": the first that works); StartupError if it
    cannot."""
    host.libbpf()  # both backends load through it: a missing one is a StartupError
    backend, _ = host.backend(backend)
    hooks = (CoreLoader if backend == "core" else BccLoader).hooks
    if hook != "auto":
        if hook not in hooks:
            raise UsageError(f"--hook {hook} needs kernel BTF, which the bcc backend is "
                             "for the lack of: use --backend core")
        hooks = (hook,)
    if backend == "bcc" and listen_drops not in ("auto", "off"):
        raise UsageError(f"--listen-drops {listen_drops} needs the CO-RE backend (the bcc "
                         "backend sees no listen-queue drops): use --backend core")
    host.privileges()
    tracefs_problem = ""
    try:
        if mount:
            mount_tracefs()
    except StartupError as e:
        tracefs_problem = f"; also, {e}"
    if backend == "core":
        loader = CoreLoader(host.probe_object(), verbose=verbose, listen_drops=listen_drops)
        host.kernel_btf()
    else:
        host.bcc()
        host.kernel_headers()
        loader = BccLoader(host.format_file(), verbose=verbose)
    started = time.monotonic()
    try:
        probe = Probe(loader, config, hooks, pins=pin_directory(pin_dir), **probe_options)
    except ProbeError as e:
        raise StartupError(f"{e}{tracefs_problem}") from None
    how = (f"taking over the probe pinned at {pin_dir} (attached by pid {probe.taken_over['pid']})"
           if probe.taken_over else f"({backend})")
    log.info(f"attached to {HOOKS[probe.hook][1]} {how} in "
             f"{(time.monotonic() - started) * 1000:.0f} ms; listen-queue drops: {probe.listen}; "
             f"nested runs: {probe.nested_runs}")
    if probe.unseen:
        log.warn(probe.unseen)
    return probe


def pin_directory(path):
    """The pin directory at path, locked (None: no pinning); StartupError if
    another run holds it. One that cannot be had is a warning: this run
    counts, but only while it runs."""
    if path is None:
        return None
    try:
        return PinDir(path).open()
    except PinBusy as e:
        raise StartupError(str(e)) from None
    except PinError as e:
        log.warn(f"counting stops with this run: {e}")
        return None


def loaded_symbols():
    symbols = KernelSymbols()
    symbols.count()  # read now: a kptr_restrict problem is a start-up error
    return symbols


def this_host_name():
    """This host's name for the host tag: bytes that are not UTF-8 (which
    gethostname() keeps as surrogates, unencodable) become U+FFFD."""
    return socket.gethostname().encode("utf-8", "surrogateescape").decode("utf-8", "replace")
