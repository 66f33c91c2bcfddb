"""Column AR speed on this machine, in one run: sampling time for 16/32/64/128 tokens with the windowed KV cache and
with full recomputation (the release's way), the flow head's share of it, fp32 vs bf16 autocast, and training
images/s (teacher-forced flow loss, backward, AdamW step).

    python scripts/bench_eqar.py [--flavour tiny] [--tokens 16 32 64 128] [--steps 10] [--batch 4] [--eval-batch 64] [--cfg 4]
    python scripts/bench_eqar.py --fast-vs-module [--tokens 16 64] [--batches 4 64] [--reps 5] --threads 2 [--compiled]
The second form times the cached sampler's module path (fast_path=False, step by step through the modules) against
the fast path (preallocated KV cache + fused head loop, bit-identical) and the fast path with the head's
modulations batched over the Euler steps (batched_head), and with --compiled both fast variants under
sample.compile=true (the per-token step and the Euler loop compiled whole; compile time apart), runs interleaved,
and prints the medians, the ratios and each path's max |difference| from the module path's latents.
Random weights; the default size is the release's `tiny_model` width (256, 8 blocks) with 256-d tokens. On a shared
machine use --threads 1: two threads over-subscribed by other jobs made these small ops 20-30x slower here.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.seeding import row_generators  # noqa: E402
from models.eqar.model import FLAVOURS, eqar_loss, param_groups  # noqa: E402
from models.eqar.condition import sample  # noqa: E402
from samplers.column_ar import ColumnARSettings  # noqa: E402

SIZES = {"tiny": dict(embed_dim=256, depth=8, num_heads=4, diffloss_d=3, diffloss_w=256)}


class HeadTimer:
    """Wall time spent inside the flow head's forward (hooks around net.diffloss.net)."""

    def __init__(self, head):
        self.total, self._t = 0.0, 0.0
        head.register_forward_pre_hook(self._pre)
        head.register_forward_hook(self._post)

    def _pre(self, *a):
        self._t = time.perf_counter()

    def _post(self, *a):
        self.total += time.perf_counter() - self._t


def build(a):
    base = "small" if a.flavour == "tiny" else a.flavour
    kw = {**SIZES.get(a.flavour, {}), "class_num": 1000}
    torch.manual_seed(0)
    model = FLAVOURS[base](**kw).eval()
    with torch.no_grad():  # the head starts with zero outputs: perturbed, so paths' latents differ if they can
        for p in model.diffloss.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def bench_sampling(model, timer, a, dtype, batch=None, tokens=None):
    rows = []
    batch = batch or a.batch
    labels = torch.arange(batch) % 1000
    for n in tokens or a.tokens:
        for cache in (True, False):
            if not cache and n > a.max_full:
                rows.append({"tokens": n, "cache": cache, "dtype": dtype, "batch": batch, "seconds": None})
                continue
            st = ColumnARSettings(num_steps=a.steps, cfg=a.cfg, use_cache=cache)
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
            timer.total = 0.0
            t0 = time.perf_counter()
            with ctx:
                sample(model, labels, row_generators(0, range(batch)), st, num_tokens=n)
            dt = time.perf_counter() - t0
            rows.append({"tokens": n, "cache": cache, "dtype": dtype, "batch": batch, "seconds": round(dt, 3),
                         "flow_head_share": round(timer.total / dt, 3)})
            print(json.dumps(rows[-1]), flush=True)
        if rows[-1]["seconds"] and rows[-2]["seconds"]:
            print(f"   cache speed-up at {n} tokens, batch {batch}, {dtype}: "
                  f"x{rows[-1]['seconds'] / rows[-2]['seconds']:.2f}", flush=True)
    return rows


PATHS = {"module": dict(fast_path=False), "fast": dict(fast_path=True), "fast+batched_head": dict(batched_head=True)}
COMPILED = {"fast+compiled": dict(fast_path=True), "fast+batched_head+compiled": dict(batched_head=True)}


def compile_switches(model):
    """sample.compile=true's switches (engine.compile_sampling) on the family's targets, switched off (eager)."""
    from engine.compile_sampling import put_switches
    from models.eqar.family import FAMILY
    return put_switches(model, FAMILY, False, "cpu")


