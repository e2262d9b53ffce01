"""Reading BTF (the kernel's type information, or an object's) through libbpf.

Names that the kernel renumbers between versions, like enum skb_drop_reason,
are read here from the running kernel instead of being kept in a table.
"""
import ctypes

from . import libbpf as lb


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
        """{name: value} of these enumerators of the kernel's anonymous enums
        (the linux_mib indices, which move between versions)."""
        found = {}
        for type_id in range(1, self._lib.btf__type_cnt(self._handle)):
            head = self._lib.btf__type_by_id(self._handle, type_id).contents
            if head.kind != lb.BTF_KIND_ENUM or head.name_off:
                continue
            addr = ctypes.addressof(head) + ctypes.sizeof(lb.BtfType)
            for member in (lb.BtfEnum * head.vlen).from_address(addr):
                name = self._name(member.name_off)
                if name in names:
                    found[name] = member.val
        return found

    def has_member(self, struct, member):
        """Whether `struct struct` has a field named member."""
        head = self._find(struct, lb.BTF_KIND_STRUCT)
        if not head:
            return False
        addr = ctypes.addressof(head.contents) + ctypes.sizeof(lb.BtfType)
        return any(self._name(m.name_off) == member
                   for m in (lb.BtfMember * head.contents.vlen).from_address(addr))

    def datasec_offset(self, section, variable):
        """Byte offset of a global `variable` inside `section` (e.g. ".rodata")."""
        head = self._find(section, lb.BTF_KIND_DATASEC)
        if not head:
            raise KeyError(f"no section {section} in BTF")
        addr = ctypes.addressof(head.contents) + ctypes.sizeof(lb.BtfType)
        for info in (lb.BtfVarSecinfo * head.contents.vlen).from_address(addr):
            var = self._lib.btf__type_by_id(self._handle, info.type).contents
            if self._name(var.name_off) == variable:
                return info.offset
        raise KeyError(f"no variable {variable} in {section}")
