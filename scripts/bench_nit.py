"""NiT throughput on this machine, in one run:

  (a) packed training of a scaled-down NiT-B: NiT-B's width and heads (hidden 768, 12 heads × 64, MLP ×4, qk-norm,
      the B projector 768 → 2048 → 2048 → 1280) with --depth blocks instead of 12 (REPA at block 1, a random REPA
      target standing in for RADIO, whose cost is not counted), one realistic mixed-size pack (--pack), AdamW + clip
      as in the recipe: tokens/s and images/s, fp32 vs bf16 autocast side by side, each row's FLOP/s as a fraction
      of the matmul peak of ITS OWN dtype measured in this run; the precision `auto` would choose (and why) printed;
  (b) the attention paths on the same pack at NiT-B's heads (scripts/bench_varlen.py): max |error| against the
      per-segment loop, forward and forward+backward time, peak memory (method printed), the dense block-diagonal
      mask as the baseline;
  (c) Euler ODE sampling (guidance 3.0 inside [0, 0.7], as the README's ODE rows) with the bench model: images/s at
      two latent grids (default 8x8 and 16x16 = 256 px and 512 px under DC-AE f32), fp32 and bf16 autocast;
  (d) FLOPs per forward of a 1024-token pack for the full NiT-B (FlopCounterMode on the `meta` device, SDPA counted
      as explicit attention) against the spec's ≈ 0.32 TFLOP.

FLOPs are 2 × MACs; training counts 3 × forward. Times are the fastest of --train-iters steps after a warm-up
(sampling: one timed call after a warm-up forward). The matmul peak is the better of a measurement at the start and
one at the end. On a shared machine absolute figures are inflated by other jobs; ratios measured side by side in one
run are what to compare.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_nit.py [--depth 2] [--pack 8x8x6,10x15,...] [--tiny]
        [--only train,attn,sample,flops]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts")]

import bench_varlen  # noqa: E402
from bench_flops import count_flops, register_cpu_sdpa_flops  # noqa: E402
from bench_peak import best_time, matmul_peaks, quiet_logs  # noqa: E402
from core.precision import resolve_precision  # noqa: E402
from engine.precision import autocast  # noqa: E402
from models.family_defaults import family_defaults  # noqa: E402
from models.layers import count_params  # noqa: E402
from models.nit.model import FLAVOUR_ARGS, FLAVOURS, pack_latents  # noqa: E402
from models.nit.loss import nit_loss, nit_optimizer  # noqa: E402
from models.nit.sampling import NiTVelocity  # noqa: E402
from samplers.flow import sample_nit  # noqa: E402

CPU = torch.device("cpu")
SPEC_B_TFLOP = 0.32  # specs: NiT-B forward of a 1024-token pack
PARTS = ("train", "attn", "sample", "flops")
# an LPFHP-like pack (ascending lengths) of the data mix: 256-px (8x8) and 512-px (16x16) crops and native-resolution
# latents; 2048 tokens, 13 images
DEFAULT_PACK = "8x8x6,10x15,12x16,12x18x2,16x16x2,14x27"
TINY = dict(pack="2x2x2,2x3,3x3", hidden=64, heads=4, depth=1, projector_dim=64, z_dim=32, train_iters=1,
            sample_grids="2x2,3x3", sample_images=2, sample_steps=2, peak_size=128, repeats=1,
            memory_paths="runs,dense", attn_heads=2, attn_head_dim=8, attn_pack="32x32x2")


def parse_grids(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        h, w, *rep = (int(v) for v in part.split("x"))
        out += [(h, w)] * (rep[0] if rep else 1)
    return out


def bench_model(args) -> torch.nn.Module:
    """NiT-B's shape with the bench's depth (and, with --tiny, a tiny width), every weight random: the DiT init
    zeroes the gates and the output layer, which would make the timed network partly trivial."""
    flavour, kw = model_spec(args)
    torch.manual_seed(0)
    model = FLAVOURS[flavour](**kw)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model


def meta_forward_flops(spec: tuple[str, dict], grids: list[tuple[int, int]], return_zs: bool = False,
                       rows: int = 1) -> int:
    """FLOPs of one forward of a pack of `grids` (repeated `rows` times, e.g. 2 for a guided step), on `meta`."""
    register_cpu_sdpa_flops()
    flavour, kw = spec
    with torch.device("meta"):
        model = FLAVOURS[flavour](**kw).eval()
    grids = list(grids) * rows
    n, b = sum(h * w for h, w in grids), len(grids)
    c, p = model.in_channels, model.patch_size
    x = torch.zeros(n, c, p, p, device="meta")
    t = torch.zeros(b, device="meta")
    y = torch.zeros(b, dtype=torch.long, device="meta")
    hw = torch.tensor(grids, dtype=torch.int32)
    with torch.no_grad():
        return count_flops(model, x, t, y, hw, return_zs=return_zs)


def model_spec(args) -> tuple[str, dict]:
    kw = dict(depth=args.depth, encoder_depth=1)
    if args.tiny:
        kw.update(hidden_size=args.hidden, num_heads=args.heads, projector_dim=args.projector_dim, z_dim=args.z_dim)
    return "NiT_B", kw


def make_pack(model, grids, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x, hw = pack_latents([torch.randn(model.in_channels, h, w, generator=g) for h, w in grids], model.patch_size)
    return {"x": x, "hw_list": hw, "label": torch.randint(0, model.num_classes, (len(grids),), generator=g),
            "repa_target": torch.randn(x.shape[0], model.z_dim, generator=g)}


def train_step_time(model, batch: dict, iters: int, precision: str) -> float:
    opt = nit_optimizer(model, lr=1e-4)
    g = torch.Generator().manual_seed(1)
    clip = family_defaults("nit", "train")["grad_clip"]
    model.train()

    def step():
        with autocast(CPU, precision, role="bench"):
            loss, _ = nit_loss(model, batch, generator=g)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return best_time(step, iters)


@torch.no_grad()
def sample_time(model, grid: tuple[int, int], images: int, steps: int, precision: str) -> tuple[float, list[int]]:
    """(seconds of one ODE sampling call, images in each model forward it made); guidance 3.0 inside [0, 0.7]."""
    model.eval()
    labels = torch.arange(images) % model.num_classes
    calls = []

    def fn(x, t, y, hw):
        calls.append(len(y))
        return model(x, t, y, hw)

    def run():
        gens = [torch.Generator().manual_seed(i) for i in range(images)]
        velocity = NiTVelocity(fn, labels, torch.tensor([grid] * images, dtype=torch.int32), 3.0, model.null_label)
        with autocast(CPU, precision, role="bench"):
            return sample_nit(velocity, gens, grids=[grid] * images, channels=model.in_channels,
                              patch_size=model.patch_size, mode="ode", steps=steps, guidance_low=0.0,
                              guidance_high=0.7)

    with autocast(CPU, precision, role="bench"):  # warm-up: one guided forward of the doubled pack
        hw = torch.tensor([grid] * 2 * images, dtype=torch.int32)
        n = 2 * images * grid[0] * grid[1]
        model(torch.randn(n, model.in_channels, model.patch_size, model.patch_size),
              torch.rand(2 * images), torch.zeros(2 * images, dtype=torch.long), hw)
    t = time.perf_counter()
    run()
    return time.perf_counter() - t, calls


def official_equivalent(ours: int, grids, depth: int, hidden: int) -> int:
    """The official network applies adaLN's Linear(D, 6D) (and the final Linear(D, 2D)) to every token (the image's
    condition repeated to its tokens); ours applies it once per image. Same numbers, (N − B)× the modulation FLOPs."""
    n, b = sum(h * w for h, w in grids), len(grids)
    return ours + 2 * (n - b) * (depth * 6 + 2) * hidden * hidden


def part_flops(args, out) -> None:
    print("\n== (d) FLOPs per forward of a 1024-token pack, full NiT-B (meta device, FlopCounterMode)")
    b = FLAVOUR_ARGS["NiT_B"]
    print(f"{'pack':<10} {'ours, no proj':>14} {'ours + proj':>12} {'official-eq. + proj':>20} {'spec':>6} "
          f"{'rel. diff (official-eq.)':>25}")
    for name, grids in (("1x32x32", [(32, 32)]), ("4x16x16", [(16, 16)] * 4)):
        plain = meta_forward_flops(("NiT_B", {}), grids)
        zs = meta_forward_flops(("NiT_B", {}), grids, return_zs=True)
        official = official_equivalent(zs, grids, b["depth"], b["hidden_size"])
        rel = official / (SPEC_B_TFLOP * 1e12) - 1
        out.setdefault("flops", {})[name] = {"plain": plain, "zs": zs, "official": official, "rel": rel}
        print(f"{name:<10} {plain / 1e12:11.3f} TF {zs / 1e12:9.3f} TF {official / 1e12:17.3f} TF {SPEC_B_TFLOP:6.2f} "
              f"{100 * rel:+24.1f}%")
    r = out["flops"]["1x32x32"]
    print(f"ours counts adaLN once per image; with it per token as the official code does (the spec's count) and the "
          f"REPA projector, 1x32x32 gives {r['official'] / 1e12:.3f} TFLOP vs the spec's ≈ {SPEC_B_TFLOP} "
          f"({100 * r['rel']:+.1f}%); ours without the projector is {r['plain'] / 1e12:.3f} TFLOP "
          f"({100 * (r['plain'] / (SPEC_B_TFLOP * 1e12) - 1):+.1f}% vs the spec)")


def part_train(args, model, grids, peaks, out) -> None:
    batch = make_pack(model, grids)
    n, b = batch["x"].shape[0], len(grids)
    fwd = meta_forward_flops(model_spec(args), grids, return_zs=True)
    print(f"\n== (a) packed training: {model_desc(args, model)}; pack {b} images / {n} tokens ({args.pack}); "
          f"AdamW + clip, REPA target random (N, {model.z_dim}); {3 * fwd / 1e9:.1f} GFLOP per step (3 x forward)")
    rows = []
    for precision in ("fp32", "bf16"):
        s = train_step_time(model, batch, args.train_iters, precision)
        rows.append((precision, s, n / s, b / s, 3 * fwd / s / 1e9))
    out["train"] = rows
    print(f"{'precision':<16} {'s/step':>8} {'tokens/s':>9} {'images/s':>9} {'GFLOP/s':>8} {'% own peak':>10}")
    for precision, s, tps, ips, gfs in rows:
        print(f"{label(precision):<16} {s:8.3f} {tps:9.1f} {ips:9.2f} {gfs:8.1f} {100 * gfs / peaks[precision]:9.1f}%")
    print(f"bf16 autocast / fp32 training throughput: {rows[1][2] / rows[0][2]:.2f}x")


def part_attn(args, grids, out) -> None:
    grids = parse_grids(args.attn_pack) if args.attn_pack else grids
    lengths = sorted(h * w for h, w in grids)  # LPFHP lists a pack's images by ascending length
    heads, hd = args.attn_heads, args.attn_head_dim
    seg = bench_varlen.Segments(lengths, CPU)
    q, k, v = bench_varlen.make_qkv(lengths, heads, hd, grad=True)
    where = "the pack" if not args.attn_pack else f"pack {args.attn_pack}"
    shape = f"{heads} heads x {hd}" + ("" if args.tiny else " (NiT-B)")
    print(f"\n== (b) attention paths on {where}: {seg.total} tokens, {len(lengths)} segments, {shape}, fp32, "
          f"{args.repeats} interleaved repeats (scripts/bench_varlen.py)")
    paths, missing = bench_varlen.attention_paths(seg, q)
    for name, why in missing.items():
        print(f"{name}: unavailable ({why})")
    results = bench_varlen.compare(paths, q, k, v, seg, args.repeats, backward=True)
    names = [n for n in results if args.memory_paths == "all" or n in args.memory_paths.split(",")]
    memory = bench_varlen.peak_memory(names, lengths, heads, hd, backward=True)
    print(f"peak memory: {bench_varlen.MEMORY_METHOD['cpu']} (measured for {', '.join(names)})")
    print("\n".join(bench_varlen.table(results, memory)))
    if "dense" in results:
        base = statistics.median(results["dense"]["fwd"])
        print("forward time vs the dense-mask baseline: " + ", ".join(
            f"{name} {base / statistics.median(r['fwd']):.2f}x" for name, r in results.items() if name != "dense"))
    out["attn"] = {"results": results, "memory": memory}


def part_sample(args, model, peaks, out) -> None:
    grids = parse_grids(args.sample_grids)
    print(f"\n== (c) Euler ODE sampling, {args.sample_steps} steps, guidance 3.0 in [0, 0.7] (guided steps run the "
          f"doubled pack), {args.sample_images} images per call, {model_desc(args, model)}")
    print(f"{'grid':<7} {'px (f32)':>9} {'precision':<14} {'forwards':>8} {'s/call':>8} {'images/s':>9} "
          f"{'GFLOP/s':>8} {'% own peak':>10}")
    rows = []
    for grid in grids:
        # FLOPs of an unguided and of a guided (doubled pack) forward
        one = meta_forward_flops(model_spec(args), [grid] * args.sample_images)
        two = meta_forward_flops(model_spec(args), [grid] * args.sample_images, rows=2)
        for precision in ("fp32", "bf16"):
            s, calls = sample_time(model, grid, args.sample_images, args.sample_steps, precision)
            flops = sum(two if c == 2 * args.sample_images else one for c in calls)
            gfs = flops / s / 1e9
            rows.append((grid, precision, s, args.sample_images / s, gfs))
            print(f"{grid[0]}x{grid[1]:<5} {32 * grid[0]:>4}x{32 * grid[1]:<4} {label(precision):<14} "
                  f"{len(calls):>8} {s:8.3f} {args.sample_images / s:9.3f} {gfs:8.1f} "
                  f"{100 * gfs / peaks[precision]:9.1f}%")
    out["sample"] = rows
    for grid in grids:
        a, b = (r[3] for r in rows if r[0] == grid)
        print(f"{grid[0]}x{grid[1]}: bf16 autocast / fp32 sampling throughput {b / a:.2f}x")
    big, small = grids[-1], grids[0]
    ratio = next(r[3] for r in rows if r[0] == small and r[1] == "fp32") / next(
        r[3] for r in rows if r[0] == big and r[1] == "fp32")
    print(f"fp32 images/s {small[0]}x{small[1]} / {big[0]}x{big[1]}: {ratio:.2f}x "
          f"({big[0] * big[1] / (small[0] * small[1]):.0f}x the tokens per image); at the README's 50 ODE steps "
          f"images/s ≈ the figures above x {args.sample_steps}/50")


def model_desc(args, model) -> str:
    what = "tiny NiT-B-shaped model" if args.tiny else "NiT-B width/heads"
    return (f"{what} (hidden {model.hidden_size}, {model.num_heads} heads x {model.hidden_size // model.num_heads}, "
            f"depth {len(model.blocks)} of 12, {count_params(model) / 1e6:.1f}M params incl. projector)")


def label(precision: str) -> str:
    return "fp32" if precision == "fp32" else f"{precision} autocast"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes everywhere (a few seconds; tests)")
    ap.add_argument("--depth", type=int, default=2, help="blocks of the scaled-down NiT-B (the full one has 12)")
    ap.add_argument("--pack", default=DEFAULT_PACK, help="HxW[xCOUNT] latent grids of the pack")
    ap.add_argument("--train-iters", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="attention timing repeats")
    ap.add_argument("--attn-pack", default=None, help="pack of part (b) (default: --pack)")
    ap.add_argument("--memory-paths", default="all", help="attention paths whose peak memory is measured")
    ap.add_argument("--sample-grids", default="8x8,16x16")
    ap.add_argument("--sample-images", type=int, default=4)
    ap.add_argument("--sample-steps", type=int, default=10)
    ap.add_argument("--peak-size", type=int, default=2048)
    args = ap.parse_args(argv)
    args.hidden, args.heads = FLAVOUR_ARGS["NiT_B"]["hidden_size"], FLAVOUR_ARGS["NiT_B"]["num_heads"]
    args.attn_heads, args.attn_head_dim = args.heads, args.hidden // args.heads
    if args.tiny:
        defaults = {a.dest: a.default for a in ap._actions}
        for key, value in TINY.items():  # tiny values unless the flag was given explicitly
            if getattr(args, key, None) == defaults.get(key, getattr(args, key, None)):
                setattr(args, key, value)
    only = set(args.only.split(","))
    if only - set(PARTS):
        ap.error(f"--only: unknown part(s) {sorted(only - set(PARTS))}; choose from {', '.join(PARTS)}")
    for category in (UserWarning, FutureWarning):  # nested-tensor / flex prototype notices
        warnings.filterwarnings("ignore", category=category)
    quiet_logs()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (shared machine: absolute figures are inflated by other "
          f"jobs; compare the ratios within this run)")
    word, why = resolve_precision("auto", CPU, "bench")
    print(f"precision auto -> {word} ({why}); both fp32 and bf16 autocast are measured below")
    out: dict = {"auto": word}
    peaks = matmul_peaks(("fp32", "bf16"), args.peak_size)
    grids = parse_grids(args.pack)
    model = bench_model(args) if only & {"train", "sample"} else None
    if "train" in only:
        part_train(args, model, grids, peaks, out)
    if "attn" in only:
        part_attn(args, grids, out)
    if "sample" in only:
        part_sample(args, model, peaks, out)
    if "flops" in only:
        part_flops(args, out)
    # a loaded moment can only understate the peak: keep the better of start and end for the summary
    final = matmul_peaks(("fp32", "bf16"), args.peak_size, before=peaks)
    print(f"\n== matmul peak ({args.peak_size}^3 matmuls, best of start/end): "
          + ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in final.items())
          + f"; bf16/fp32 {final['bf16'] / final['fp32']:.2f}x (at the start: "
          + ", ".join(f"{p} {v:.1f}" for p, v in peaks.items()) + ")")
    for precision, s, tps, ips, gfs in out.get("train", []):
        print(f"train {label(precision):<14} {gfs:8.1f} GFLOP/s = {100 * gfs / final[precision]:5.1f}% of the "
              f"{precision} peak")
    for grid, precision, s, ips, gfs in out.get("sample", []):
        print(f"sample {grid[0]}x{grid[1]} {label(precision):<14} {gfs:8.1f} GFLOP/s = "
              f"{100 * gfs / final[precision]:5.1f}% of the {precision} peak")
    out["peaks"] = final
    return out


if __name__ == "__main__":
    main()
    sys.exit(0)
