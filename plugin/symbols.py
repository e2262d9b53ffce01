"""Kernel addresses to symbol names, from /proc/kallsyms.

Read on first use, so start-up does not pay for it, and again when the
loaded modules have changed (nf_tables loaded by the first nft rule, say):
an address in a module loaded after the read would otherwise resolve to the
last symbol before it, in some other module.

Kept compact, as two arrays and one blob of names (~4 MiB for 120,000
functions, where lists of ints and strings took 25 MiB).
"""
import array
import bisect
import time

MODULES_CHECK_SECONDS = 1.0  # /proc/modules is read at most this often


class SymbolsUnavailable(Exception):
    pass


def hidden(path):
    return SymbolsUnavailable(f"{path} hides kernel addresses from this process: grant it CAP_SYSLOG "
                              "(with sysctl kernel.kptr_restrict at 0 or 1), or run it as root")


def open_kallsyms(path="/proc/kallsyms"):
    """kallsyms, opened (binary); SymbolsUnavailable, saying why, if it cannot be."""
    try:
        return open(path, "rb")
    except OSError as e:
        raise SymbolsUnavailable(
            f"cannot read {path} ({e.strerror}), which names the drop sites: if a systemd unit "
            "runs the monitor, do not set ProtectKernelTunables= there (it hides this file)") from None


FUNCTIONS = (b" T ", b" t ")  # kallsyms' kinds of symbol: text (code)
VARIABLES = (b" D ", b" d ", b" B ", b" b ")  # data, and zeroed data


def symbol_spans(names, path="/proc/kallsyms", kinds=FUNCTIONS):
    """{name: (address, length)} of these kernel symbols of these kinds
    (functions, by default), where kallsyms has them, in one read of it (a
    few tens of ms); the length runs to the next symbol above. kallsyms
    lists the kernel's own symbols in address order (modules come after,
    each in its own), so that is on one of the lines that follow."""
    with open_kallsyms(path) as f:
        text = f.read()
    spans = {}
    for name in names:
        for kind in kinds:
            at = text.find(kind + name.encode())
            while at >= 0 and text[at + 3 + len(name):at + 4 + len(name)] not in (b"\n", b"\t"):
                at = text.find(kind + name.encode(), at + 1)  # a longer name that starts alike
            if at >= 0:
                break
        else:
            continue
        start = int(text[text.rfind(b"\n", 0, at) + 1:at], 16)
        if not start:
            raise hidden(path)
        for line in text[at:at + 4096].split(b"\n")[1:]:
            if line and int(line.split(None, 1)[0], 16) > start:
                spans[name] = (start, int(line.split(None, 1)[0], 16) - start)
                break
    return spans


class KernelSymbols:
    def __init__(self, path="/proc/kallsyms", modules_path="/proc/modules"):
        self._path, self._modules_path = path, modules_path
        self._addrs = self._starts = self._ends = self._names = None
        self._modules = None
        self._cache = {}
        self._next_modules_check = 0.0

    def _loaded_modules(self):
        """{(name, base address)} of the loaded modules."""
        try:
            with open(self._modules_path, errors="surrogateescape") as f:
                return {tuple(line.split()[0:6:5]) for line in f}
        except OSError:  # no module support
            return set()

    def _load(self):
        self._modules = self._loaded_modules()
        self._cache.clear()
        addrs, offsets, names = array.array("Q"), array.array("I"), bytearray()
        with open_kallsyms(self._path) as f:
            for line in f:
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in (b"t", b"T"):
                    addrs.append(int(parts[0], 16))
                    offsets.append(len(names))
                    names += parts[2]
        offsets.append(len(names))
        if addrs and not any(addrs[:100]):
            raise hidden(self._path)
        order = range(len(addrs))
        if any(addrs[i] > addrs[i + 1] for i in range(len(addrs) - 1)):  # modules come last, unsorted
            order = sorted(order, key=addrs.__getitem__)
        self._addrs = array.array("Q", (addrs[i] for i in order))
        self._starts = array.array("I", (offsets[i] for i in order))
        self._ends = array.array("I", (offsets[i + 1] for i in order))
        self._names = bytes(names)

    def _name(self, i):
        return self._names[self._starts[i]:self._ends[i]].decode("ascii", "replace")

    def count(self):
        """How many kernel functions are known; reads kallsyms if not yet done."""
        if self._addrs is None:
            self._load()
        return len(self._addrs)

    def resolve(self, addr):
        """(name, offset) of the function holding addr, or (None, 0). Names
        cached before a module came or went are not trusted after it."""
        now = time.monotonic()
        if now >= self._next_modules_check:
            self._next_modules_check = now + MODULES_CHECK_SECONDS
            if self._addrs is not None and self._loaded_modules() != self._modules:
                self._addrs = None
        if self._addrs is None:
            self._load()
        if addr in self._cache:
            return self._cache[addr]
        i = bisect.bisect_right(self._addrs, addr) - 1
        found = (self._name(i), addr - self._addrs[i]) if i >= 0 else (None, 0)
        self._cache[addr] = found
        return found

    def function(self, addr):
        """'tcp_v4_rcv', or the address in hex when it is not in kallsyms."""
        name, _ = self.resolve(addr)
        return name or f"0x{addr:x}"

    def format(self, addr):
        """'tcp_v4_rcv+0x1f4', as the kernel prints %pS."""
        name, offset = self.resolve(addr)
        return f"{name}+0x{offset:x}" if name else f"0x{addr:x}"


def drop_site_stack(ips, location, function):
    """The stack from the drop site down: frames above it are the tracing
    machinery (bpf_prog_*, bpf_trace_run*, sk_skb_reason_drop, ...). A SYN a
    listener refused has no drop site on its stack (tcp_conn_request() had
    returned): it starts below consume_skb(), which freed the SYN."""
    if location in ips:
        return ips[ips.index(location):]
    names = [function(ip) for ip in ips]
    if "consume_skb" in names:
        return ips[names.index("consume_skb") + 1:]
    return ips
