"""The bcc backend: plugin/tcpdrop.c compiled on this host by bcc, against the
running kernel's headers, for kernels without BTF (where CO-RE cannot load).

The same source as the CO-RE object, built with -DTCPDROP_BCC: the settings
that CoreLoader writes into .rodata are compiled in here as a C initializer,
and the tracepoint's fields are read from its format file instead of BTF.
Compiling takes a second or two on a real machine (minutes under emulation).
"""
import os
import time

from . import log
from .event import ProbeConfig
from .netns import proc_tasks
from .host import PACKAGE_DIR
from .names import DropReasons
from .probe import HOOKS, MAPS, HookError, tcp_drop_needs_kprobe
from .symbols import symbol_spans



def config_initializer(config):
    """A ProbeConfig as a C designated initializer: {.port = 9, ...}."""
    fields = []
    for name, _ in ProbeConfig._fields_:
        value = getattr(config, name)
        if name == "reason_mask":
            fields.append(".reason_mask = {" + ", ".join(f"{word:#x}ULL" for word in value) + "}")
        elif name != "pad":
            fields.append(f".{name} = {value}")
    return "{" + ", ".join(fields) + "}"


def format_fields(format_text):
    """The field names of a tracefs event format file."""
    names = set()
    for line in format_text.splitlines():
        line = line.strip()
        if line.startswith("field:"):
            declaration = line.split(";")[0].removeprefix("field:")
            names.add(declaration.split()[-1].split("[")[0])
    return names


class BccLoader:
    listen = "not seen by the bcc backend"  # it has no per-CPU offsets, nor fentry
    hooks = ("tracepoint", "kprobe")  # tp_btf needs BTF, which is why bcc is here

    def __init__(self, tracepoint_format, verbose=False):
        """tracepoint_format: the text of skb/kfree_skb's format file."""
        self.fields = format_fields(tracepoint_format)
        self.verbose = verbose
        self.kprobe, self.unseen = tcp_drop_needs_kprobe(DropReasons.from_format(tracepoint_format),
                                                         symbol_spans(["tcp_drop"]))
        self._bpf = None

    def cflags(self, hooks, config, sizes):
        source_dir = PACKAGE_DIR
        flags = ["-DTCPDROP_BCC", f"-I{source_dir}", *(f"-DTCPDROP_HOOK_{hook.upper()}" for hook in hooks),
                 f"-DTCPDROP_CFG={config_initializer(config)}",
                 f"-DTCPDROP_MAX_KEYS={sizes['drops_a']}",
                 f"-DTCPDROP_OVERFLOW_KEYS={sizes['overflow_a']}",
                 f"-DTCPDROP_RINGBUF_PAGES={sizes['events'] // os.sysconf('SC_PAGE_SIZE')}"]
        flags += [f"-DTP_HAS_{field.upper()}" for field in ("reason", "rx_sk") if field in self.fields]
        return flags

    def load(self, hook, config, sizes, before_attach=lambda fds: None):
        """({program name: fd}, {map name: fd}) of the source compiled, loaded and
        attached at hook (and kprobe/tcp_drop beside it where the kernel
        needs it); before_attach({map name: fd}) runs between the two."""
        from bcc import BPF  # loads LLVM: only when this backend is used

        hooks = (hook, "kprobe") if self.kprobe and hook != "kprobe" else (hook,)
        flags = self.cflags(hooks, config, sizes)
        if self.verbose:
            log.debug("bcc cflags: " + " ".join(flags))
        with open(os.path.join(PACKAGE_DIR, "tcpdrop.c")) as f:
            source = f.read()
        started = time.monotonic()
        try:
            # Compiles and loads; no program is named for bcc to attach it
            # itself (tracepoint__*, kprobe__*): the maps are set first.
            self._bpf = BPF(text=source, cflags=flags)
            functions = [HOOKS[h][0] for h in hooks]
            programs = {name: self._bpf.load_func(name.encode(), BPF.KPROBE if name == HOOKS["kprobe"][0]
                                                  else BPF.TRACEPOINT) for name in functions}
            fds = {name: self._bpf[name].map_fd for name in MAPS}
            before_attach(fds)
            for name in functions:
                if name == HOOKS["kprobe"][0]:
                    self._bpf.attach_kprobe(event="tcp_drop", fn_name=name)
                else:
                    self._bpf.attach_tracepoint(tp="skb:kfree_skb", fn_name=name)
        except Exception as e:  # bcc raises bare Exception for every failure
            raise HookError(str(e)) from None
        log.info(f"bcc compiled and loaded the probe in {time.monotonic() - started:.1f} s")
        return {name: program.fd for name, program in programs.items()}, fds

    @staticmethod
    def netns_tasks():
        """No task iterator without BTF: /proc, as far as this user may see."""
        return proc_tasks()

    def close(self):
        if self._bpf:
            self._bpf.cleanup()
        self._bpf = None
