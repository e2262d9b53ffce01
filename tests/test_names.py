"""Names of flags, states and drop reasons: from fixtures, and from the running kernel."""
import ctypes
import subprocess

import pytest

from telegraf_tcpdrop import libbpf
from telegraf_tcpdrop.btf import Btf
from telegraf_tcpdrop.host import KFREE_SKB_FORMAT
from telegraf_tcpdrop.startup import mount_tracefs
from telegraf_tcpdrop.event import REASON_LISTEN_OVERFLOW, REASON_SYN_QUEUE_FULL, REASON_UNKNOWN
from telegraf_tcpdrop.names import OWN_REASONS, DropReasons, flag_names, state_name

# An excerpt of a 6.1 format file: the numbering differs from 6.18's.
FORMAT_6_1 = ('print fmt: "skbaddr=%p protocol=%u location=%p reason: %s", REC->skbaddr, '
              'REC->protocol, REC->location, __print_symbolic(REC->reason, '
              '{ 1, "NOT_SPECIFIED" }, { 2, "NO_SOCKET" }, { 3, "PKT_TOO_SMALL" }, '
              '{ 67, "MAX" })\n')


@pytest.mark.parametrize("flags, names", [
    (0x00, ""), (0x01, "FIN"), (0x02, "SYN"), (0x12, "SYN|ACK"), (0x18, "PSH|ACK"),
    (0x04, "RST"), (0x20, "URG"), (0xC2, "SYN|ECE|CWR"), (0xFF, "FIN|SYN|RST|PSH|ACK|URG|ECE|CWR"),
])
def test_flag_names_in_bit_order(flags, names):
    assert flag_names(flags) == names


@pytest.mark.parametrize("state, name", [
    (0, "NONE"), (1, "ESTABLISHED"), (2, "SYN_SENT"), (3, "SYN_RECV"), (6, "TIME_WAIT"),
    (7, "CLOSE"), (10, "LISTEN"), (12, "NEW_SYN_RECV"), (99, "STATE_99"),
])
def test_state_names(state, name):
    assert state_name(state) == name


def test_reasons_from_a_format_file():
    reasons = DropReasons.from_format(FORMAT_6_1)
    assert reasons.name(2) == "NO_SOCKET"
    assert reasons.name(3) == "PKT_TOO_SMALL"
    assert reasons.name(500) == "REASON_500"
    assert reasons.name(REASON_UNKNOWN) == "UNKNOWN"
    assert reasons.number("no_socket") == 2
    assert reasons.number("SKB_DROP_REASON_NO_SOCKET") == 2
    with pytest.raises(KeyError):
        reasons.number("NOT_A_REASON")


def test_reasons_from_a_btf_fixture(tmp_path):
    """clang writes BTF for an enum numbered unlike any kernel: the names follow the numbers."""
    source = tmp_path / "reasons.c"
    source.write_text("enum skb_drop_reason { SKB_NOT_DROPPED_YET = 0, SKB_CONSUMED, "
                      "SKB_DROP_REASON_NOT_SPECIFIED, SKB_DROP_REASON_TCP_CSUM = 7, "
                      "SKB_DROP_REASON_MAX };\nenum skb_drop_reason keep;\n")
    subprocess.run(["clang", "-target", "bpf", "-g", "-c", str(source), "-o", str(tmp_path / "r.o")],
                   check=True)
    with Btf.parse(libbpf.load(), tmp_path / "r.o") as btf:
        reasons = DropReasons.from_btf(btf)
        assert btf.enum("no_such_enum") is None
    assert reasons.names == {0: "NOT_DROPPED_YET", 1: "CONSUMED", 2: "NOT_SPECIFIED",
                             7: "TCP_CSUM", 8: "MAX"}


def test_running_kernel_btf_and_format_file_agree():
    """The two sources of names on this kernel give the same name for every value."""
    mount_tracefs()
    with Btf.vmlinux(libbpf.load()) as btf:
        from_btf = DropReasons.from_btf(btf)
    with open(KFREE_SKB_FORMAT) as f:
        from_format = DropReasons.from_format(f.read())
    assert len(from_format.names) > 50
    for value, name in from_format.names.items():
        assert from_btf.name(value) == name
    assert from_btf.name(from_btf.number("NO_SOCKET")) == "NO_SOCKET"



def test_own_reasons_are_named_and_selected_like_the_kernels():
    reasons = DropReasons({2: "NO_SOCKET"})
    assert reasons.name(REASON_SYN_QUEUE_FULL) == "syn-queue-full"
    assert reasons.number("syn-queue-full") == REASON_SYN_QUEUE_FULL
    assert reasons.number("LISTEN-OVERFLOW") == REASON_LISTEN_OVERFLOW
    assert reasons.number("unknown") == REASON_UNKNOWN
    # lowercase with hyphens: no kernel reason is spelled so
    assert all(name == "UNKNOWN" or ("-" in name and name.islower()) for name in OWN_REASONS.values())


def test_anonymous_enum_members_from_the_raw_btf_agree_with_a_walk_of_every_type():
    """Btf.enumerators finds linux_mib's indices by their names' offsets; a
    slow walk through libbpf of every type must find the same values."""
    wanted = {"LINUX_MIB_LISTENDROPS", "LINUX_MIB_LISTENOVERFLOWS", "LINUX_MIB_TCPREQQFULLDROP",
              "LINUX_MIB_TCPBACKLOGDROP"}
    lib = libbpf.load()
    lib.btf__type_cnt.restype, lib.btf__type_cnt.argtypes = ctypes.c_uint32, [ctypes.c_void_p]
    with Btf.vmlinux(lib) as btf:
        fast = btf.enumerators(wanted)
        walked = {}
        for type_id in range(1, lib.btf__type_cnt(btf._handle)):
            head = lib.btf__type_by_id(btf._handle, type_id).contents
            if head.kind == libbpf.BTF_KIND_ENUM and not head.name_off:
                members = (libbpf.BtfEnum * head.vlen).from_address(ctypes.addressof(head) + 12)
                walked.update({btf._name(m.name_off): m.val for m in members
                               if btf._name(m.name_off) in wanted})
    assert fast == walked and len(fast) == 4
