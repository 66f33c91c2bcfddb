"""Sampling speed of every family in one table: images/s, GFLOPs per image, achieved TFLOP/s and its share of this
machine's matmul peak (measured in the same run, per dtype), peak memory; eager, compiled (sample.compile=true) and
auto (sample.compile=auto: which path it kept, and whether that was the faster of the eager and compiled rows of the
same run) side by side.

Each family runs at its demo size (configs/demo/*) and at one released size on random weights (AutoNAT-L T8,
ENAT-L-256 8 steps, NiT-XL 256 px, eqar large with the release's 100 flow steps per token), through the public
sampling path: the recipe's config, models.build_model, Family.settings, engine.compile_sampling.install (what
`sample.compile` does) and engine.generate.generate. The sampler only: no tokenizer decode. Where a released size
runs fewer steps than its recipe (--steps), the table says which, and the img/s@official column scales the measured
rate by steps ran / official steps (the cost per step is the same at every step for nat, and close to it for the
others: NiT's guided share of steps, ENAT's masked counts move a little).

GFLOPs: FlopCounterMode over one eager call (2 x MACs, SDPA's CPU kernel counted as explicit attention, as
scripts/bench_flops.py). Time: the best of --reps calls after a warm-up call (for compiled rows the warm-up holds the
compile: 'compile s' is that call's time minus a steady call's). Peak memory: CUDA max_memory_allocated, or on the
CPU the process's peak resident set over the timed calls (reset through /proc/self/clear_refs), weights included.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_families.py [--families nat,enat,nit,eqar] [--sizes demo,released]
        [--modes eager,compiled] [--dtypes fp32,bf16] [--batch demo=16,released=1] [--steps nit=4] [--json out.json]
    .venv/bin/python scripts/bench_families.py --tiny      # debug flavours, a few seconds (the test suite's run)
    ... --families nat --sizes released --modes eager --dtypes bf16 --profile 15 \
        --set sample.strategy=cosine sample.gen_steps=1      # top operators of one step instead of the table
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts")]

from bench_flops import count_flops  # noqa: E402
from bench_peak import matmul_peaks, quiet_logs  # noqa: E402

RECIPES = {
    "nat": {"debug": "configs/debug/autonat_debug.yaml", "demo": "configs/demo/nat_fmnist.yaml",
            "released": "configs/AutoNAT_L.yaml"},
    "enat": {"debug": "configs/debug/enat_debug.yaml", "demo": "configs/demo/enat_fmnist.yaml",
             "released": "configs/enat_L_256.yaml"},
    "nit": {"debug": "configs/debug/nit_debug.yaml", "demo": "configs/demo/nit_fmnist.yaml",
            "released": "configs/nit_XL.yaml"},
    "eqar": {"debug": "configs/debug/eqar_debug.yaml", "demo": "configs/demo/eqar_fmnist.yaml",
             "released": "configs/eqar_large.yaml"},
}
STEP_KEY = {"nat": "sample.gen_steps", "enat": "sample.gen_steps", "nit": "sample.steps",
            "eqar": "sample.num_sampling_steps"}
EXTRA = {("nit", "debug"): ["sample.height=32", "sample.width=32"]}  # a 1 x 1 latent grid is no picture
COLUMNS = ["family", "size", "flavour", "batch", "steps", "official", "mode", "dtype", "img/s", "img/s@official",
           "GFLOP/img", "TFLOP/s", "% peak", "peak MiB", "compile s", "auto pick"]


def steps_text(fam: str, cfg) -> str:
    s = cfg.sample
    if fam in ("nat", "enat"):
        return f"T={int(s.gen_steps)}"
    if fam == "nit":
        return f"{s.mode} {int(s.steps)}"
    tokens = int(s.num_iter) if s.num_iter is not None else int(cfg.data.token_num)
    return f"{tokens}x{int(s.num_sampling_steps)}"


def step_count(fam: str, cfg) -> int:
    return int(cfg.sample.gen_steps if fam in ("nat", "enat") else cfg.sample.steps if fam == "nit"
               else cfg.sample.num_sampling_steps)


def _peak_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_row(fam_name: str, size: str, mode: str, dtype: str, batch: int, steps: int | None, reps: int, device,
              flops_cache: dict, profile: int = 0, extra: tuple = (), peak_gflops: dict | None = None) -> dict:
    from engine.compile_sampling import install
    from engine.config import load_config
    from engine.generate import generate
    from engine.precision import autocast
    from models import build_model
    recipe = RECIPES[fam_name][size]
    official_cfg = load_config(os.path.join(ROOT, recipe), EXTRA.get((fam_name, size), []), mode="eval")
    policy = {"compiled": "true", "auto": "auto"}.get(mode, "false")
    over = [*EXTRA.get((fam_name, size), []), *extra, f"sample.compile={policy}"]
    if steps is not None:
        over.append(f"{STEP_KEY[fam_name]}={steps}")
    cfg = load_config(os.path.join(ROOT, recipe), over, mode="eval")
    torch.manual_seed(0)
    model, fam = build_model(cfg)  # random weights: speed and FLOPs do not depend on their values
    model = model.to(device).eval()  # parameters still require grad, as in an eval: autocast caches their casts
    switches = install(model, fam, cfg, device)
    settings = fam.sampling.settings(cfg, model)
    classes = fam.sampling.num_classes(model, cfg) if fam.sampling.num_classes is not None else int(cfg.data.num_classes)
    labels = (torch.arange(batch) % classes).to(device)
    prec = "fp32" if dtype == "fp32" else dtype

    def call():
        with autocast(device, prec):
            generate(model, fam, settings, labels, range(batch), int(cfg.seed))

    if profile:
        call()  # warm-up
        from torch.profiler import ProfilerActivity, profile as torch_profile
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            call()
        print(f"top operators by self CPU time: {fam_name} {size} {mode} {dtype}, batch {batch}, "
              f"{steps_text(fam_name, cfg)}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile))
        if mode == "eager":
            print(gemm_share(prof, call, peak_gflops.get(dtype) if peak_gflops else None))
        return {}
    key = (fam_name, size, batch, steps, extra)
    counted = key not in flops_cache
    if counted:  # on the eager path (FlopCounterMode sees no compiled kernels)
        model.requires_grad_(False)  # its module hooks want no grad leaves under inference mode
        modes = [sw.mode for sw in switches]
        for sw in switches:
            sw.mode = False
        flops_cache[key] = count_flops(call) / batch
        for sw, m in zip(switches, modes):
            sw.mode = m
        model.requires_grad_(True)
    first = 0.0
    if mode != "eager" or not counted:  # the counted call was the eager warm-up
        _sync(device)
        t0 = time.perf_counter()
        call()  # warm-up (compiled: the compile)
        _sync(device)
        first = time.perf_counter() - t0
    _peak_reset(device)
    best = math.inf
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        call()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    peak = _peak_mib(device)
    ips = batch / best
    ran, official = step_count(fam_name, cfg), step_count(fam_name, official_cfg)
    gflop = flops_cache[key] / 1e9
    picks = {v for sw in switches for v in sw.chosen.values()}
    pick = "" if mode != "auto" else "eager" if picks <= {False} else "compiled" if picks == {True} else "mixed"
    return {"family": fam_name, "size": size, "flavour": str(cfg.model.flavour), "batch": batch,
            "steps": steps_text(fam_name, cfg), "official": steps_text(fam_name, official_cfg), "mode": mode,
            "dtype": dtype, "img/s": ips, "img/s@official": ips * ran / official, "GFLOP/img": gflop,
            "TFLOP/s": gflop * ips / 1e3, "peak MiB": peak,
            "compile s": max(first - best, 0.0) if mode != "eager" else 0.0, "auto pick": pick}


GEMM_OPS = ("addmm", "mm", "bmm", "baddbmm")  # aten ops whose FLOPs are matrix multiplies


def gemm_share(prof, call, peak: float | None) -> str:
    """What bounds an eager row: the matrix multiplies' share of self CPU time and their own rate (their FLOPs, from
    FlopCounterMode over one more call, over their self time), against the matmul peak of the dtype."""
    from torch.utils.flop_counter import FlopCounterMode
    from bench_flops import register_cpu_sdpa_flops
    register_cpu_sdpa_flops()
    with FlopCounterMode(display=False) as counter:
        call()
    by_op = {str(k).split(".")[-1]: v for k, v in counter.get_flop_counts().get("Global", {}).items()}
    gemm_flops, total_flops = sum(by_op.get(o, 0) for o in GEMM_OPS), sum(by_op.values())
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    gemm_us = sum(e.self_cpu_time_total for e in events if e.key in {f"aten::{o}" for o in GEMM_OPS})
    rate = gemm_flops / max(gemm_us, 1e-9) / 1e3  # GFLOP/s
    text = (f"GEMMs ({'/'.join(GEMM_OPS)}): {100 * gemm_flops / max(total_flops, 1):.1f}% of the FLOPs, "
            f"{100 * gemm_us / max(total_us, 1e-9):.1f}% of self CPU time, {rate:.1f} GFLOP/s while running")
    if peak:
        text += f" ({100 * rate / peak:.1f}% of the {peak:.0f} GFLOP/s matmul peak)"
    return text


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def table(rows: list[dict]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(out)


AUTO_SLACK = 0.9  # auto within 10% of the faster path counts as keeping it: rows of one run differ by that much


def auto_verdicts(rows: list[dict]) -> list[str]:
    """Per auto row: did it run at the rate of the faster of the same run's eager and compiled rows? (Its picks are
    made per input shape inside the run, so a row is the fair comparison, not the pick alone: with few steps an
    eager row also pays its one cast of the weights to bf16 per call, which a long run spreads over every step.)"""
    out = []
    for r in rows:
        if r["mode"] != "auto":
            continue
        same = {o["mode"]: o["img/s"] for o in rows if o["mode"] in ("eager", "compiled") and
                all(o[k] == r[k] for k in ("family", "size", "batch", "steps", "dtype"))}
        if len(same) < 2:
            continue
        faster = max(same, key=same.get)
        ok = r["img/s"] >= AUTO_SLACK * same[faster]
        out.append(f"auto {r['family']} {r['size']} {r['dtype']}: picked {r['auto pick']}, faster row {faster} "
                   f"(eager {same['eager']:.3g}, compiled {same['compiled']:.3g}, auto {r['img/s']:.3g} img/s): "
                   + ("ok" if ok else f"SLOWER than {faster}"))
    return out


def _pairs(text: str | None, cast=int) -> dict:
    return {k: cast(v) for k, v in (p.split("=") for p in text.split(","))} if text else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="debug flavours, batch 4, fp32 unless --dtypes (tests)")
    ap.add_argument("--families", default="nat,enat,nit,eqar")
    ap.add_argument("--sizes", default="demo,released")
    ap.add_argument("--modes", default="eager,compiled,auto", help="eager, compiled (sample.compile=true), auto")
    ap.add_argument("--dtypes", default=None, help="fp32[,bf16]; default fp32, and bf16 where native")
    ap.add_argument("--batch", default="demo=16,released=1,debug=4", help="batch per size")
    ap.add_argument("--steps", default=None, help="family=steps for the released size (e.g. nit=4): fewer steps "
                                                  "than the recipe, scaled in img/s@official")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the rows (and peaks) to this file")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for every row (e.g. sample.strategy=cosine sample.gen_steps=1)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="instead of the table: torch.profiler's top N operators by self CPU time of one call per row")
    args = ap.parse_args(argv)
    quiet_logs()
    device = torch.device(args.device)
    from core.precision import native_bf16
    if args.dtypes is None:
        dtypes = ["fp32"] + (["bf16"] if native_bf16(device)[0] and not args.tiny else [])
    else:
        dtypes = args.dtypes.split(",")
    sizes = ["debug"] if args.tiny else args.sizes.split(",")
    batches, steps = _pairs(args.batch), _pairs(args.steps)
    reps = 1 if args.tiny else args.reps
    peak_n = 256 if args.tiny else 2048
    peaks = matmul_peaks(dtypes, n=peak_n)
    print("  peaks at start (GFLOP/s) " + json.dumps(peaks), file=sys.stderr, flush=True)
    rows, flops_cache = [], {}
    modes = args.modes.split(",")
    # the modes of one family, size and dtype run back to back, so that what changes on the machine over a long run
    # hits the rows that are compared with each other alike (the table groups them by mode)
    for fam, size, dtype, mode in itertools.product(args.families.split(","), sizes, dtypes, modes):
        try:
            r = bench_row(fam, size, mode, dtype, batches.get(size, 1),
                          steps.get(fam) if size == "released" else None, reps, device, flops_cache,
                          args.profile, tuple(args.set), peaks)
        except Exception as e:  # noqa: BLE001 - one failing row (e.g. a compile) must not lose the table
            print(f"  FAILED {fam} {size} {mode} {dtype}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        if r:  # (a --profile row prints its tables instead)
            rows.append(r)
            print("  row " + json.dumps(r), file=sys.stderr, flush=True)  # a run cut short keeps its rows
            print(f"  done {fam} {size} {mode} {dtype}: {r['img/s']:.3g} img/s", file=sys.stderr,
                  flush=True)
    if args.profile:
        return 0
    peaks = matmul_peaks(dtypes, n=peak_n, before=peaks)  # a loaded moment can only understate the peak
    for r in rows:
        r["% peak"] = 100 * r["TFLOP/s"] * 1e3 / peaks[r["dtype"]]
    print(f"matmul peak ({peak_n}^3 torch.mm, best of start and end): " +
          ", ".join(f"{w} {g / 1e3:.3f} TFLOP/s" for w, g in peaks.items()))
    print(f"threads: {torch.get_num_threads()}, device: {device}")
    rows.sort(key=lambda r: modes.index(r["mode"]))  # stable: within a mode, the order they ran in
    print(table(rows))
    for line in auto_verdicts(rows):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"columns": COLUMNS, "rows": rows, "peak_gflops": peaks,
                       "threads": torch.get_num_threads()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
