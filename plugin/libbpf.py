"""ctypes bindings to the system libbpf (libbpf.so.1): only the calls we use.

Every function returning a pointer returns None on failure with errno set
(libbpf 1.0 semantics); every function returning int returns a negative
errno. `check_ptr` and `check_int` turn both into LibbpfError.
"""
import ctypes
import functools
import os

from .libc import LIBC

LIBBPF_SONAME = "libbpf.so.1"

LIBBPF_WARN = 0  # enum libbpf_print_level: its others, INFO and DEBUG, only -v shows

# enum btf_kind
BTF_KIND_STRUCT, BTF_KIND_ENUM, BTF_KIND_FUNC, BTF_KIND_DATASEC, BTF_KIND_ENUM64 = 4, 6, 12, 15, 19

# linux/bpf.h (UAPI)
BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY = 26, 24
BPF_MAP_TYPE_ARRAY, BPF_TRACE_ITER = 2, 28
# r0 = 0; exit: the least program there is
RETURN_ZERO = bytes.fromhex("b700000000000000" "9500000000000000")

PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
RINGBUF_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class LibbpfError(Exception):
    def __init__(self, call, err):
        self.errno = abs(err)
        super().__init__(f"{call}: {os.strerror(self.errno)}")


class BpfProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info (linux/bpf.h, UAPI) up to
    recursion_misses (5.12+): the kernel fills what fits in the size we pass,
    and what it does not know stays 0."""
    _fields_ = [("head", ctypes.c_uint8 * 192), ("run_time_ns", ctypes.c_uint64),
                ("run_cnt", ctypes.c_uint64), ("recursion_misses", ctypes.c_uint64)]


class BpfMapInfo(ctypes.Structure):
    """The head of struct bpf_map_info (linux/bpf.h, UAPI), up to its id."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32)]


class BpfProgLoadOpts(ctypes.Structure):
    """The head of libbpf's struct bpf_prog_load_opts, up to attach_btf_obj_fd:
    sz tells libbpf how much of it we know."""
    _fields_ = [("sz", ctypes.c_size_t), ("attempts", ctypes.c_int),
                ("expected_attach_type", ctypes.c_uint32), ("prog_btf_fd", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_ifindex", ctypes.c_uint32),
                ("kern_version", ctypes.c_uint32), ("attach_btf_id", ctypes.c_uint32),
                ("attach_prog_fd", ctypes.c_uint32), ("attach_btf_obj_fd", ctypes.c_uint32)]


class BtfType(ctypes.Structure):
    """struct btf_type: the common head of every BTF type."""
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size_or_type", ctypes.c_uint32)]

    @property
    def kind(self):
        return (self.info >> 24) & 0x1F

    @property
    def vlen(self):
        return self.info & 0xFFFF


class BtfEnum(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("val", ctypes.c_int32)]


class BtfEnum64(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("val_lo32", ctypes.c_uint32), ("val_hi32", ctypes.c_uint32)]


class BtfMember(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32), ("offset", ctypes.c_uint32)]


class BtfVarSecinfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("offset", ctypes.c_uint32), ("size", ctypes.c_uint32)]


