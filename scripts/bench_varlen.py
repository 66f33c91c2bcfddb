"""Compare the paths of block-diagonal (varlen) attention on one pack: outputs, time and peak memory of each.

  OMP_NUM_THREADS=2 python scripts/bench_varlen.py [--heads 16 --head-dim 72 --lengths 1024,1024,256x6,64x8]
      [--backward] [--memory] [--skip dense,flex]

Paths: the backends of models.nit.varlen_attention ('runs' = the default torch path, 'grouped', 'loop' = one SDPA call per
segment, 'dense' = one SDPA call with an N×N block-diagonal mask, the baseline; 'flash' only where flash-attn imports
and the tensors are CUDA fp16/bf16) plus two candidates kept here for comparison only: SDPA on jagged nested tensors
('nested') and flex attention with a document mask ('flex', when this torch has it). Max |error| is against 'loop'.

Time: min / median of --repeats calls after a warm-up, forward (and forward+backward with --backward), interleaved
so that every path sees the same machine load; ratios are to the fastest.
Peak memory (--memory): on the CPU each path runs in a fresh subprocess that builds the same q/k/v, resets the
kernel's resident-set high-water mark (/proc/self/clear_refs, Linux >= 4.0), runs the path once and reports how far
VmHWM (/proc/self/status) rose above the resident set at the reset: the extra memory the path needed at its peak,
allocator reuse and all. (torch's CPU allocator keeps no statistics, tracemalloc does not see torch tensors, and
getrusage's ru_maxrss is useless here: Linux carries the parent's peak over into an exec'd child.) On CUDA:
torch.cuda.max_memory_allocated above the inputs, in this process.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models.nit.varlen_attention import Segments, flash_usable, varlen_attention  # noqa: E402

BACKEND_PATHS = ("runs", "grouped", "loop", "dense")
MEMORY_METHOD = {"cpu": "rise of the resident-set high-water mark (VmHWM after a clear_refs reset) in a fresh "
                        "subprocess per path",
                 "cuda": "torch.cuda.max_memory_allocated above the inputs"}


def parse_lengths(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        n, _, rep = part.partition("x")
        out += [int(n)] * (int(rep) if rep else 1)
    return out


def nested_path(seg: Segments):
    """SDPA on jagged nested tensors (B, j, H, D)."""
    offsets = seg.cu_seqlens.to(torch.int64)

    def nt(x):
        return torch.nested.nested_tensor_from_jagged(x, offsets).transpose(1, 2)

    def run(q, k, v):
        return F.scaled_dot_product_attention(nt(q), nt(k), nt(v)).transpose(1, 2).values()
    return run


def flex_path(seg: Segments):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    ids = seg.segment_ids()

    def doc(b, h, qi, ki):
        return ids[qi] == ids[ki]

    block = create_block_mask(doc, None, None, seg.total, seg.total, device=str(ids.device))

    def run(q, k, v):
        if not torch.is_grad_enabled():  # flex refuses inputs that require grad even under no_grad
            q, k, v = q.detach(), k.detach(), v.detach()
        out = flex_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                             block_mask=block)
        return out[0].transpose(0, 1)
    return run


def attention_paths(seg: Segments, probe: torch.Tensor, skip=(), only=None) -> tuple[dict, dict]:
    """({name: fn(q, k, v) -> (N, H, D)}, {name: why unavailable}) for a pack; `probe` is a tensor like q."""
    skip = set(skip)
    want = (lambda name: name in only) if only is not None else (lambda name: name not in skip)
    paths, missing = {}, {name: "skipped (--skip)" for name in skip}
    for name in BACKEND_PATHS:
        if want(name):
            paths[name] = lambda q, k, v, name=name: varlen_attention(q, k, v, seg, backend=name)
    if want("flash"):
        if flash_usable(probe):
            paths["flash"] = lambda q, k, v: varlen_attention(q, k, v, seg, backend="flash")
        else:
            missing["flash"] = "needs flash-attn importable and CUDA fp16/bf16 tensors"
    if want("nested"):
        paths["nested"] = nested_path(seg)
    if want("flex"):
        try:
            paths["flex"] = flex_path(seg)
        except Exception as e:  # noqa: BLE001  (flex needs a recent torch; report and go on)
            missing["flex"] = f"{type(e).__name__}: {str(e)[:120]}"
    return paths, missing


def make_qkv(lengths, heads: int, head_dim: int, device="cpu", dtype=torch.float32, grad: bool = False):
    g = torch.Generator().manual_seed(0)
    n = sum(lengths)
    return [torch.randn(n, heads, head_dim, generator=g).to(device, dtype).requires_grad_(grad) for _ in range(3)]


def order_lengths(lengths: list[int], order: str) -> list[int]:
    # the order decides how many runs of equal lengths a pack has (what the "runs" path batches)
    if order == "ascending":
        return sorted(lengths)
    perm = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))
    return [lengths[i] for i in perm]


def _step(fn, q, k, v, backward: bool):
    if backward:
        out = fn(q, k, v)
        out.square().sum().backward()
        for t in (q, k, v):
            t.grad = None
    else:
        with torch.no_grad():
            fn(q, k, v)


def compare(paths: dict, q, k, v, seg: Segments, repeats: int = 3, backward: bool = False,
            log=print) -> dict[str, dict]:
    """{name: {'err': max |out - loop|, 'fwd': [s, ...], 'fwdbwd': [s, ...] (with backward, [] where the path has
    no backward)}}; the calls of all paths are interleaved, after one warm-up call each."""
    with torch.no_grad():
        ref = varlen_attention(q, k, v, seg, backend="loop")
    results, kinds = {}, {}
    for name, fn in paths.items():
        try:
            with torch.no_grad():
                err = (fn(q, k, v).float() - ref.float()).abs().max().item()
        except Exception as e:  # noqa: BLE001
            log(f"{name}: failed ({type(e).__name__}: {str(e)[:200]})")
            continue
        results[name] = {"err": err, "fwd": [], "fwdbwd": []}
        kinds[name] = [("fwd", False)]
        if backward:
            try:
                _step(fn, q, k, v, True)
                kinds[name].append(("fwdbwd", True))
            except Exception as e:  # noqa: BLE001  (flex has no CPU backward)
                log(f"{name}: forward only ({type(e).__name__}: {str(e)[:120]})")
    for _ in range(repeats):
        for name, fn in paths.items():
            for key, bwd in kinds.get(name, ()):
                t0 = time.perf_counter()
                _step(fn, q, k, v, bwd)
                results[name][key].append(time.perf_counter() - t0)
    return results


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field} (peak memory needs Linux)")


def _reset_peak() -> int:
    """Reset the high-water mark to the current resident set where the kernel allows it; the baseline to subtract."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_bytes("VmRSS")
    except OSError:  # no reset: the mark since this process started (exec gives it a fresh one)
        return _status_bytes("VmHWM")


