"""NAT (AutoNAT U-ViT) throughput on this machine, in one run:

  (a) training and sampling images/s of the demo NAT (the model of configs/demo/nat_fmnist.yaml) and of the AutoNAT
      "S-like" size (D 512, depth 12, 256 tokens), fp32 vs the --precision choice (default `auto`: bf16 autocast
      where the CPU has AMX-BF16/AVX512-BF16, else fp32 only; what auto chose and why is printed);
  (b) AutoNAT-L-shaped sampling (random weights, the released 8-step strategy, guidance on): images/s and GFLOPs per
      image of "<precision> autocast, batched CFG, SDPA" (guidance batched into one forward of 2B rows, SDPA
      attention) against "fp32, 2 fwd/step, math attn" (two separate guidance forwards, explicit softmax attention,
      the official code's way), and their ratio;
  (c) this machine's matmul peak per dtype (large fp32 and bf16 matmuls) and each row's achieved FLOP/s as a fraction
      of the peak of ITS OWN dtype (fp32 rows against the fp32 peak, bf16 rows against the bf16 peak);
  (d) with --only ...,enat (not in the default set: it trains two models and needs the demo's tokenizer and token
      file from scripts/demo.sh): ENAT vs NAT on the demo data at similar parameter counts, training and sampling
      images/s and FID-1k after the same CPU training time (scripts/bench_enat_vs_nat.py; its flags after --enat-args).

FLOPs (2 x MACs) are counted with torch FlopCounterMode on the `meta` device (SDPA counted as explicit attention),
training as 3 x forward. Timings follow a warm-up; training takes the fastest of --train-iters steps, sampling times
every step and counts each at the median step time; the matmul peak is the better of a measurement at the start and
one at the end. The machine may be shared: the figures are noisy, the ratios less so.

    .venv/bin/python scripts/bench_nat.py [--l-images 1] [--s-images 2] [--demo-images 64] [--only demo,S,L]
        [--precision auto|bf16|fp32]
    .venv/bin/python scripts/bench_nat.py --only enat [--enat-args "--minutes 3 --fid-n 1000"]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts")]

from bench_flops import autonat_generation_flops, build_meta, register_cpu_sdpa_flops  # noqa: E402
from bench_peak import best_time, matmul_peaks, quiet_logs  # noqa: E402
from core.precision import resolve_precision  # noqa: E402
from engine.precision import autocast  # noqa: E402
from models.family import TrainContext  # noqa: E402
from models.layers import attention_backend, count_params  # noqa: E402
from models.nat.model import FLAVOURS  # noqa: E402
from models.nat.family import nat_training_loss  # noqa: E402
from samplers.guidance import combine, weight_from_s  # noqa: E402
from samplers.mask_predict import sample  # noqa: E402
from samplers.strategy import Strategy  # noqa: E402

CPU = torch.device("cpu")
STRATEGY_L = os.path.join(ROOT, "configs", "AutoNAT_L-T8_strategy.yaml")
DEMO_RECIPE = os.path.join(ROOT, "configs", "demo", "nat_fmnist.yaml")


class TwoPassGuidance:
    """The official way: a conditional and an unconditional forward per step (the sampler calls this once per step
    without guidance of its own, so the step's scale is looked up here)."""

    def __init__(self, model, null_label: int, scales):
        self.model, self.null, self.scales, self.t = model, null_label, list(scales), 0

    def reset(self) -> None:
        self.t = 0

    def __call__(self, ids, labels):
        scale = self.scales[self.t]
        self.t += 1
        cond = self.model(ids, labels)
        return combine(cond, self.model(ids, torch.full_like(labels, self.null)), weight_from_s(scale))


class StepClock:
    """Wraps the per-step model function and records each call's wall time (the sampler calls it once per step)."""

    def __init__(self, fn):
        self.fn, self.times = fn, []

    def reset(self) -> None:
        reset = getattr(self.fn, "reset", None)
        if callable(reset):
            reset()

    def __call__(self, *args):
        t = time.perf_counter()
        out = self.fn(*args)
        self.times.append(time.perf_counter() - t)
        return out


def forward_gflops(flavour: str, rows: int = 1, **kwargs) -> float:
    """GFLOPs of one forward of `rows` rows (the count does not depend on the token values)."""
    return autonat_generation_flops(build_meta(FLAVOURS, flavour, **kwargs), steps=1, guidance=rows == 2)[0] / 1e9


def demo_model_kwargs() -> dict:
    """The model section of the demo recipe (a flavour plus overrides)."""
    from engine.config import load_config
    from models import model_kwargs
    cfg = load_config(DEMO_RECIPE)
    return {"flavour": cfg.model.flavour, **model_kwargs(cfg)}


def train_ips(model, batch: int, iters: int, precision: str) -> float:
    g = torch.Generator().manual_seed(0)
    data = {"tokens": torch.randint(model.codebook_size, (batch, model.seq_len), generator=g),
            "label": torch.randint(model.null_label, (batch,), generator=g)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.99, 0.99), weight_decay=0.03)
    ctx = TrainContext(cfg=None)
    model.train()

    def step():
        with autocast(CPU, precision):
            loss, _ = nat_training_loss(model, data, ctx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return batch / best_time(step, iters)


@torch.inference_mode()
def sample_ips(model, strategy: Strategy, images: int, precision: str, two_pass: bool) -> float:
    """Images/s of one generation call, with every step timed at the median step time (all AutoNAT steps cost the
    same), so a burst of load from other processes during one step does not skew the figure."""
    model.eval()
    labels = torch.arange(images) % model.null_label
    null = torch.full_like(labels, model.null_label)
    with autocast(CPU, precision):  # warm-up: one step's forwards
        ids = torch.full((images, model.seq_len), model.mask_id)
        if two_pass:
            model(ids, labels), model(ids, null)
        else:
            model(torch.cat([ids, ids]), torch.cat([labels, null]))
    gens = [torch.Generator().manual_seed(i) for i in range(images)]
    kw = dict(seq_len=model.seq_len, codebook_size=model.codebook_size, strategy=strategy)
    fn = StepClock(TwoPassGuidance(model, model.null_label, strategy.cfg) if two_pass else model)
    t = time.perf_counter()
    with autocast(CPU, precision):
        sample(fn, labels, gens, **kw, **({} if two_pass else {"null_label": model.null_label}))
    wall = time.perf_counter() - t
    return images / (wall - sum(fn.times) + len(fn.times) * statistics.median(fn.times))


@torch.inference_mode()
def interleaved_step_ratio(model, images: int, reps: int, precision: str) -> float:
    """Median time of one two-pass fp32 step (two forwards, explicit attention) over one batched step (one forward
    of 2B rows under `precision` autocast, SDPA), timed alternately so both see the same machine load."""
    model.eval()
    ids = torch.full((images, model.seq_len), model.mask_id)
    labels = torch.arange(images) % model.null_label
    null = torch.full_like(labels, model.null_label)

    def two_pass_fp32():
        with attention_backend("math"):
            model(ids, labels), model(ids, null)

    def batched():
        with attention_backend("sdpa"), autocast(CPU, precision):
            model(torch.cat([ids, ids]), torch.cat([labels, null]))

    times = {two_pass_fp32: [], batched: []}
    for fn in (two_pass_fp32, batched) * (reps + 1):
        t = time.perf_counter()
        fn()
        times[fn].append(time.perf_counter() - t)
    return statistics.median(times[two_pass_fp32][1:]) / statistics.median(times[batched][1:])  # first: warm-up


def row(rows, what, model, params, precision, batch, ips, gflop_img, peaks):
    gfs = ips * gflop_img
    rows.append([what, model, f"{params / 1e6:.1f}M", precision, batch, ips, gflop_img, gfs,
                 100 * gfs / peaks[precision]])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="demo,S,L", help="comma list of demo, S, L, enat")
    ap.add_argument("--enat-args", default="", help="flags passed to bench_enat_vs_nat.py (part enat)")
    ap.add_argument("--demo-batch", type=int, default=64, help="demo NAT training batch")
    ap.add_argument("--demo-images", type=int, default=64, help="demo NAT images per sampling call")
    ap.add_argument("--s-batch", type=int, default=4, help="S-like training batch")
    ap.add_argument("--s-images", type=int, default=2, help="S-like images per sampling call")
    ap.add_argument("--l-images", type=int, default=1, help="AutoNAT-L images per sampling call (~1.7 TFLOP each)")
    ap.add_argument("--l-step-reps", type=int, default=3, help="interleaved single-step timings (0 = skip)")
    ap.add_argument("--train-iters", type=int, default=2)
    ap.add_argument("--peak-size", type=int, default=2048)
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                    help="the reduced-precision path compared with fp32 (auto: bf16 only where native)")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    unknown = only - {"demo", "S", "L", "enat"}
    if unknown:
        ap.error(f"--only: unknown part(s) {sorted(unknown)}; choose from demo, S, L, enat")
    if only == {"enat"}:
        return enat_vs_nat(args.enat_args)
    quiet_logs()
    register_cpu_sdpa_flops()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (shared machine: figures are noisy)")
    low, why = resolve_precision(args.precision, CPU, "bench")
    print(f"--precision {args.precision} -> {low} ({why})")
    precisions = ("fp32",) if low == "fp32" else ("fp32", low)
    label = {"fp32": "fp32", "bf16": "bf16 autocast"}
    peaks = matmul_peaks(precisions, args.peak_size)

    rows, ratios = [], []
    cosine = Strategy.enat_cosine(8, cfg_scale=1.0, mask_temp=1.0, samp_temp=1.0)
    demo = demo_model_kwargs()
    for key, kw, batch, images in (("demo", demo, args.demo_batch, args.demo_images),
                                   ("S", {"flavour": "AutoNAT_S"}, args.s_batch, args.s_images)):
        if key not in only:
            continue
        kw = dict(kw)
        flavour = kw.pop("flavour")
        model = FLAVOURS[flavour](**kw)
        n, fwd = count_params(model), forward_gflops(flavour, **kw)
        flavour = "demo NAT" if key == "demo" else flavour
        for precision in precisions:
            row(rows, f"train, {label[precision]}", flavour, n, precision, batch,
                train_ips(model, batch, args.train_iters, precision), 3 * fwd, peaks)
        for precision in precisions:
            row(rows, f"sample 8 steps, CFG, {label[precision]}", flavour, n, precision, images,
                sample_ips(model, cosine, images, precision, two_pass=False), 16 * fwd, peaks)
        del model
    if "L" in only:
        model = FLAVOURS["AutoNAT_L"]()
        strategy = Strategy.from_yaml(STRATEGY_L, gen_steps=8)
        n, per_image = count_params(model), 8 * forward_gflops("AutoNAT_L", rows=2)
        with attention_backend("math"):
            two_pass = sample_ips(model, strategy, args.l_images, "fp32", two_pass=True)
        row(rows, "sample fp32, 2 fwd/step, math attn", "AutoNAT_L", n, "fp32", args.l_images, two_pass, per_image,
            peaks)
        with attention_backend("sdpa"):
            batched = sample_ips(model, strategy, args.l_images, low, two_pass=False)
        row(rows, f"sample {label[low]}, batched CFG, SDPA", "AutoNAT_L", n, low, args.l_images, batched, per_image,
            peaks)
        name = f"{label[low]} batched CFG + SDPA / fp32 2 fwd + math"
        ratios.append((f"AutoNAT-L sampling: {name}", batched / two_pass))
        if args.l_step_reps:
            ratios.append((f"AutoNAT-L one step (interleaved x{args.l_step_reps}): {name}",
                           interleaved_step_ratio(model, args.l_images, args.l_step_reps, low)))

    # the peak is measured again at the end and the higher value kept: a loaded moment would overstate the fractions
    peaks = matmul_peaks(precisions, args.peak_size, before=peaks)
    for r in rows:
        r[-1] = 100 * r[-2] / peaks[r[3]]
    print(f"matmul peak ({args.peak_size}^3, best of start/end): "
          + ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in peaks.items()))
    head = ("run", "model", "params", "prec", "batch", "img/s", "GFLOP/img", "GFLOP/s", "% own peak")
    fmt = "{:<50} {:<10} {:>7} {:>5} {:>5} {:>9} {:>10} {:>8} {:>10}"
    print("\n" + fmt.format(*head))
    for r in rows:
        print(fmt.format(*r[:5], f"{r[5]:.3f}", f"{r[6]:.1f}", f"{r[7]:.1f}", f"{r[8]:.1f}%"))
    pairs = [(f"{a[1]} {a[0].rsplit(', ', 1)[0]}: {label[b[3]]} / fp32", b[5] / a[5])
             for a, b in zip(rows[::2], rows[1::2]) if (a[0].rsplit(", ", 1)[0], a[1], a[3]) ==
             (b[0].rsplit(", ", 1)[0], b[1], "fp32") and b[3] != "fp32"]
    print()
    for name, r in pairs + ratios:
        print(f"{name:<80} {r:5.2f}x")
    return enat_vs_nat(args.enat_args) if "enat" in only else 0


def enat_vs_nat(flags: str) -> int:
    import shlex

    import bench_enat_vs_nat
    print("\n== ENAT vs NAT on the demo data (scripts/bench_enat_vs_nat.py)", flush=True)
    return bench_enat_vs_nat.main(shlex.split(flags))


if __name__ == "__main__":
    sys.exit(main())
