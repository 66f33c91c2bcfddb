"""scripts/bench_families.py --tiny (debug flavours of every sampling family, eager, compiled and auto) as a user runs
it: one table whose rows carry every column with sane values, and a verdict line per auto row (no time is
asserted)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

from tests.helpers import ROOT, env

FAMILIES = ("nat", "enat", "nit", "eqar")


def test_tiny_table(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_families.py"), "--tiny", "--json", str(out)],
                       cwd=ROOT, env=env(), capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-4000:]
    res = json.loads(out.read_text())
    cols = res["columns"]
    assert cols[:8] == ["family", "size", "flavour", "batch", "steps", "official", "mode", "dtype"]
    assert {"img/s", "img/s@official", "GFLOP/img", "TFLOP/s", "% peak", "peak MiB", "compile s"} <= set(cols)
    header = "| " + " | ".join(cols) + " |"
    assert header in p.stdout  # the printed table
    verdicts = [l for l in p.stdout.splitlines() if l.startswith("auto ")]
    assert len(verdicts) == len(FAMILIES), p.stdout[-3000:]
    assert all(": picked " in l and (l.endswith(": ok") or ": SLOWER than " in l) for l in verdicts), verdicts
    rows = res["rows"]
    assert {(r["family"], r["mode"]) for r in rows} == {(f, m) for f in FAMILIES for m in ("eager", "compiled", "auto")}
    assert res["peak_gflops"]["fp32"] > 0
    gflop = {}
    for r in rows:
        assert set(cols) <= set(r), r
        assert r["size"] == "debug" and r["flavour"] == "debug" and r["batch"] == 4 and r["dtype"] == "fp32"
        assert r["steps"] == r["official"] and r["img/s@official"] == r["img/s"]  # the recipe's own steps
        for c in ("img/s", "GFLOP/img", "TFLOP/s", "% peak", "peak MiB"):
            assert math.isfinite(r[c]) and r[c] > 0, (c, r)
        assert r["compile s"] >= 0 and (r["mode"] != "eager" or r["compile s"] == 0), r
        assert (r["auto pick"] in ("eager", "compiled", "mixed")) == (r["mode"] == "auto"), r
        assert math.isclose(r["TFLOP/s"], r["GFLOP/img"] * r["img/s"] / 1e3, rel_tol=1e-9)
        assert math.isclose(r["% peak"], 100 * r["TFLOP/s"] * 1e3 / res["peak_gflops"]["fp32"], rel_tol=1e-9)
        gflop.setdefault(r["family"], r["GFLOP/img"])
        assert r["GFLOP/img"] == gflop[r["family"]]  # one count per family and size, whatever the mode


def test_profile_prints_the_gemm_share():
    """--profile N: the top operators of one call and what bounds it (the GEMMs' share of FLOPs and time, their rate
    against the matmul peak)."""
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_families.py"), "--tiny", "--families", "nat",
                        "--modes", "eager", "--profile", "5"], cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "top operators by self CPU time: nat debug eager fp32" in p.stdout
    line = next(l for l in p.stdout.splitlines() if l.startswith("GEMMs ("))
    assert "% of the FLOPs" in line and "% of self CPU time" in line and "GFLOP/s matmul peak)" in line, line