def bench_fast_vs_module(model, a):
    """Interleaved runs (module, fast, batched, [compiled ...], module, ...) so that load changes hit every path
    alike; medians. Compiled paths (--compiled) compile before the timed runs; their compile time is printed."""
    import statistics
    switches = compile_switches(model) if a.compiled else []
    paths = {**PATHS, **(COMPILED if a.compiled else {})}
    rows = []
    for batch in a.batches:
        labels = torch.arange(batch) % 1000
        for n in a.tokens:
            def run(name):
                for sw in switches:
                    sw.mode = name in COMPILED
                return sample(model, labels, row_generators(0, range(batch)), num_tokens=n, num_steps=a.steps,
                              cfg=a.cfg, **paths[name])
            ref = run("module")
            compile_s, diff = {}, {}
            for name in paths:  # warm-up; for compiled paths the compile
                t0 = time.perf_counter()
                out = run(name)
                compile_s[name] = time.perf_counter() - t0
                diff[name] = (out - ref).abs().max().item()
            times = {k: [] for k in paths}
            for _ in range(a.reps):
                for name in paths:
                    t0 = time.perf_counter()
                    run(name)
                    times[name].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"tokens": n, "batch": batch, "dtype": "fp32", "threads": torch.get_num_threads(), "reps": a.reps,
                   **{f"{k}_s": round(v, 6) for k, v in med.items()},
                   **{f"speedup_{k}": round(med["module"] / med[k], 2) for k in paths if k != "module"},
                   **{f"max_abs_diff_{k}": diff[k] for k in paths if k != "module"},
                   **{f"compile_s_{k}": max(round(compile_s[k] - med[k], 1), 0.0) for k in COMPILED if k in paths}}
            rows.append(row)
            print(json.dumps(row), flush=True)
            print(f"   {n} tokens, batch {batch}: module {med['module']:.4f} s, " + ", ".join(
                f"{k} {med[k]:.4f} s (x{med['module'] / med[k]:.2f})" for k in paths if k != "module"), flush=True)
    for sw in switches:
        sw.mode = False
    return rows


def bench_training(model, a, dtype):
    model.train()
    opt = torch.optim.AdamW(param_groups(model), lr=1e-4, betas=(0.9, 0.95))
    x = torch.randn(a.train_batch, 16, model.token_embed_dim)
    y = torch.arange(a.train_batch) % 1000
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bf16" else nullcontext
    for i in range(a.train_iters + 1):
        if i == 1:
            t0 = time.perf_counter()  # the first step warms up allocators
        with ctx():
            loss, _ = eqar_loss(model, {"latent": x, "label": y})
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    ips = a.train_batch * a.train_iters / (time.perf_counter() - t0)
    model.eval()
    row = {"train_images_per_s": round(ips, 2), "dtype": dtype, "batch": a.train_batch, "tokens": 16}
    print(json.dumps(row), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flavour", default="tiny", help="tiny (bench size) or a models/eqar/model.py flavour")
    ap.add_argument("--tokens", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--max-full", type=int, default=128, help="skip full recomputation above this many tokens")
    ap.add_argument("--steps", type=int, default=10, help="Euler steps per token")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--eval-batch", type=int, default=64,
                    help="also time 16 tokens at this batch (the README's --eval_bsz 64; 0 skips): with a few rows "
                         "per call both paths are bound by per-op overhead on a CPU, not by the work they do")
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-iters", type=int, default=5)
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None, help="write all rows here")
    ap.add_argument("--fast-vs-module", action="store_true",
                    help="only time the module path against the fast path (fp32, cached; --tokens, --batches)")
    ap.add_argument("--batches", type=int, nargs="+", default=[4, 64], help="batches of --fast-vs-module")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions of --fast-vs-module (medians)")
    ap.add_argument("--compiled", action="store_true",
                    help="--fast-vs-module also times the fast path under sample.compile=true (compile time apart)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = build(a)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {a.flavour}: {n_params / 1e6:.2f}M params ({sum(p.numel() for p in model.diffloss.parameters()) / 1e6:.2f}M "
          f"flow head); threads {torch.get_num_threads()}; batch {a.batch}, cfg {a.cfg}, {a.steps} Euler steps",
          flush=True)
    if a.fast_vs_module:
        with torch.inference_mode():
            rows = bench_fast_vs_module(model, a)
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1))
        return
    timer = HeadTimer(model.diffloss.net)
    rows = []
    with torch.inference_mode():
        for dt in a.dtypes:
            rows += bench_sampling(model, timer, a, dt)
        if a.eval_batch:
            rows += bench_sampling(model, timer, a, a.dtypes[0], batch=a.eval_batch, tokens=[16])
    for dt in a.dtypes:
        rows.append(bench_training(model, a, dt))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
