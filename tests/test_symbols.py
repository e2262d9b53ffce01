"""Kernel addresses to names, from a kallsyms fixture and from the running kernel."""
import pytest

from telegraf_tcpdrop.symbols import KernelSymbols, SymbolsUnavailable, VARIABLES, FUNCTIONS, symbol_spans

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81a00000 T tcp_v4_rcv
ffffffff81a00400 t tcp_v4_fill_cb
ffffffff81a00500 D some_data
ffffffff81b00000 T nf_hook_slow
ffffffffc0000000 t nft_do_chain\t[nf_tables]
"""


@pytest.fixture
def symbols(tmp_path):
    path = tmp_path / "kallsyms"
    path.write_text(KALLSYMS)
    return KernelSymbols(path, tmp_path / "modules")


def test_a_module_loaded_later_is_read_when_it_shows_up(tmp_path, monkeypatch):
    """The first nft rule loads nf_tables after start-up: its addresses must
    not resolve to the last symbol of the modules known before, even one
    already resolved (cached) then. /proc/modules is looked at once a second
    at most: here at every call."""
    monkeypatch.setattr("telegraf_tcpdrop.symbols.MODULES_CHECK_SECONDS", 0)
    kallsyms, modules = tmp_path / "kallsyms", tmp_path / "modules"
    kallsyms.write_text(KALLSYMS)
    modules.write_text("nf_tables 356352 0 - Live 0xffffffffc0000000\n")
    symbols = KernelSymbols(kallsyms, modules)
    assert symbols.format(0xFFFFFFFFC0100010) == "nft_do_chain+0x100010"
    kallsyms.write_text(KALLSYMS + "ffffffffc0100000 t ipt_do_table\t[ip_tables]\n")
    modules.write_text("nf_tables 356352 1 - Live 0xffffffffc0000000\n")  # only a count changed
    assert symbols.format(0xFFFFFFFFC0100020) == "nft_do_chain+0x100020"
    modules.write_text("nf_tables 356352 0 - Live 0xffffffffc0000000\n"
                       "ip_tables 32768 0 - Live 0xffffffffc0100000\n")
    assert symbols.format(0xFFFFFFFFC0100020) == "ipt_do_table+0x20"  # cached as nft_do_chain's before
    assert symbols.format(0xFFFFFFFFC0100018) == "ipt_do_table+0x18"
    assert symbols.count() == 6


def test_resolve_to_the_function_holding_the_address(symbols):
    assert symbols.format(0xFFFFFFFF81A00099) == "tcp_v4_rcv+0x99"
    assert symbols.function(0xFFFFFFFF81A00099) == "tcp_v4_rcv"
    assert symbols.format(0xFFFFFFFF81A00400) == "tcp_v4_fill_cb+0x0"
    assert symbols.format(0xFFFFFFFF81A00600) == "tcp_v4_fill_cb+0x200"  # data symbols are skipped
    assert symbols.format(0xFFFFFFFFC0000010) == "nft_do_chain+0x10"  # module symbols too
    assert symbols.format(0x1000) == "0x1000"
    assert symbols.count() == 5


def test_hidden_addresses_are_a_clear_error(tmp_path):
    path = tmp_path / "kallsyms"
    path.write_text("0000000000000000 T _stext\n0000000000000000 T tcp_v4_rcv\n")
    with pytest.raises(SymbolsUnavailable, match="kptr_restrict"):
        KernelSymbols(path).count()


def test_running_kernel():
    with open("/proc/kallsyms") as f:
        addr = next(int(l.split()[0], 16) for l in f if l.split()[2] == "tcp_v4_rcv")
    if addr == 0:
        pytest.skip("kernel addresses are hidden from this user (kptr_restrict)")
    symbols = KernelSymbols()
    assert symbols.format(addr) == "tcp_v4_rcv+0x0"
    assert symbols.format(addr + 0x99) == "tcp_v4_rcv+0x99"


def test_spans_of_functions_in_one_pass(tmp_path):
    """What listen-queue drops need: where a function starts, and how far it goes."""
    path = tmp_path / "kallsyms"
    path.write_text(KALLSYMS)
    assert symbol_spans(["tcp_v4_rcv", "nf_hook_slow", "some_data", "no_such_function"], path) == {
        "tcp_v4_rcv": (0xFFFFFFFF81A00000, 0x400),  # to tcp_v4_fill_cb
        "nf_hook_slow": (0xFFFFFFFF81B00000, 0x3E500000)}  # to the module after it; data: no
    # and variables too, where asked, in the same read
    assert set(symbol_spans(["tcp_v4_rcv", "some_data"], path, FUNCTIONS + VARIABLES)) == {
        "tcp_v4_rcv", "some_data"}
