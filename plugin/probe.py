"""Loads plugin/tcpdrop.c's object into the kernel through the system libbpf.

Lifecycle, top to bottom: open -> choose the hook -> set .rodata -> load ->
attach -> poll -> close. Hooks are tried in order of preference; each failed
try is closed and reported if none works. close() releases everything in
reverse order and is safe to call twice.
"""
import ctypes
import os

from . import libbpf as lb
from . import log
from .btf import Btf
from .event import COUNTER_MAX, MAX_STACK_DEPTH, DropEvent, ProbeConfig

# Program name in tcpdrop.c -> what it attaches to, in order of preference.
HOOKS = {
    "tp_btf": ("kfree_skb_btf", "tp_btf/kfree_skb"),
    "tracepoint": ("kfree_skb_tp", "tracepoint/skb/kfree_skb"),
    "kprobe": ("tcp_drop", "kprobe/tcp_drop"),
}


class ProbeError(Exception):
    pass


class Probe:
    def __init__(self, object_path, config=None, hooks=tuple(HOOKS), verbose=False):
        self.object_path = os.fspath(object_path)
        self.config = config or ProbeConfig()
        self.verbose = verbose
        self.hook = None  # the hook that attached
        self._lib = lb.load()
        self._warnings = []
        lb.set_log_handler(self._on_libbpf_log)
        self._obj = self._link = self._ringbuf = self._sample_cb = self._callback_error = None
        try:
            self._attach_first(hooks)
        finally:
            lb.set_log_handler(None)
        self.ncpus = lb.check_int(self._lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")

    def _attach_first(self, hooks):
        failures = []
        for hook in hooks:
            try:
                self._load_and_attach(hook)
                self.hook = hook
                return
            except lb.LibbpfError as e:
                failures.append(f"{HOOKS[hook][1]}: {e}{self._last_log()}")
                self.close()
        raise ProbeError("no hook could be attached (" + "; ".join(failures) +
                         "); -v shows libbpf's log")

    def _on_libbpf_log(self, level, line):
        """libbpf's log: all of it to stderr when verbose; warnings kept to
        explain a failure."""
        if self.verbose:
            log.debug(line)
        if level == lb.LIBBPF_WARN and line:
            self._warnings.append(line)
        return 0

    def _last_log(self):
        last = self._warnings[-1] if self._warnings else ""
        self._warnings.clear()
        return f" ({last})" if last else ""

    def _load_and_attach(self, hook):
        lib = self._lib
        self._obj = lb.check_ptr(lib.bpf_object__open_file(self.object_path.encode(), None),
                                 f"open {self.object_path}")
        for name, (prog_name, _) in HOOKS.items():
            prog = lb.check_ptr(lib.bpf_object__find_program_by_name(self._obj, prog_name.encode()),
                                f"find program {prog_name}")
            lib.bpf_program__set_autoload(prog, name == hook)
        self._set_config()
        lb.check_int(lib.bpf_object__load(self._obj), "load")
        prog = lib.bpf_object__find_program_by_name(self._obj, HOOKS[hook][0].encode())
        self._link = lb.check_ptr(lib.bpf_program__attach(prog), "attach")
        self._fds = {name: self._map_fd(name) for name in ("events", "stacks", "counters")}

    def _set_config(self):
        """Write self.config into .rodata, where `cfg` lives, before load freezes it."""
        rodata = lb.check_ptr(self._lib.bpf_object__find_map_by_name(self._obj, b".rodata"),
                              "find .rodata")
        size = ctypes.c_size_t()
        data = lb.check_ptr(self._lib.bpf_map__initial_value(rodata, ctypes.byref(size)),
                            ".rodata initial value")
        offset = Btf(self._lib, self._lib.bpf_object__btf(self._obj), owned=False) \
            .datasec_offset(".rodata", "cfg")
        assert offset + ctypes.sizeof(ProbeConfig) <= size.value
        ctypes.memmove(data + offset, ctypes.addressof(self.config), ctypes.sizeof(ProbeConfig))

    def _map_fd(self, name):
        m = lb.check_ptr(self._lib.bpf_object__find_map_by_name(self._obj, name.encode()),
                         f"find map {name}")
        return self._lib.bpf_map__fd(m)

    def on_event(self, callback):
        """Call callback(DropEvent) for each event from poll(). An exception
        in callback stops that poll and is raised from it (ctypes would
        otherwise print and swallow it)."""
        def sample(_ctx, data, size):
            try:
                callback(DropEvent.from_buffer_copy(ctypes.string_at(data, ctypes.sizeof(DropEvent))))
                return 0
            except BaseException as e:
                self._callback_error = e
                return -1
        self._sample_cb = lb.RINGBUF_SAMPLE_FN(sample)
        self._ringbuf = lb.check_ptr(
            self._lib.ring_buffer__new(self._fds["events"], self._sample_cb, None, None),
            "ring_buffer__new")

    def poll(self, timeout_ms):
        """Deliver pending events; returns how many. EINTR (a signal) counts as 0."""
        n = self._lib.ring_buffer__poll(self._ringbuf, timeout_ms)
        if self._callback_error:
            error, self._callback_error = self._callback_error, None
            raise error
        if n == -4:  # EINTR
            return 0
        return lb.check_int(n, "ring_buffer__poll")

    def counters(self):
        """[lost, ratelimited]: each summed over CPUs."""
        fd = self._fds["counters"]
        values = (ctypes.c_uint64 * self.ncpus)()
        totals = []
        for slot in range(COUNTER_MAX):
            key = ctypes.c_uint32(slot)
            lb.check_int(self._lib.bpf_map_lookup_elem(fd, ctypes.byref(key), values),
                         "read counters")
            totals.append(sum(values))
        return totals

    def stack(self, stack_id):
        """The kernel stack's return addresses, innermost first; [] if gone."""
        if stack_id < 0:
            return []
        ips = (ctypes.c_uint64 * MAX_STACK_DEPTH)()
        key = ctypes.c_uint32(stack_id)
        if self._lib.bpf_map_lookup_elem(self._fds["stacks"], ctypes.byref(key), ips) < 0:
            return []
        return [ip for ip in ips if ip]

    def close(self):
        if self._ringbuf:
            self._lib.ring_buffer__free(self._ringbuf)
        if self._link:
            self._lib.bpf_link__destroy(self._link)
        if self._obj:
            self._lib.bpf_object__close(self._obj)
        self._ringbuf = self._link = self._obj = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
