"""What another of Telegraf's inputs (inputs.exec) could do with Telegraf's
privileges: load a BPF tracing program (`r0 = 0; exit`), which needs CAP_BPF
and CAP_PERFMON. Prints one line of line protocol: the errno (0 = loaded)."""
import ctypes
import os
import struct

BPF_PROG_LOAD, BPF_PROG_TYPE_TRACEPOINT = 5, 5
SYS_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]

libc = ctypes.CDLL(None, use_errno=True)
program = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
instructions = ctypes.create_string_buffer(program)
license_ = ctypes.create_string_buffer(b"GPL")
# union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license (then zeros).
attr = ctypes.create_string_buffer(struct.pack("<IIQQ", BPF_PROG_TYPE_TRACEPOINT, 2,
                                               ctypes.addressof(instructions),
                                               ctypes.addressof(license_)), 128)
fd = libc.syscall(SYS_BPF, BPF_PROG_LOAD, attr, 128)
print(f"bpf_attempt errno={0 if fd >= 0 else ctypes.get_errno()}i")
