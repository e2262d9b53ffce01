"""The CO-RE probe on other kernels: Debian's 6.1 (drop reasons, no rx_sk) and
5.10 (no drop reasons at all), booted under QEMU with the host's files
(tests/peers/kernel_vm.py). Slow: a VM boots in 12-19 s under emulation."""
import json
import sys
from pathlib import Path

import pytest

from conftest import require_root

sys.path.insert(0, str(Path(__file__).parent / "peers"))
import kernel_vm  # noqa: E402

pytestmark = [pytest.mark.kernel, pytest.mark.slow]
CLI = Path(sys.executable).parent / "telegraf-tcpdrop"

# Runs as root inside the VM: one tracer per hook, a SYN to a closed port
# over IPv4 and IPv6 for each, the JSON events written to the shared dir.
GUEST = """
set -e
ip link set lo up
for hook in tp_btf tracepoint; do
    {cli} trace --json --no-stack --port 9 --hook $hook > {out}/$hook.json 2> {out}/$hook.err &
    for i in $(seq 600); do grep -q attached {out}/$hook.err && break; sleep 0.1; done
    python3 -c 'import socket; [socket.socket(f).connect_ex((a, 9)) for f, a in
                ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))]'
    sleep 1
    kill -INT $! && wait $! || true
done
{cli} check > {out}/check.txt 2>&1
"""


@pytest.mark.parametrize("kernel, reason", [("6.1", "NO_SOCKET"), ("5.10", "UNKNOWN")])
def test_trace_on_another_kernel(kernel, reason):
    require_root()
    out = kernel_vm.CACHE / "vm-out" / f"test-{kernel}"
    if out.exists():
        for old in out.iterdir():
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / "guest.sh").write_text(GUEST.format(cli=CLI, out=out))
    code, output = kernel_vm.run(kernel, f"bash {out / 'guest.sh'}", timeout=900)
    assert code == 0, output[-3000:]
    check = (out / "check.txt").read_text()
    assert "ok    hook: tp_btf/kfree_skb attaches" in check, check
    for hook in ("tp_btf", "tracepoint"):
        assert f"I! attached to {'tp_btf/kfree_skb' if hook == 'tp_btf' else 'tracepoint/skb/kfree_skb'}" \
            in (out / f"{hook}.err").read_text()
        drops = [json.loads(line) for line in (out / f"{hook}.json").read_text().splitlines()]
        seen = {(d["family"], d["daddr"], d["dport"], d["state"], d["flags"], d["reason"],
                 d["location"].split("+")[0]) for d in drops}
        assert seen == {(4, "127.0.0.1", 9, "NONE", "SYN", reason, "tcp_v4_rcv"),
                        (6, "::1", 9, "NONE", "SYN", reason, "tcp_v6_rcv")}, drops
