"""`telegraf-tcpdrop check`: each of host.py's checks on a line, then the
probe loaded and attached for real."""
from .errors import StartupError
from .event import ProbeConfig
from .host import backend, bcc, drop_reasons, kernel_btf, kernel_headers, libbpf, privileges, \
    probe_object, tracefs
from .pins import BPF_FS, pinning
from .probe import HOOKS
from .startup import open_probe
from .symbols import KernelSymbols, SymbolsUnavailable


def run(args):
    """Exit code 0 if the host can run the probe, 1 if not."""
    try:
        chosen, why = backend(args.backend)
        print(f"ok    backend: {chosen} ({why})", flush=True)
    except StartupError as e:
        print(f"FAIL  backend: {e}", flush=True)
        return 1
    lib = libbpf()
    if chosen == "core":
        needs = [("libbpf", lambda: lib.libbpf_version_string().decode()),
                 ("probe object", probe_object),
                 ("kernel BTF", kernel_btf)]
    else:
        needs = [("bcc", bcc), ("kernel headers", kernel_headers)]
    steps = [
        *needs,
        ("privileges", privileges),
        ("tracefs", lambda: tracefs(chosen)),
        ("drop reasons", lambda: f"{len(drop_reasons(lib).names)} names from the running kernel"),
        ("symbols", lambda: f"{KernelSymbols().count()} kernel functions in /proc/kallsyms"),
    ]
    failed = 0
    for label, step in steps:
        try:
            print(f"ok    {label}: {step()}", flush=True)
        except (StartupError, SymbolsUnavailable) as e:
            print(f"FAIL  {label}: {e}", flush=True)
            failed += 1
    if failed:
        return 1
    with open_probe(ProbeConfig(), chosen, mount=False) as probe:
        print(f"ok    hook: {HOOKS[probe.hook][1]} attaches", flush=True)
        print(f"ok    listen-queue drops: {probe.listen}", flush=True)
        print(f"ok    nested runs: {probe.nested_runs}", flush=True)
        cannot = pinning(probe)
        if cannot:
            print(f"no    pinning: {cannot}: counting stops with each run of metrics", flush=True)
        else:
            print(f"ok    pinning: bpffs at {BPF_FS}, and this kernel pins {HOOKS[probe.hook][1]}'s "
                  "links: metrics --pin-dir keeps counting between runs", flush=True)
    return 0
