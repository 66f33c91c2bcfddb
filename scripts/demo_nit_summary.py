"""The NiT demo's table: FID per size of the trained model and of the same sampler from the step-0 weights, their
ratio, and the grids (copied next to the table). Writes <out>/fid.txt; exits 1 when a trained size misses the
demo's bar (FID at most half the untrained one).

  python scripts/demo_nit_summary.py --out outputs/demo_nit --trained-sizes 32x32,32x48,48x32 --unseen 48x48
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.evaluate import latest_result  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--trained-sizes", required=True)
    ap.add_argument("--unseen", default="")
    ap.add_argument("--seconds", type=int, default=None)
    a = ap.parse_args(argv)
    out = Path(a.out)
    trained = latest_result(out / "eval_trained" / "eval", "samples")["sizes"]
    untrained = latest_result(out / "eval_untrained" / "eval", "samples")["sizes"]
    sizes = [s for s in a.trained_sizes.split(",") if s] + ([a.unseen] if a.unseen else [])
    n = trained[sizes[0]]["n"]
    took = f", {a.seconds} s in all" if a.seconds is not None else ""
    lines = [f"NiT demo, Fashion-MNIST: FID-{n} per size against {n} test images at that size{took}",
             f"  {'size':>6}  {'':7}  {'trained':>8}  {'untrained':>9}  {'ratio':>6}"]
    ok = True
    for s in sizes:
        kind = "unseen" if s == a.unseen else "trained"
        fid = trained[s]["fid"]
        base = untrained.get(s, {}).get("fid")
        ratio = f"{fid / base:6.3f}" if base else "   -  "
        if kind == "trained" and (base is None or fid > base / 2):
            ok = False
        base_txt = f"{base:9.2f}" if base else f"{'-':>9}"
        lines.append(f"  {s:>6}  {kind:7}  {fid:8.2f}  {base_txt}  {ratio}   grid {out}/samples_{s}.png")
        shutil.copy(out / "eval_trained" / f"samples_{s}.png", out / f"samples_{s}.png")
        if (out / "eval_untrained" / f"samples_{s}.png").exists():
            shutil.copy(out / "eval_untrained" / f"samples_{s}.png", out / f"untrained_{s}.png")
    lines.append("  every trained size at most half the untrained FID: " + ("yes" if ok else "NO"))
    text = "\n".join(lines)
    (out / "fid.txt").write_text(text + "\n")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