def memory_child(name: str, lengths: list[int], heads: int, head_dim: int, backward: bool) -> dict:
    """Run in a fresh process: the rise of the peak RSS over the inputs while path `name` runs once."""
    # a warm-up on a 2-token pack first: libraries allocate their one-off state (thread pools, kernel caches)
    # below the inputs' high-water mark instead of inside the measurement
    small = Segments([1, 1], torch.device("cpu"))
    sq = make_qkv([1, 1], heads, head_dim, grad=backward)
    _step(attention_paths(small, sq[0], only={name})[0][name], *sq, False)
    seg = Segments(lengths, torch.device("cpu"))
    q, k, v = make_qkv(lengths, heads, head_dim, grad=backward)
    fn = attention_paths(seg, q, only={name})[0][name]
    base = _reset_peak()
    with torch.no_grad():
        fn(q, k, v)
    out = {"fwd": _status_bytes("VmHWM") - base}
    if backward:
        try:
            base = _reset_peak()
            _step(fn, q, k, v, True)
            out["fwdbwd"] = _status_bytes("VmHWM") - base
        except Exception:  # noqa: BLE001  (a path without backward here: forward figure only)
            pass
    return out


def peak_memory(names, lengths: list[int], heads: int, head_dim: int, backward: bool, device="cpu",
                threads: int | None = None) -> dict[str, dict]:
    """{name: {'fwd': bytes, 'fwdbwd': bytes}} by MEMORY_METHOD[device]; a failed path maps to {'error': text}."""
    out = {}
    if torch.device(device).type == "cuda":
        seg = Segments(lengths, torch.device(device))
        q, k, v = make_qkv(lengths, heads, head_dim, device, torch.bfloat16, grad=backward)
        paths, _ = attention_paths(seg, q, only=set(names))
        for name in names:
            res = {}
            for key, bwd in [("fwd", False)] + ([("fwdbwd", True)] if backward else []):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                _step(paths[name], q, k, v, bwd)
                torch.cuda.synchronize()
                res[key] = torch.cuda.max_memory_allocated() - base
            out[name] = res
        return out
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or torch.get_num_threads())}
    for name in names:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", name, "--lengths",
               ",".join(map(str, lengths)), "--heads", str(heads), "--head-dim", str(head_dim)]
        cmd += ["--backward"] if backward else []
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            out[name] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
        else:
            out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def table(results: dict, memory: dict | None = None) -> list[str]:
    """Rows sorted by median forward time: min / median seconds, x fastest, max |err|, peak memory (MiB)."""
    best = min(statistics.median(r["fwd"]) for r in results.values())
    bwd = any(r["fwdbwd"] for r in results.values())
    head = f"{'path':>8} {'fwd min s':>10} {'fwd med s':>10} {'x fastest':>9}"
    head += f" {'f+b med s':>10}" if bwd else ""
    head += f" {'max |err|':>10}"
    head += (f" {'fwd MiB':>8}" + (f" {'f+b MiB':>8}" if bwd else "")) if memory is not None else ""
    lines = [head]
    for name, r in sorted(results.items(), key=lambda kv: statistics.median(kv[1]["fwd"])):
        med = statistics.median(r["fwd"])
        line = f"{name:>8} {min(r['fwd']):10.4f} {med:10.4f} {med / best:9.2f}"
        if bwd:
            line += f" {statistics.median(r['fwdbwd']):10.4f}" if r["fwdbwd"] else f" {'n/a':>10}"
        line += f" {r['err']:10.2e}"
        if memory is not None:
            m = memory.get(name, {})
            if "error" in m:
                line += f"  memory run failed: {m['error']}"
            else:
                for key in ("fwd",) + (("fwdbwd",) if bwd else ()):
                    line += f" {m[key] / 2 ** 20:8.1f}" if key in m else f" {'-':>8}"
        lines.append(line)
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=72)
    ap.add_argument("--lengths", default="1024x2,256x6,64x8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--memory", action="store_true", help="also measure each path's peak memory")
    ap.add_argument("--order", choices=("shuffled", "ascending"), default="shuffled",
                    help="segment order in the pack (LPFHP packs are ascending)")
    ap.add_argument("--skip", default="", help="comma list of paths not to run (e.g. dense,flex)")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    lengths = parse_lengths(args.lengths)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, lengths, args.heads, args.head_dim, args.backward)))
        return 0
    torch.manual_seed(0)
    lengths = order_lengths(lengths, args.order)
    seg = Segments(lengths, torch.device("cpu"))
    q, k, v = make_qkv(lengths, args.heads, args.head_dim, grad=args.backward)
    print(f"pack: {seg.total} tokens, {len(lengths)} segments {sorted(set(lengths))}, heads {args.heads}, "
          f"head_dim {args.head_dim}, threads {torch.get_num_threads()}, backward {args.backward}, order {args.order}")
    paths, missing = attention_paths(seg, q, skip=list(filter(None, args.skip.split(","))))
    for name, why in missing.items():
        print(f"{name}: unavailable ({why})")
    results = compare(paths, q, k, v, seg, args.repeats, args.backward)
    memory = peak_memory(list(results), lengths, args.heads, args.head_dim, args.backward) if args.memory else None
    if memory is not None:
        print(f"peak memory: {MEMORY_METHOD['cpu']}")
    print("\n".join(table(results, memory)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
