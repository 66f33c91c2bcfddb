"""Peak memory and time of loading released generator weights: a NiT-XL flat .safetensors file and an equivariant
`large` container ({'model', 'model_ema', ..., 'args'}, the two copies stored separately), each read the whole-file
way (torch.load / safetensors load_file, then a strict copy: how the project loaded them before) and the way
`engine.generate.load_weights` reads them now (memory-mapped, EMA only, `safe_open` a group at a time).

Random weights with the official key layout (assets/layouts/) are written once into a temp folder (about 2.7 GB
and 5.2 GB; `--dir` keeps and reuses them). Each variant runs in a fresh process so that peaks do not mix; its peak
RSS (VmHWM) includes building the model and reading every weight once after the load (a checksum: a mapped load
reads pages on first use), so the figure is what sampling would hold; `imports` is the RSS before the model is
built (python, torch, the project), `load+read s` the load plus that first read. `--tiny` does the same with the
debug recipes (seconds; tests run it).

    python scripts/bench_load.py [--tiny] [--dir DIR] [--json rows.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {  # name: (recipe, layout file, container kind)
    "nit_xl": ("configs/nit_XL.yaml", "assets/layouts/keys_nit_xl.json", "safetensors"),
    "eqar_large": ("configs/eqar_places_large.yaml", "assets/layouts/keys_equ_generator_large.json", "container"),
}
TINY = {"nit_xl": "configs/debug/nit_debug.yaml", "eqar_large": "configs/debug/eqar_debug.yaml"}
VARIANTS = ("whole", "mapped")


def _shapes(case: str, tiny: bool) -> dict:
    if tiny:
        import torch
        from engine.config import load_config
        from models import build_model
        with torch.device("meta"):
            model, _ = build_model(load_config(TINY[case]))
        return {k: list(v.shape) for k, v in model.state_dict().items()}
    return json.loads((ROOT / CASES[case][1]).read_text())["keys"]


def _random(shapes: dict, seed: int) -> dict:
    import torch
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}


def build_file(case: str, folder: Path, tiny: bool) -> Path:
    """The weights file of `case` in `folder` (written once)."""
    import torch
    kind = CASES[case][2]
    path = folder / (f"{case}.safetensors" if kind == "safetensors" else f"{case}.ckpt")
    if path.exists():
        return path
    shapes = _shapes(case, tiny)
    tmp = path.with_name(path.name + ".part")
    if kind == "safetensors":
        from safetensors.torch import save_file
        save_file(_random(shapes, 0), str(tmp))
    else:
        flavour = "debug" if tiny else "large_model"
        model = _random(shapes, 1)
        ema = _random(shapes, 0)
        torch.save({"model": model, "model_ema": ema, "optimizer": {}, "epoch": 0, "scaler": {},
                    "args": argparse.Namespace(model=flavour)}, tmp)
        del model, ema
    os.replace(tmp, path)
    return path


def _status_bytes(field: str) -> int:
    """VmHWM (peak RSS) or VmRSS of this process; ru_maxrss where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(case: str, variant: str, path: str, tiny: bool) -> dict:
    """Build the model, load `path` one way, read every weight once; peak RSS, load time, bytes in use."""
    import torch
    from core.loading import extract_state_dict, load_strict
    from engine.config import load_config
    from engine.generate import load_weights
    from models import build_model
    cfg = load_config(TINY[case] if tiny else CASES[case][0], [f"eval.pretrained_path={path}"])
    base = _status_bytes("VmRSS")  # python, torch and the project imported
    model, fam = build_model(cfg)
    t = time.perf_counter()
    if variant == "mapped":
        load_weights(model, cfg, fam.name)
    elif path.endswith(".safetensors"):
        from safetensors.torch import load_file
        load_strict(model, extract_state_dict(load_file(path)), path)
    else:
        with torch.serialization.safe_globals([argparse.Namespace]):  # the release pickles its args
            obj = torch.load(path, map_location="cpu", weights_only=True)
        load_strict(model, extract_state_dict(obj), path)
    seconds = time.perf_counter() - t
    with torch.no_grad():  # every weight read once (a mapped load reads pages on first use)
        checksum = sum(float(v.double().sum()) for v in model.state_dict().values())
    read = time.perf_counter() - t
    used = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    return {"case": case, "variant": variant, "load_s": seconds, "load_read_s": read, "base_rss": base,
            "peak_rss": _status_bytes("VmHWM"), "weights": used, "file": os.path.getsize(path), "checksum": checksum}


def measure(case: str, variant: str, path: Path, tiny: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, variant, str(path)] + (["--tiny"] * tiny)
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"error: {case} {variant} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="debug-size models (seconds)")
    ap.add_argument("--dir", help="folder for the weight files (kept); default: a temp folder removed at the end")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--child", nargs=3, metavar=("CASE", "VARIANT", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(*a.child, a.tiny)))
        return 0
    tmp = None if a.dir else tempfile.TemporaryDirectory(prefix="bench_load_")
    folder = Path(a.dir or tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for case in CASES:
            path = build_file(case, folder, a.tiny)
            for variant in VARIANTS:
                rows.append(measure(case, variant, path, a.tiny))
    finally:
        if tmp is not None:
            tmp.cleanup()
    mb = 1e6
    print(f"{'file':<12} {'load':<7} {'file MB':>8} {'in use MB':>10} {'imports MB':>11} {'peak RSS MB':>12} "
          f"{'peak/in use':>12} {'(peak-imports)/in use':>22} {'load s':>7} {'load+read s':>12}")
    for r in rows:
        print(f"{r['case']:<12} {r['variant']:<7} {r['file'] / mb:>8.0f} {r['weights'] / mb:>10.0f} "
              f"{r['base_rss'] / mb:>11.0f} {r['peak_rss'] / mb:>12.0f} {r['peak_rss'] / r['weights']:>12.2f} "
              f"{(r['peak_rss'] - r['base_rss']) / r['weights']:>22.2f} {r['load_s']:>7.2f} {r['load_read_s']:>12.2f}")
    for case in CASES:
        same = {r["checksum"] for r in rows if r["case"] == case}
        print(f"{case}: both loads give the same weights: {len(same) == 1}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
