"""ENAT vs NAT on the Fashion-MNIST demo, in one run, at similar parameter counts (the models of
configs/demo/{nat,enat}_fmnist.yaml on the 8x8 tokens of the demo tokenizer, with those recipes' settings):

  - training images/s, each model trained from scratch for the same time budget (--minutes);
  - sampling images/s of the generator (8 steps, guidance on, tokens only), ENAT with and without feature reuse;
  - FID-1k of the EMA weights after that budget (engine eval: demo tokenizer, FID-Inception, test-split statistics),
    ENAT with reuse (its default) and, unless --no-fid-without-reuse, without.

Needs the demo tokenizer and its token file from `bash scripts/demo.sh` (the paths in configs/demo/nat_fmnist.yaml),
or the same files given by flag; the test-split statistics are made on first use when missing. The budget is
wall-clock time by default (--clock process: this process's CPU time); on a machine shared with other jobs, the
figures are noisy.

    .venv/bin/python scripts/bench_enat_vs_nat.py [--minutes 3] [--fid-n 1000] [--out outputs/bench_enat_vs_nat]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch
from omegaconf import OmegaConf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine.config import load_config, to_container  # noqa: E402
from core.seeding import step_seed  # noqa: E402
from datasets.sampling import global_batch_indices  # noqa: E402
from engine.generate import build_generator, generate  # noqa: E402
from engine.optim import build_optimizer, ema_update, lr_at, make_ema  # noqa: E402
from engine.trainer import save_checkpoint  # noqa: E402
from models import TrainContext, build_model  # noqa: E402

FAMILIES = ("nat", "enat")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    p.add_argument("--clock", choices=("wall", "process"), default="wall")
    p.add_argument("--batch", type=int, default=None, help="training batch of both models (default: the recipes')")
    p.add_argument("--warmup", type=int, default=None, help="LR warmup steps (default: the recipes')")
    p.add_argument("--ema", type=float, default=None, help="EMA decay (default: the recipes')")
    p.add_argument("--vq-ckpt", default=None, help="demo tokenizer checkpoint (default: the recipes' tokenizer.ckpt)")
    p.add_argument("--tokens", default=None, help="token file (default: the recipes' data.path)")
    p.add_argument("--ref-stats", default=None, help="test-split statistics (default: the recipes' eval.ref_stats)")
    p.add_argument("--fid-n", type=int, default=1000)
    p.add_argument("--sample-n", type=int, default=100, help="images per sampling-speed measurement")
    p.add_argument("--repeats", type=int, default=3, help="sampling-speed measurements (the best one counts)")
    p.add_argument("--fid-without-reuse", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(ROOT, "outputs", "bench_enat_vs_nat"))
    return p.parse_args(argv)


def recipe(a, family: str):
    given = {"data.path": a.tokens, "tokenizer.ckpt": a.vq_ckpt, "eval.ref_stats": a.ref_stats}
    overrides = {"output_dir": a.out and os.path.join(os.path.abspath(a.out), family), "eval.n": a.fid_n,
                 "seed": a.seed, "train.batch_size": a.batch, "train.warmup_steps": a.warmup,
                 "train.ema_decay": a.ema, "train.precision": "fp32", "device": "cpu",
                 **{k: v and os.path.abspath(v) for k, v in given.items()}}
    cfg = load_config(os.path.join(ROOT, "configs", "demo", f"{family}_fmnist.yaml"),
                      [f"{k}={v}" for k, v in overrides.items() if v is not None])
    for key in given:  # the recipes' own paths are relative to the repository
        path = OmegaConf.select(cfg, key)
        if not os.path.isabs(path):
            OmegaConf.update(cfg, key, os.path.join(ROOT, path))
    for key, flag in (("data.path", "--tokens"), ("tokenizer.ckpt", "--vq-ckpt")):
        if not os.path.isfile(OmegaConf.select(cfg, key)):
            sys.exit(f"error: {OmegaConf.select(cfg, key)} not found ({key} of configs/demo/{family}_fmnist.yaml): "
                     f"run `bash scripts/demo.sh` first, or give the demo tokenizer checkpoint and its token file "
                     f"({flag})")
    return cfg


def clock(kind: str) -> float:
    return time.perf_counter() if kind == "wall" else time.process_time()


def train_for(cfg, budget_s: float, kind: str) -> dict:
    """The engine's update (loss, AdamW, warmup LR, EMA, per-step seeds) in one process until the budget is spent;
    the last step may overrun it by one step."""
    torch.manual_seed(int(cfg.seed))
    model, fam = build_model(cfg)
    ema = make_ema(model)
    opt = build_optimizer(model, cfg.train)
    ds = fam.dataset(cfg, "train")
    ctx = TrainContext(cfg=cfg, ema=ema)
    bs, step, t0, logs = int(cfg.train.batch_size), 0, clock(kind), {}
    model.train()
    while clock(kind) - t0 < budget_s:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.train)
        ctx.step = step
        torch.manual_seed(step_seed(int(cfg.seed), 0, step, 0))
        batch = ds.get_batch(torch.from_numpy(global_batch_indices(step, bs, len(ds), int(cfg.seed)).copy()))
        loss, logs = fam.loss(model, batch, ctx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(ema, model, float(cfg.train.ema_decay))
        step += 1
    seconds = clock(kind) - t0
    path = os.path.join(cfg.output_dir, "checkpoints", f"step_{step:07d}.pt")
    save_checkpoint(path, model, ema, opt, step, fam.name, cfg)
    return {"params_M": sum(p.numel() for p in model.parameters()) / 1e6, "steps": step, "batch": bs,
            "images": step * bs,
            "train_seconds": seconds, "train_img_per_s": step * bs / seconds, "last_loss": logs.get("loss"),
            "checkpoint": path}


def sampling_speeds(variants: list[tuple], n: int, repeats: int) -> list[float]:
    """Images/s of each (cfg, reuse) variant: the best of `repeats` timed generations of n images after a warm-up of
    the same shape. Variants take turns within each round so that all see the same machine load, and the best round
    counts since other jobs on a shared machine only ever slow a run down."""
    gens = []
    for cfg, reuse in variants:
        cfg = copy.deepcopy(cfg)
        if "reuse" in cfg.sample:
            cfg.sample.reuse = reuse
        model, fam = build_generator(cfg, torch.device("cpu"))
        gens.append((cfg, model, fam, fam.sampling.settings(cfg, model), torch.arange(n) % model.null_label))
    best = [float("inf")] * len(gens)
    for r in range(repeats + 1):
        for i, (cfg, model, fam, settings, labels) in enumerate(gens):
            t = time.perf_counter()
            generate(model, fam, settings, labels, range(n), r)
            if r:
                best[i] = min(best[i], time.perf_counter() - t)
    return [n / b for b in best]


def fid(cfg, reuse: bool) -> float:
    from engine.evaluate import evaluate
    if "reuse" in cfg.sample:
        cfg.sample.reuse = reuse
    return float(evaluate(cfg)["fid"])


def table(rows: list[dict], a) -> str:
    head = (f"| model | params | train steps (batch {rows[0]['batch']}) | train img/s | sampling img/s | "
            f"FID-{a.fid_n / 1000:g}k after {a.minutes:g} min |")
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        f = f"{r['fid']:.2f}" if r.get("fid") is not None else "-"
        lines.append(f"| {r['name']} | {r['params_M']:.2f}M | {r['steps']} | {r['train_img_per_s']:.1f} | "
                     f"{r['sample_img_per_s']:.2f} | {f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    started = time.time()
    runs, rows = {}, []
    for family in FAMILIES:  # train both first so that the evaluations cannot perturb either training budget
        cfg = recipe(a, family)
        print(f"== training {family} for {a.minutes:g} min ({a.clock} clock)", flush=True)
        runs[family] = (cfg, train_for(cfg, a.minutes * 60, a.clock))
    variants = [("NAT (demo)", "nat", False, True), ("ENAT (demo), reuse", "enat", True, True),
                ("ENAT (demo), no reuse", "enat", False, a.fid_without_reuse)]
    for family in FAMILIES:
        runs[family][0].eval.pretrained_path = runs[family][1]["checkpoint"]
    print(f"== sampling speed ({a.repeats} rounds of {a.sample_n} images per variant)", flush=True)
    speeds = sampling_speeds([(runs[f][0], reuse) for _, f, reuse, _ in variants], a.sample_n, a.repeats)
    for (name, family, reuse, with_fid), speed in zip(variants, speeds):
        cfg, tr = runs[family]
        if with_fid:
            print(f"== {name}: FID-{a.fid_n}", flush=True)
        rows.append({"name": name, **tr, "reuse": reuse, "sample_img_per_s": speed,
                     "fid": fid(cfg, reuse) if with_fid else None})
    report = {"args": vars(a), "rows": rows, "seconds": time.time() - started,
              "recipes": {f: to_container(runs[f][0]) for f in FAMILIES}}
    os.makedirs(a.out, exist_ok=True)
    tmp = os.path.join(a.out, f".bench.json.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, os.path.join(a.out, "bench.json"))
    print(table(rows, a))
    print(f"(sampling: best of {a.repeats} runs of {a.sample_n} images, 8 steps, guidance, tokens only; "
          f"{a.threads} threads; {report['seconds'] / 60:.1f} min in all; a shared machine makes the figures noisy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