_P = ctypes.c_void_p
_SIGNATURES = {
    "libbpf_set_print": (_P, [PRINT_FN]),
    "libbpf_num_possible_cpus": (ctypes.c_int, []),
    "libbpf_version_string": (ctypes.c_char_p, []),
    "bpf_object__open_file": (_P, [ctypes.c_char_p, _P]),
    "bpf_object__load": (ctypes.c_int, [_P]),
    "bpf_object__close": (None, [_P]),
    "bpf_object__btf": (_P, [_P]),
    "bpf_object__find_program_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_object__find_map_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_program__set_autoload": (ctypes.c_int, [_P, ctypes.c_bool]),
    "bpf_prog_load": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                     ctypes.c_size_t, ctypes.POINTER(BpfProgLoadOpts)]),
    "bpf_raw_tracepoint_open": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_int]),
    "bpf_program__attach": (_P, [_P]),
    "bpf_program__attach_iter": (_P, [_P, _P]),
    "bpf_iter_create": (ctypes.c_int, [ctypes.c_int]),
    "bpf_link__fd": (ctypes.c_int, [_P]),
    "bpf_program__fd": (ctypes.c_int, [_P]),
    "bpf_link__destroy": (ctypes.c_int, [_P]),
    "bpf_link__disconnect": (None, [_P]),
    "bpf_map__fd": (ctypes.c_int, [_P]),
    "bpf_map__initial_value": (_P, [_P, ctypes.POINTER(ctypes.c_size_t)]),
    "bpf_map__set_max_entries": (ctypes.c_int, [_P, ctypes.c_uint32]),
    "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, _P, _P]),
    "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, _P, _P, ctypes.c_uint64]),
    "bpf_map_get_next_key": (ctypes.c_int, [ctypes.c_int, _P, _P]),
    "bpf_map_lookup_and_delete_batch": (ctypes.c_int, [ctypes.c_int, _P, _P, _P, _P,
                                                       ctypes.POINTER(ctypes.c_uint32), _P]),
    "bpf_map_lookup_batch": (ctypes.c_int, [ctypes.c_int, _P, _P, _P, _P, ctypes.POINTER(ctypes.c_uint32), _P]),
    "bpf_map_delete_batch": (ctypes.c_int, [ctypes.c_int, _P, ctypes.POINTER(ctypes.c_uint32), _P]),
    "bpf_map_create": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                                      ctypes.c_uint32, _P]),
    "bpf_obj_get_info_by_fd": (ctypes.c_int, [ctypes.c_int, _P, ctypes.POINTER(ctypes.c_uint32)]),
    "bpf_obj_pin": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p]),
    "bpf_obj_get": (ctypes.c_int, [ctypes.c_char_p]),
    "bpf_link__pin": (ctypes.c_int, [_P, ctypes.c_char_p]),
    "bpf_link_create": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_int, _P]),
    "ring_buffer__new": (_P, [ctypes.c_int, RINGBUF_SAMPLE_FN, _P, _P]),
    "ring_buffer__poll": (ctypes.c_int, [_P, ctypes.c_int]),
    "ring_buffer__free": (None, [_P]),
    "ring_buffer__epoll_fd": (ctypes.c_int, [_P]),
    "btf__load_vmlinux_btf": (_P, []),
    "btf__parse": (_P, [ctypes.c_char_p, _P]),
    "btf__free": (None, [_P]),
    "btf__raw_data": (_P, [_P, ctypes.POINTER(ctypes.c_uint32)]),
    "btf__find_by_name_kind": (ctypes.c_int32, [_P, ctypes.c_char_p, ctypes.c_uint32]),
    "btf__type_by_id": (ctypes.POINTER(BtfType), [_P, ctypes.c_uint32]),
    "btf__name_by_offset": (ctypes.c_char_p, [_P, ctypes.c_uint32]),
}


@functools.cache
def load():
    """The system libbpf with our signatures declared, loaded once; OSError if absent."""
    lib = ctypes.CDLL(LIBBPF_SONAME, use_errno=True)
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    lib.libbpf_set_print(_print)
    return lib


def set_log_handler(handler):
    """handler(level, line) receives libbpf's log from now on; None drops it."""
    global _log_handler
    _log_handler = handler


_log_handler = None


@PRINT_FN
def _print(level, fmt, va_list):
    # One callback for the life of the process: libbpf keeps the pointer.
    if _log_handler:
        _log_handler(level, vformat(fmt, va_list).rstrip())
    return 0


def check_ptr(ptr, call):
    if not ptr:
        raise LibbpfError(call, ctypes.get_errno() or 22)
    return ptr


def check_int(ret, call):
    if ret < 0:
        raise LibbpfError(call, ret)
    return ret


def fentry_attaches(lib, btf_id):
    """Whether a program can be attached at the entry of the kernel function
    with this BTF id: loads and attaches the least program there is, and
    lets go of it (a few ms, where a whole object that fails costs 40)."""
    opts = BpfProgLoadOpts(sz=ctypes.sizeof(BpfProgLoadOpts), expected_attach_type=BPF_TRACE_FENTRY,
                           attach_btf_id=btf_id)
    prog = lib.bpf_prog_load(BPF_PROG_TYPE_TRACING, b"fentry_probe", b"GPL", RETURN_ZERO,
                             len(RETURN_ZERO) // 8, ctypes.byref(opts))
    if prog < 0:
        return False
    link = lib.bpf_raw_tracepoint_open(None, prog)
    if link >= 0:
        os.close(link)
    os.close(prog)
    return link >= 0


def give_back_memory():
    """libbpf parses the kernel's BTF (MiBs) at every object load and frees it;
    glibc keeps freed memory in the heap unless asked: give it back, so the
    monitor's resident size stays what it uses (~10 MiB less)."""
    LIBC.malloc_trim(0)


def vformat(fmt, va_list):
    """Format a libbpf log line (printf format + va_list) with libc."""
    buf = ctypes.create_string_buffer(1 << 20)  # the verifier log comes as one message
    LIBC.vsnprintf(buf, len(buf), fmt, va_list)
    return buf.value.decode(errors="replace")

