"""Loads plugin/tcpdrop.c into the kernel, and reads its maps.

Lifecycle, top to bottom: choose the hook -> load -> attach -> poll -> close.
Hooks are tried in order of preference; each failed try is closed and
reported if none works. Two loaders build the same program: CoreLoader (the
CO-RE object, through the system libbpf) and bcc_loader.BccLoader (the
source, compiled here by bcc). Both hand over file descriptors, so reading
the maps and the ring buffer is one code path, through libbpf. close()
releases everything in reverse order and is safe to call twice.
"""
import ctypes
import operator
import os
from typing import NamedTuple

from . import libbpf as lb
from . import host, listen, log, pins
from .btf import Btf
from .event import (COUNTER_MAX, HOT_GENERATION, HOT_SLOTS, LISTEN_CHAIN, LISTEN_OFF, DropEvent, DropKey,
                    HotSlot, ListenMib, NetnsTask, ProbeConfig)
from .names import DropReasons
from .symbols import FUNCTIONS, VARIABLES, symbol_spans

DEFAULT_MAX_KEYS = 16384
# The kernel preallocates each tag set's room, on every CPU, in two
# generations: 2^20 took 2 s to load and 320 MiB on 2 CPUs here (36 MiB more
# per CPU); the kernel's own bound (2^28 buckets) is memory no host would give.
MAX_KEYS = 1 << 20
RINGBUF_BYTES = 4 * 1024 * 1024  # ~1,500 events with their stacks and packets
BATCH = 1024  # keys per bpf_map_lookup_and_delete_batch() call
LISTEN_NETNS = 4096  # namespaces whose listen counters' rises audit follows
# LISTEN_CHAIN's last readings of a namespace's counters, one per CPU (104
# bytes each): room for this many namespaces on every possible CPU, within
# these bounds (1.6 to 13 MiB): 4,096 namespaces up to 32 CPUs, 1,024 on 128.
CHAIN_NETNS, CHAIN_READINGS = 4096, (16384, 131072)
ENOENT = 2
GENERATIONS = ("a", "b")  # of the drops, overflow and hot-slot maps (tcpdrop.c)
MAPS = ("drops_a", "drops_b", "hot_a", "hot_b", "overflow_a", "overflow_b", "hot_now", "drops_maps",
        "overflow_maps", "events", "counters")
CORE_MAPS = (*MAPS, "listen_rises", "running", "cpu_ids")

# Program name in tcpdrop.c -> what it attaches to, in order of preference.
HOOKS = {
    "tp_btf": ("kfree_skb_btf", "tp_btf/kfree_skb"),
    "tracepoint": ("kfree_skb_tp", "tracepoint/skb/kfree_skb"),
    "kprobe": ("tcp_drop", "kprobe/tcp_drop"),
}
DIRECT = "_direct"  # the twin of tp_btf's and tracepoint's programs that calls bpf_rdonly_cast()
PROGRAMS = (*(prog for prog, _ in HOOKS.values()), *(HOOKS[hook][0] + DIRECT for hook in ("tp_btf", "tracepoint")))
# x86-64: the variables that place the direct map and the struct pages (tcpdrop.c, first_frag)
DIRECT_MAP = ("page_offset_base", "vmemmap_base")
LISTEN_WALK = "listen_baselines_walk"  # LISTEN_CHAIN's, run once at start-up
NETNS_TASKS = "netns_tasks"  # always loaded; run whenever netns.py looks for names
KPROBE = HOOKS["kprobe"][0]


def tcp_drop_needs_kprobe(reasons, spans):
    """(whether the kfree_skb hooks need kprobe/tcp_drop beside them, what is
    not seen where they do but cannot have it), from the kernel's drop reasons
    (a DropReasons) and its kallsyms ({name: span}). tcp_drop() freed with
    __kfree_skb(), which fires no tracepoint, until the series that made it
    free with kfree_skb_reason() (tcp_drop_reason(), 5.18), which also gave
    TCP its own drop reasons: where the kernel has TCP_OFOMERGE, the
    tracepoint sees those drops, and a kprobe would count each twice (a
    vendor's older kernel with the series backported: RHEL 9's 5.14). Not
    the version: 5.17 has reasons, but not these. 6.0 removed tcp_drop()."""
    if "TCP_OFOMERGE" in reasons.names.values():
        return False, None
    if "tcp_drop" in spans:
        return True, None
    return False, "drops in tcp_drop() not seen: it frees with __kfree_skb(), and it is inlined"


