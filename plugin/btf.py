"""Reading BTF (the kernel's type information, or an object's) through libbpf.

Names that the kernel renumbers between versions, like enum skb_drop_reason,
are read here from the running kernel instead of being kept in a table.
"""
import ctypes
import re
import struct

from . import libbpf as lb


class BtfError(Exception):
    """A type or member asked for is not in the BTF: one line naming it and what it means."""


class Btf:
    """One parsed BTF: the running kernel's (`vmlinux()`) or a file's (`parse(path)`)."""

    def __init__(self, lib, handle, owned=True):
        self._lib, self._handle, self._owned = lib, handle, owned

    @classmethod
    def vmlinux(cls, lib):
        return cls(lib, lb.check_ptr(lib.btf__load_vmlinux_btf(), "btf__load_vmlinux_btf"))

    @classmethod
    def parse(cls, lib, path):
        return cls(lib, lb.check_ptr(lib.btf__parse(str(path).encode(), None), f"btf__parse({path})"))

    def close(self):
        if self._handle and self._owned:
            self._lib.btf__free(self._handle)
        self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _name(self, offset):
        return self._lib.btf__name_by_offset(self._handle, offset).decode()

    def _find(self, name, kind):
        type_id = self._lib.btf__find_by_name_kind(self._handle, name.encode(), kind)
        if type_id < 0:
            return None
        return self._lib.btf__type_by_id(self._handle, type_id)

    def enum(self, name):
        """{value: enumerator name} of `enum name`, or None if the type is absent."""
        for kind, member in ((lb.BTF_KIND_ENUM, lb.BtfEnum), (lb.BTF_KIND_ENUM64, lb.BtfEnum64)):
            head = self._find(name, kind)
            if head:
                break
        else:
            return None
        # The members follow the btf_type head in memory.
        addr = ctypes.addressof(head.contents) + ctypes.sizeof(lb.BtfType)
        members = (member * head.contents.vlen).from_address(addr)
        if member is lb.BtfEnum:
            return {m.val & 0xFFFFFFFF: self._name(m.name_off) for m in members}
        return {m.val_hi32 << 32 | m.val_lo32: self._name(m.name_off) for m in members}

    def enumerators(self, names):
        """{name: value} of these members of the kernel's anonymous enums (the
        linux_mib indices, which move between versions). Found in the raw BTF:
        each name's offset in the string section, then an enum member {name
        offset, value} with it whose neighbours' values are one less and one
        more, as in the numbered runs these belong to: 2 ms, where asking
        libbpf for each of the kernel's ~130,000 types takes 60."""
        size = ctypes.c_uint32()
        address = lb.check_ptr(self._lib.btf__raw_data(self._handle, ctypes.byref(size)), "btf__raw_data")
        raw = memoryview((ctypes.c_char * size.value).from_address(address)).cast("B")  # not a copy
        header_len, types_at, types_len, strings_at, strings_len = struct.unpack_from("=4xIIIII", raw)
        strings = raw[header_len + strings_at:header_len + strings_at + strings_len]
        types = raw[header_len + types_at:header_len + types_at + types_len]
        found = {}
        for name in names:
            named = re.search(re.escape(b"\0" + name.encode() + b"\0"), strings)
            member = named and re.compile(re.escape(struct.pack("=I", named.start() + 1)))
            for at in (match.start() for match in member.finditer(types)) if member else ():
                if at % 4 == 0 and 4 <= at <= len(types) - 16:
                    previous, value, following = (struct.unpack_from("=i", types, at + delta)[0]
                                                  for delta in (-4, 4, 12))
                    if previous == value - 1 and following == value + 1:
                        found[name] = value
                        break
        return found

    def function_id(self, name):
        """The BTF id of kernel function name, or None."""
        type_id = self._lib.btf__find_by_name_kind(self._handle, name.encode(), lb.BTF_KIND_FUNC)
        return type_id if type_id > 0 else None

    def has_member(self, struct_name, member):
        """Whether `struct struct_name` has a field named member."""
        head = self._find(struct_name, lb.BTF_KIND_STRUCT)
        if not head:
            return False
        addr = ctypes.addressof(head.contents) + ctypes.sizeof(lb.BtfType)
        return any(self._name(m.name_off) == member
                   for m in (lb.BtfMember * head.contents.vlen).from_address(addr))

    def datasec_offset(self, section, variable):
        """Byte offset of a global `variable` inside `section` (e.g. ".rodata");
        BtfError if the object has no such variable."""
        head = self._find(section, lb.BTF_KIND_DATASEC)
        if head:
            addr = ctypes.addressof(head.contents) + ctypes.sizeof(lb.BtfType)
            for info in (lb.BtfVarSecinfo * head.contents.vlen).from_address(addr):
                var = self._lib.btf__type_by_id(self._handle, info.type).contents
                if self._name(var.name_off) == variable:
                    return info.offset
        missing = (f"global {variable} in section {section}" if head else
                   f"section {section}, where its global {variable} should be")
        raise BtfError(f"the BPF object's BTF has no {missing}: the object was not built from "
                       "this version's source; rebuild it (make probe) or reinstall the package")
