"""The C library, loaded once, with the signatures of what the monitor calls
in it (what Python's os module lacks: mount, setns, statfs, malloc_trim, and
vsnprintf for libbpf's log)."""
import ctypes

LIBC = ctypes.CDLL(None, use_errno=True)  # the process's own: Python links it
LIBC.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                       ctypes.c_void_p]
LIBC.setns.argtypes = [ctypes.c_int, ctypes.c_int]
LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
LIBC.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