class RunStats(NamedTuple):
    runs: int
    run_time_ns: int
    drop_misses: int  # kfree_skb runs the kernel skipped: drops not counted
    listen_misses: int  # listen-queue runs skipped: a refused SYN unseen, or taken for another


class ListenRises(NamedTuple):
    """Rises of a namespace's listen counters: ListenDrops, ListenOverflows,
    TCPReqQFullDrop (struct listen_mib)."""
    drops: int
    overflows: int
    synq_full: int


class ProbeError(Exception):
    pass


class HookError(Exception):
    """One hook could not be loaded or attached; the next one is tried."""


def overflow_keys(max_keys):
    """Room for the tag sets of drops counted without their ports once the
    drops map is full: an eighth of it (a scan's tag sets differ by port)."""
    return max(1, max_keys // 8)


def map_sizes(config, max_keys):
    """max_entries of the sized maps: those the mode does not use shrink to
    their minimum (kernel memory). LISTEN_CHAIN's are sized at load, where
    its mode is chosen (CoreLoader)."""
    drops = max_keys if config.aggregate else 1
    overflow = overflow_keys(max_keys) if config.aggregate else 1
    return {"drops_a": drops, "drops_b": drops, "overflow_a": overflow, "overflow_b": overflow,
            "events": RINGBUF_BYTES if config.events else os.sysconf("SC_PAGE_SIZE"),
            "listen_rises": LISTEN_NETNS if config.key_netns else 1}


class Probe:
    def __init__(self, loader, config=None, hooks=tuple(HOOKS), max_keys=DEFAULT_MAX_KEYS, pins=None):
        """loader: a CoreLoader or a BccLoader, which Probe closes; pins: a
        locked pins.PinDir to keep the probe in between runs (metrics)."""
        self.config = config or ProbeConfig()
        self.max_keys = max_keys
        self.hook = None  # the hook that attached
        self.listen = None  # how listen-queue drops are seen, once attached
        self.unseen = None  # drops this kernel keeps from the probe, once attached
        self.taken_over = None  # the pinned state of the run before, if this one took over its probe
        self.baselines = None  # the self-metrics' counters the run before last wrote
        self._lib = lb.load()
        self._loader = loader
        self._ringbuf = self._sample_cb = self._callback_error = None
        self.ncpus = lb.check_int(self._lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")
        self._pins, self._pinned, self._state = pins, None, None
        self._carried, self._replaced = {}, []  # another run's counts left unwritten, its sets
        self._read = None  # (generation, what was read): cleared by commit()
        try:
            if pins:
                self._start_pinned(hooks)
            else:
                self._attach_first(hooks)
        except BaseException:  # no object left loaded by a failed start
            self._loader.close()
            raise

    @property
    def nested_runs(self):
        """Who skips a kfree_skb run that would start inside another on its
        CPU: the kernel, for tp_btf from 6.1 and for the classic tracepoint
        and kprobe always (in tcpdrop_agent.probe_misses from 6.1 and 6.7:
        recursion_misses); the probe, for tp_btf and the kprobe beside it
        before 6.1 (tcpdrop.c, enter_once; in probe_misses too)."""
        return "skipped by the probe" if self.hook == "tp_btf" and self.config.guard_nesting \
            else "skipped by the kernel"

    def _attach_first(self, hooks, before_attach=lambda: None):
        failures = []

        def prepare(fds):
            self._generations = Generations(self._lib, fds, self.ncpus)
            self._generations.prepare()
            before_attach()
        for hook in hooks:
            try:
                self._programs, self._fds = self._loader.load(
                    hook, self.config, map_sizes(self.config, self.max_keys), before_attach=prepare)
                self.hook = hook
                self.listen, self.unseen = self._loader.listen, self._loader.unseen
                return
            except HookError as e:
                failures.append(f"{HOOKS[hook][1]}: {e}")
                self._loader.close()
        raise ProbeError("no hook could be attached (" + "; ".join(failures) +
                         "); -v shows the loader's log")

    def on_event(self, callback):
        """Call callback(DropEvent) for each event from poll(). An exception
        in callback stops that poll and is raised from it (ctypes would
        otherwise print and swallow it)."""
        def sample(_ctx, data, size):
            try:
                if size != ctypes.sizeof(DropEvent):
                    raise ProbeError(f"an event of {size} bytes, not {ctypes.sizeof(DropEvent)}: "
                                     "the probe object does not match this program; reinstall")
                callback(DropEvent.from_buffer_copy(ctypes.string_at(data, size)))
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

    def events_fd(self):
        """A file descriptor that polls readable when events are waiting."""
        return self._lib.ring_buffer__epoll_fd(self._ringbuf)

    def counters(self):
        """Each slot of enum counter, summed over CPUs."""
        fd = self._fds["counters"]
        values = (ctypes.c_uint64 * self.ncpus)()
        totals = []
        for slot in range(COUNTER_MAX):
            key = ctypes.c_uint32(slot)
            lb.check_int(self._lib.bpf_map_lookup_elem(fd, ctypes.byref(key), values),
                         "read counters")
            totals.append(sum(values))
        return totals

    def take_counts(self):
        """{DropKey bytes: (drops, bytes)} counted since the last take, summed
        over CPUs, and cleared (audit, top)."""
        counts = self.read_counts()
        self.commit()
        return counts

    def read_counts(self):
        """{DropKey bytes: (drops, bytes)} counted since the last read: the
        drops and overflow maps' counts plus those in the hot slots. The
        handler is moved to the other generation first, by one swap; the
        kernel returns from it only once no program runs on the old
        generation (tcpdrop.c), whose maps are then read, quiet. They are
        cleared by commit(), once what was read is written."""
        if self._read:
            self.commit()  # the generation swapped to must be empty
        old = self._generations.current()
        self._generations.swap(old ^ 1)
        counts, taken = self._generations.read(old)
        self._read = old, taken
        return counts

    def read_carried(self):
        """{DropKey bytes: (drops, bytes)} that the runs before this one
        counted and did not write (a crash), and those of a set of another
        build or other settings, which this run replaced; commit() once written."""
        counts = dict(self._carried)
        self._carried.clear()
        return counts

    def commit(self, baselines=None):
        """What was read is written: the pinned state says so (with the
        self-metrics' baselines), then it is cleared, and the sets replaced
        are removed."""
        if self._read:
            generation, taken = self._read
            self._save(emitted=generation, baselines=baselines)
            self._generations.clear(generation, taken)
            self._read = None
        self._save(emitted=None, baselines=baselines)
        for pinned in self._replaced:
            pins.remove_quietly(pinned)
        self._replaced.clear()

    def _save(self, **changes):
        if self._state is not None:
            self._state.update({k: v for k, v in changes.items() if v is not None or k == "emitted"})
            self._pinned.save(self._state)

    def _start_pinned(self, hooks):
        """Takes over the pinned set of this build and settings if there is
        one; else attaches anew, having detached any other set just before,
        and pins. Every other set's counts are carried into this run."""
        sets, own, print_ = self._pins.sets(), None, None
        if hasattr(self._loader, "pin"):  # not bcc's
            options = (hooks, self.max_keys, self._loader.listen_drops, self._loader.direct_loads)
            print_ = pins.fingerprint(self._loader.object_path, self.config, options)
            own = next((s for s in sets if s.attached() and (s.state() or {}).get("fingerprint") == print_
                        and s.state().get("layout") == pins.layout()), None)
        others = [s for s in sets if s is not own]
        if own:
            for other in others:
                other.detach()
            self._take_over(own)
        else:
            self._attach_first(hooks, before_attach=lambda: [s.detach() for s in others])
            self._pin(print_)
        for other in others:
            self._carry(other)

    def _take_over(self, own):
        state = own.state()
        self._loader.close()
        self._loader = PinnedLoader(own)
        self._programs, self._fds = self._loader.programs, self._loader.maps
        self.hook, self.listen, self.unseen = state["hook"], state["listen"], state["unseen"]
        self.config = ProbeConfig.from_buffer_copy(bytes.fromhex(state["config"]))
        self.taken_over, self.baselines = dict(state), state.get("baselines")
        self._pinned, self._state = own, state
        self._state["pid"] = os.getpid()
        self._generations = Generations(self._lib, self._fds, self.ncpus)
        emitted = state.get("emitted")
        if emitted is not None:  # written by the run before, which was killed clearing it
            self._generations.clear(emitted)
        current = self._generations.current()
        counts, taken = self._generations.read(current ^ 1)
        if counts:  # a run killed between reading an interval and clearing it: that interval
            self._read = current ^ 1, taken
        else:  # what was counted since the last interval the run before wrote
            self._generations.clear(current ^ 1, taken)
            self._generations.swap(current ^ 1)
            counts, taken = self._generations.read(current)
            self._read = current, taken
        add_counts(self._carried, counts)

    def _carry(self, other):
        """The counts of a set this run replaced (detached already, quiet),
        carried; it is removed once they are written."""
        state = other.state()
        if state and state.get("layout") == pins.layout() and pins.MAP + "hot_now" in os.listdir(other.path):
            loader = PinnedLoader(other)
            try:
                generations = Generations(self._lib, loader.maps, self.ncpus)
                generations.swap(generations.current())  # returns once no detached program runs
                for number in range(len(GENERATIONS)):
                    if number != state.get("emitted"):
                        add_counts(self._carried, generations.read(number)[0])
            finally:
                loader.close()
        elif other.attached() or state:
            log.warn(f"the probe pinned at {other.path} is of a build whose counts this one "
                     "cannot read: its drops since it last wrote are lost")
        self._replaced.append(other)

    def pin(self, pinned):
        """Pins the probe in pinned (a pins.PinnedSet); PinError if its
        backend cannot, LibbpfError if the kernel cannot."""
        if not hasattr(self._loader, "pin"):
            raise pins.PinError("the bcc backend pins nothing")
        self._loader.pin(pinned)

    def _pin(self, print_):
        """This run's probe pinned in a new set, with its state."""
        pinned = self._pins.new_set()
        try:
            self.pin(pinned)
            pinned.create_state()
        except (lb.LibbpfError, pins.PinError) as e:
            pins.remove_quietly(pinned)
            log.warn(f"counting stops with this run: its probe cannot be pinned ({e})")
            return
        self._pinned = pinned
        self._state = {"fingerprint": print_, "layout": pins.layout(), "pid": os.getpid(),
                       "hook": self.hook, "listen": self.listen, "unseen": self.unseen,
                       "config": bytes(self.config).hex(), "emitted": None, "baselines": None}
        self._save()

    def run_stats(self):
        """RunStats of the attached programs. Runs and run time stay 0 unless
        the sysctl kernel.bpf_stats_enabled is 1; skipped runs
        (recursion_misses: a program already running on that CPU, 5.12+)
        are always counted, apart for what a skip costs: a drop not counted
        (the kfree_skb hooks), or a refused SYN not seen or taken for
        another (the listen-queue programs, most of whose runs are packets
        freed as normal: consume_skb)."""
        totals = dict.fromkeys(RunStats._fields, 0)
        for name, fd in self._programs.items():
            info = lb.BpfProgInfo()
            size = ctypes.c_uint32(ctypes.sizeof(info))
            lb.check_int(self._lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
                         "program info")
            totals["runs"] += info.run_cnt
            totals["run_time_ns"] += info.run_time_ns
            totals["listen_misses" if name in listen.PROGRAMS else "drop_misses"] += info.recursion_misses
        return RunStats(**totals)

    def listen_rises(self):
        """{network namespace inode: ListenRises} of the listen counters' rises
        the probe read, summed over CPUs."""
        fd = self._fds.get("listen_rises")
        if fd is None:
            return {}
        rises, key, next_key = {}, ctypes.c_uint32(), ctypes.c_uint32()
        values = (ListenMib * self.ncpus)()
        previous = None
        while self._lib.bpf_map_get_next_key(fd, previous, ctypes.byref(next_key)) == 0:
            key.value, previous = next_key.value, ctypes.byref(key)
            if self._lib.bpf_map_lookup_elem(fd, previous, values) == 0:
                rises[key.value] = ListenRises(*(sum(getattr(v, field) for v in values)
                                                 for field, _ in ListenMib._fields_))
        return rises

    def netns_tasks(self):
        """[(pid, network namespace inode)] of every process on the host now."""
        return self._loader.netns_tasks()

    def close(self):
        if self._ringbuf:
            self._lib.ring_buffer__free(self._ringbuf)
        self._ringbuf = None
        self._loader.close()
        if self._pinned:
            self._pinned.close()
        if self._pins:
            self._pins.close()  # the next run may take over

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def add_counts(counts, more):
    """Adds {key: (drops, bytes)} more into counts."""
    for key, (drops, nbytes) in more.items():
        old_drops, old_bytes = counts.get(key, (0, 0))
        counts[key] = (old_drops + drops, old_bytes + nbytes)


class Generations:
    """The drops, overflow and hot-slot maps, in two generations (tcpdrop.c):
    the handler counts into the one hot_now names, while the other is read
    and cleared."""

    def __init__(self, lib, fds, ncpus):
        self._lib, self._fds, self.ncpus = lib, fds, ncpus
        self._zero_slots = (HotSlot * ncpus)()
        self._batch = None  # (keys, values) buffers of _read_map, made at its first call

    def prepare(self):
        """Before the hooks attach: generation a current, each generation's
        maps at its number (bcc leaves the map-in-maps empty; libbpf filled
        them already), and each generation's hot slots naming it on every CPU
        (slot HOT_GENERATION), as the handler finds its maps by that name."""
        self._set_map("hot_now", 0, self._fds["hot_a"])
        for number, generation in enumerate(GENERATIONS):
            self._set_map("drops_maps", number, self._fds[f"drops_{generation}"])
            self._set_map("overflow_maps", number, self._fds[f"overflow_{generation}"])
            self._empty_generation_slot(number)

    def current(self):
        """The generation the handler counts into: the one whose hot slots hot_now holds."""
        key, inner = ctypes.c_uint32(0), ctypes.c_uint32()
        lb.check_int(self._lib.bpf_map_lookup_elem(self._fds["hot_now"], ctypes.byref(key),
                                                   ctypes.byref(inner)), "read hot_now")
        return next(number for number, generation in enumerate(GENERATIONS)
                    if map_id(self._lib, self._fds[f"hot_{generation}"]) == inner.value)

    def swap(self, number):
        """The handler counts into generation number from now on; returns
        once no program runs on the other (a map-in-map update waits)."""
        self._set_map("hot_now", 0, self._fds[f"hot_{GENERATIONS[number]}"])

    def read(self, number):
        """({key: (drops, bytes)}, what clear() needs) of a quiet generation."""
        generation = GENERATIONS[number]
        drops, drop_keys = self._read_map(self._fds[f"drops_{generation}"])
        # Keys counted without their ports (MARK_PORTS_OVERFLOW) are not the drops map's.
        overflow, overflow_keys = self._read_map(self._fds[f"overflow_{generation}"])
        counts = drops | overflow
        hot, claimed = self._read_hot_slots(number)
        add_counts(counts, hot)
        return counts, (drop_keys, overflow_keys, claimed)

    def clear(self, number, taken=None):
        """Empties a quiet generation: the keys read (all if taken is None),
        the claimed hot slots, and its "full" mark."""
        generation = GENERATIONS[number]
        drop_keys, overflow_keys, claimed = taken or (None, None, range(HOT_SLOTS))
        for name, keys in ((f"drops_{generation}", drop_keys), (f"overflow_{generation}", overflow_keys)):
            if keys is None:
                self._read_map(self._fds[name], delete=True)
            else:
                self._delete_keys(self._fds[name], keys)
        fd = self._fds[f"hot_{generation}"]
        for index in claimed:
            i = ctypes.c_uint32(index)
            lb.check_int(self._lib.bpf_map_update_elem(fd, ctypes.byref(i), self._zero_slots, 0),
                         "empty hot slots")
        self._empty_generation_slot(number)

    def _set_map(self, name, index, fd):
        """Puts the map of file descriptor fd at index of the map-in-map name."""
        key, value = ctypes.c_uint32(index), ctypes.c_uint32(fd)
        lb.check_int(self._lib.bpf_map_update_elem(self._fds[name], ctypes.byref(key),
                                                   ctypes.byref(value), 0), f"set {name}[{index}]")

    def _empty_generation_slot(self, number):
        """Slot HOT_GENERATION of generation number's hot slots, on every CPU:
        not full, and naming its generation."""
        slots = (HotSlot * self.ncpus)(*[HotSlot(generation=number)] * self.ncpus)
        index = ctypes.c_uint32(HOT_GENERATION)
        lb.check_int(self._lib.bpf_map_update_elem(self._fds[f"hot_{GENERATIONS[number]}"],
                                                   ctypes.byref(index), slots, 0),
                     "name the generation's hot slots")

    def _read_map(self, fd, delete=False):
        """({key: (drops, bytes)}, the keys' bytes) of a quiet map, emptied if
        delete. Read BATCH keys per call into buffers made once; each batch's
        per-CPU values are summed column by column (map(add) over strided
        views), not key by key: at 20,000 tag sets this loop was the
        monitor's biggest cost."""
        if self._batch is None:
            self._batch = (DropKey * BATCH)(), (ctypes.c_uint64 * (BATCH * self.ncpus * 2))()
        keys, values = self._batch
        key_size, per_key = ctypes.sizeof(DropKey), self.ncpus * 2  # two u64 per CPU
        token, next_token = ctypes.c_uint64(), ctypes.c_uint64()  # hash maps: a bucket index
        batch = self._lib.bpf_map_lookup_and_delete_batch if delete else self._lib.bpf_map_lookup_batch
        counts, raws, first = {}, [], True
        while True:
            n = ctypes.c_uint32(BATCH)
            ret = batch(fd, None if first else ctypes.byref(token), ctypes.byref(next_token), keys, values,
                        ctypes.byref(n), None)
            if ret < 0 and -ret != ENOENT:
                raise lb.LibbpfError("bpf_map_lookup_batch", ret)
            raw = ctypes.string_at(keys, n.value * key_size)
            raws.append(raw)
            flat = memoryview(values).cast("B").cast("Q")[:n.value * per_key]
            drops, nbytes = flat[0::per_key].tolist(), flat[1::per_key].tolist()
            for cpu in range(1, self.ncpus):
                drops = list(map(operator.add, drops, flat[2 * cpu::per_key]))
                nbytes = list(map(operator.add, nbytes, flat[2 * cpu + 1::per_key]))
            counts.update(zip([raw[i:i + key_size] for i in range(0, len(raw), key_size)],
                              zip(drops, nbytes)))
            if ret < 0:  # ENOENT: that was the last batch
                return counts, raws
            token.value, first = next_token.value, False

    def _delete_keys(self, fd, raws):
        """Deletes the keys read (each batch's bytes, as _read_map gave them)."""
        key_size = ctypes.sizeof(DropKey)
        for raw in raws:
            if raw:
                n = ctypes.c_uint32(len(raw) // key_size)
                lb.check_int(self._lib.bpf_map_delete_batch(fd, raw, ctypes.byref(n), None),
                             "bpf_map_delete_batch")

    def _read_hot_slots(self, number):
        """({key: (drops, bytes)}, the indexes of the claimed slots) of generation number."""
        counts, claimed = {}, []
        fd = self._fds[f"hot_{GENERATIONS[number]}"]
        slots = (HotSlot * self.ncpus)()
        for index in range(HOT_SLOTS):
            i = ctypes.c_uint32(index)
            lb.check_int(self._lib.bpf_map_lookup_elem(fd, ctypes.byref(i), slots), "read hot slots")
            taken = [slot for slot in slots if slot.claimed]
            if taken:
                claimed.append(index)
            # A slot claimed for a key whose drops all went to its map has
            # counted nothing here: no point of 0 drops.
            for slot in (slot for slot in taken if slot.count.drops):
                add_counts(counts, {bytes(slot.key): (slot.count.drops, slot.count.bytes)})
        return counts, claimed


def map_id(lib, fd):
    info = lb.BpfMapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    lb.check_int(lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "map info")
    return info.id


class PinnedLoader:
    """A pinned set's programs and maps, opened: the loader of a run that
    took over a probe another run attached (or read one it replaced)."""

    def __init__(self, pinned):
        self.maps = {name: pinned.get(pins.MAP, name) for name in pinned.names(pins.MAP)}
        self.programs = {name: pinned.get(pins.PROGRAM, name) for name in pinned.names(pins.PROGRAM)}
        self._iterator = pinned.get(pins.ITERATOR, NETNS_TASKS) if NETNS_TASKS in pinned.names(pins.ITERATOR) \
            else None
        self._lib = lb.load()

    def netns_tasks(self):
        link = lb.check_int(self._lib.bpf_link_create(self._iterator, 0, lb.BPF_TRACE_ITER, None),
                            f"attach {NETNS_TASKS}")
        try:
            return netns_task_list(iterator_records(self._lib, link, NETNS_TASKS))
        finally:
            os.close(link)

    def close(self):
        for fd in (*self.maps.values(), *self.programs.values(),
                   *([self._iterator] if self._iterator is not None else [])):
            os.close(fd)
        self.maps, self.programs, self._iterator = {}, {}, None


def iterator_records(lib, link_fd, name):
    """What the iterator program name, attached as link_fd, writes in one run."""
    fd = lb.check_int(lib.bpf_iter_create(link_fd), f"run {name}")
    with os.fdopen(fd, "rb") as iterator:
        return iterator.read()


def netns_task_list(records):
    """[(pid, network namespace inode)] of the iterator's records."""
    tasks = (NetnsTask * (len(records) // ctypes.sizeof(NetnsTask))).from_buffer_copy(records)
    return [(task.pid, task.netns) for task in tasks]


class CoreLoader:
    """The CO-RE object (tcpdrop.bpf.o), through the system libbpf."""
    hooks = tuple(HOOKS)

    def __init__(self, object_path, verbose=False, listen_drops="auto", direct_loads=None):
        """listen_drops: how to see listen-queue drops (auto: the best way that
        loads; fentry, tracepoints: that way or a ProbeError; off);
        direct_loads: load the programs that call bpf_rdonly_cast(); None:
        where the kernel has it."""
        self.object_path = os.fspath(object_path)
        self.verbose = verbose
        self.listen_drops = listen_drops
        self.direct_loads = direct_loads
        self.listen = None  # how listen-queue drops are seen, once loaded
        self.kprobe = self.unseen = None  # kprobe/tcp_drop beside the hook, or what is not seen
        self._lib = lb.load()
        self._warnings = []
        self._obj = None
        self._links = []  # (program name, link)
        self._pinned = False  # its links pinned: they outlive it

    def load(self, hook, config, sizes, before_attach=lambda fds: None):
        """({program name: fd}, {map name: fd}) of the object loaded and attached at
        hook (and kprobe/tcp_drop beside it where the kernel needs it), with
        the best way of seeing listen-queue drops that loads;
        before_attach({map name: fd}) runs between the two."""
        lb.set_log_handler(self._on_libbpf_log)
        failure = ""
        try:
            for mode, programs, why in self._listen_ways(config):
                config.listen = mode
                try:
                    loaded = self._load_and_attach(hook, config, sizes, programs, before_attach)
                except lb.LibbpfError as e:
                    self.close()
                    failure = f"{e}{self._last_log()}"  # taken even unshown: the next try starts clean
                    if mode == LISTEN_OFF:
                        raise HookError(failure) from None
                    if self.verbose:
                        log.debug(f"listen-queue drops by {why}: {failure}")
                    continue
                if mode == LISTEN_OFF and self.listen_drops not in ("auto", "off"):
                    self.close()  # the hook works; the way asked for does not
                    raise ProbeError(f"--listen-drops {self.listen_drops}: {why or failure}; "
                                     "--listen-drops auto takes the best way that works")
                self.listen = why
                return loaded
        finally:
            lb.set_log_handler(None)
            lb.give_back_memory()

    def _listen_ways(self, config):
        """The ways of seeing listen-queue drops to try, best first, as
        --listen-drops asks: those of its mode, then off, which only tells
        whether the hook itself works (its what: why the mode cannot be had,
        or "" if it failed to load)."""
        ways = self._kernel_settings(config)
        if self.listen_drops == "off":
            return [(LISTEN_OFF, (), "off (--listen-drops off)")]
        if self.listen_drops == "auto":
            return ways
        asked = [way for way in ways if way[0] == listen.CHOICES[self.listen_drops]]
        return asked + [(LISTEN_OFF, (), "" if asked else f"this kernel allows none ({ways[-1][2]})")]

    def _kernel_settings(self, config):
        """Fills in config what this kernel allows; the ways of seeing
        listen-queue drops to try, best first (listen.settings)."""
        spans = symbol_spans([*listen.FUNCTIONS.values(), "tcp_drop", *DIRECT_MAP],
                             kinds=FUNCTIONS + VARIABLES)
        config.page_offset_base, config.vmemmap_base = (spans.get(name, (0, 0))[0] for name in DIRECT_MAP)
        with Btf.vmlinux(self._lib) as btf:
            if self.direct_loads is None:  # the *_direct programs call it (tcpdrop.c)
                self.direct_loads = btf.function_id("bpf_rdonly_cast") is not None
            # 6.1+: the kernel skips a nested tp_btf run itself (tcpdrop.c, enter_once)
            config.guard_nesting = (config.guard_nesting or
                                    btf.function_id("bpf_prog_inc_misses_counter") is None)
            reasons = DropReasons.from_btf(btf) or DropReasons({})
            self.kprobe, self.unseen = tcp_drop_needs_kprobe(reasons, spans)
            return listen.settings(config, btf, reasons, spans,
                                   lb.check_int(self._lib.libbpf_num_possible_cpus(), "possible CPUs"),
                                   lambda btf_id: lb.fentry_attaches(self._lib, btf_id),
                                   self.direct_loads)

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

    def _load_and_attach(self, hook, config, sizes, listen_programs, before_attach):
        lib = self._lib
        self._obj = lb.check_ptr(lib.bpf_object__open_file(self.object_path.encode(), None),
                                 f"open {self.object_path}")
        direct = self.direct_loads and hook != "kprobe"
        programs = [HOOKS[hook][0] + (DIRECT if direct else ""), *listen_programs,
                    *([KPROBE] if self.kprobe and hook != "kprobe" else [])]
        walk = config.listen == LISTEN_CHAIN
        for name in (*PROGRAMS, *listen.PROGRAMS, LISTEN_WALK):
            lib.bpf_program__set_autoload(self._program(name), name in programs or
                                          (walk and name == LISTEN_WALK))
        self._set_config(config)
        # Only LISTEN_CHAIN keeps "befores", on every CPU.
        cpus = host.possible_cpus() if walk else []
        least, most = CHAIN_READINGS
        sizes = {**sizes, "listen_baselines": min(max(CHAIN_NETNS * len(cpus), least), most) if walk else 1,
                 "cpu_ids": len(cpus) or 1}
        for name, size in sizes.items():
            lb.check_int(lib.bpf_map__set_max_entries(self._map(name), size), f"size map {name}")
        lb.check_int(lib.bpf_object__load(self._obj), "load")
        fds = {name: lib.bpf_map__fd(self._map(name)) for name in CORE_MAPS}
        for index, cpu in enumerate(cpus):  # before the hooks run: they walk them
            key, value = ctypes.c_uint32(index), ctypes.c_uint32(cpu)
            lb.check_int(lib.bpf_map_update_elem(fds["cpu_ids"], ctypes.byref(key), ctypes.byref(value), 0),
                         "set cpu_ids")
        before_attach(fds)
        for name in programs:
            self._links.append((name, lb.check_ptr(lib.bpf_program__attach(self._program(name)),
                                                   f"attach {name}")))
        if walk:  # the hooks run: now the first "before" of every task's namespace
            self._read_iterator(LISTEN_WALK)
        return {name: lib.bpf_program__fd(self._program(name)) for name in programs}, fds

    def netns_tasks(self):
        return netns_task_list(self._read_iterator(NETNS_TASKS))

    def pin(self, pinned):
        """Pins the attached programs' links (which keep them attached), the
        programs, the namespace iterator and the maps in pinned (a
        pins.PinnedSet); LibbpfError if this kernel cannot pin one (a
        tracepoint attached through a perf event, before 5.15)."""
        for name, link in self._links:
            pinned.pin_link(link, name)
            pinned.pin(self._lib.bpf_program__fd(self._program(name)), pins.PROGRAM + name)
        pinned.pin(self._lib.bpf_program__fd(self._program(NETNS_TASKS)), pins.ITERATOR + NETNS_TASKS)
        for name in CORE_MAPS:
            pinned.pin(self._lib.bpf_map__fd(self._map(name)), pins.MAP + name)
        self._pinned = True

    def _read_iterator(self, name):
        """What the iterator program writes in one run over every task."""
        lib = self._lib
        link = lb.check_ptr(lib.bpf_program__attach_iter(self._program(name), None), f"attach {name}")
        try:
            return iterator_records(lib, lib.bpf_link__fd(link), name)
        finally:
            lib.bpf_link__destroy(link)

    def _program(self, name):
        return lb.check_ptr(self._lib.bpf_object__find_program_by_name(self._obj, name.encode()),
                            f"find program {name}")

    def _set_config(self, config):
        """Write config into .rodata, where `cfg` lives, before load freezes it."""
        rodata = self._map(".rodata")
        size = ctypes.c_size_t()
        data = lb.check_ptr(self._lib.bpf_map__initial_value(rodata, ctypes.byref(size)),
                            ".rodata initial value")
        offset = Btf(self._lib, self._lib.bpf_object__btf(self._obj), owned=False) \
            .datasec_offset(".rodata", "cfg")
        if offset + ctypes.sizeof(ProbeConfig) > size.value:
            raise ProbeError(f"{self.object_path}: its settings are smaller than this program's: "
                             "the probe object does not match this program; reinstall")
        ctypes.memmove(data + offset, ctypes.addressof(config), ctypes.sizeof(ProbeConfig))

    def _map(self, name):
        return lb.check_ptr(self._lib.bpf_object__find_map_by_name(self._obj, name.encode()),
                            f"find map {name}")

    def close(self):
        for _, link in reversed(self._links):
            if self._pinned:  # else libbpf disables a tracepoint's perf event, pinned or not
                self._lib.bpf_link__disconnect(link)
            self._lib.bpf_link__destroy(link)
        if self._obj:
            self._lib.bpf_object__close(self._obj)
        self._links, self._obj = [], None
