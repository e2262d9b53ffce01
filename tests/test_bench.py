"""A smoke run of the benchmark harness (bench/run.py --plan smoke, seconds),
so that `make bench` keeps working. Benchmark figures are not asserted here."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_root

pytestmark = pytest.mark.kernel
BENCH = Path(__file__).parent.parent / "bench"


def test_smoke_run_measures_every_monitor(tmp_path):
    require_root()
    out = tmp_path / "smoke.json"
    result = subprocess.run([sys.executable, str(BENCH / "run.py"), "--plan", "smoke", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    every = json.loads(out.read_text())["runs"]
    runs = {r["monitor"]: r for r in every if r["kind"] == "nft"}
    assert set(runs) == {"floor", "metrics", "trace"}
    assert all(r["packets"] == 20000 and r["drops_expected"] == 20000 for r in runs.values())
    assert runs["floor"]["programs"]["floor_kfree_skb"]["runs"] >= 20000
    # the hook's program, with or without direct loads (tcpdrop.c): the kernel's
    [hook] = [name for name in runs["metrics"]["programs"] if name.startswith("kfree_skb_btf")]
    assert runs["metrics"]["programs"][hook]["ns_per_run"] > 0
    assert runs["metrics"]["seen"] == {"drops": 20000, "overflow": 0}
    trace = runs["trace"]["seen"]
    assert trace["events"] + trace["held_back"] == 20000 and trace["events"] >= 1000
    assert 0 < runs["metrics"]["peak_rss_kib"] and 0 < runs["metrics"]["startup_s"] < 10
    # SYNs refused by a listener whose accept queue is full: counted exactly too
    [listen] = [r for r in every if r["kind"] == "listen"]
    assert listen["seen"] == {"drops": 20000, "overflow": 0}
    # (the storm's source ports run through the ephemeral range, where the two
    # connections filling the queue have theirs: a SYN on one goes to it instead)
    assert listen["programs"]["consume_skb_btf"]["runs"] >= 19000
