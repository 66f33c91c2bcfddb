"""scripts/bench_eqar.py runs end to end in a tiny setting and prints every figure it promises."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_eqar_tiny_run(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "scripts/bench_eqar.py", "--tokens", "2", "3", "--steps", "1", "--batch", "1",
                           "--eval-batch", "2", "--train-iters", "1", "--train-batch", "2", "--dtypes", "fp32",
                           "--threads", "1", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    timed = [(r["tokens"], r["cache"], r["batch"]) for r in rows if "seconds" in r]
    # the token counts asked for, then 16 tokens at the eval batch
    assert timed == [(2, True, 1), (2, False, 1), (3, True, 1), (3, False, 1), (16, True, 2), (16, False, 2)]
    assert all(0 <= r["flow_head_share"] <= 1 for r in rows if "seconds" in r)
    assert sum("train_images_per_s" in r for r in rows) == 1
    assert proc.stdout.count("cache speed-up at") == 3


def test_bench_eqar_fast_vs_module(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "scripts/bench_eqar.py", "--fast-vs-module", "--tokens", "2", "3",
                           "--batches", "1", "2", "--reps", "1", "--steps", "1", "--threads", "1", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(r["batch"], r["tokens"]) for r in rows] == [(1, 2), (1, 3), (2, 2), (2, 3)]
    for r in rows:
        assert r["module_s"] > 0 and r["fast_s"] > 0 and r["fast+batched_head_s"] > 0
        assert abs(r["speedup_fast"] - r["module_s"] / r["fast_s"]) < 0.006
    assert proc.stdout.count("tokens, batch") == 4


def test_bench_eqar_fast_vs_module_compiled(tmp_path):
    """--compiled adds the fast path under sample.compile=true's switches: latents within float tolerance of the
    module path's (the eager fast path: equal), compile time apart."""
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "scripts/bench_eqar.py", "--fast-vs-module", "--compiled", "--tokens", "5",
                           "--batches", "2", "--reps", "1", "--steps", "2", "--threads", "1", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (r,) = json.loads(out.read_text())
    assert r["max_abs_diff_fast"] == 0.0
    for k in ("fast+batched_head", "fast+compiled", "fast+batched_head+compiled"):
        assert r[f"{k}_s"] > 0 and 0 <= r[f"max_abs_diff_{k}"] < 1e-4, (k, r)
    assert "compile_s_fast+compiled" in r and "compile_s_fast+batched_head+compiled" in r
    assert "fast+batched_head+compiled" in proc.stdout
