"""One run that checks the CUDA paths of every family on a GPU machine; `--cpu-smoke` runs the same rows on the CPU
at the smallest sizes (the test suite does, so the script itself stays correct where no GPU exists).

    python scripts/gpu_check.py --out outputs/gpu_check [--dcae assets/dc-ae-f32c32-sana-1.1-diffusers]
    python scripts/gpu_check.py --cpu-smoke --out /tmp/gpu_check_smoke

Rows (a table on stdout, the same rows in <out>/gpu_check.json; exit 1 on any FAIL, skips never fail):
  a  <family> debug <precision>   debug flavour: loss, backward, a few AdamW steps, sampling, in fp32 / bf16 / fp16
                                  (fp16 with the engine's GradScaler; fp16 is CUDA only)
     <family> debug cpu-vs-device the same weights and inputs in fp32 on the CPU and on the device: forward outputs
                                  and samples within FP32_TOL (TF32 switched off); on --cpu-smoke: determinism
  b  <family> released train/sample   the released size on random weights: one training step at the recipe's
                                  per-GPU batch (peak memory against the GPU's), sampling images/s with the recipe's
                                  sampler settings, batch reduced to stay under --row-cap seconds (said in the row)
  c  attention <path>             every packed (varlen) and dense attention path that imports, on one NiT pack:
                                  agreement with the per-segment loop, time, peak memory
  d  train.py pretrain/resume/eval  torchrun --nproc_per_node=1 (nccl on CUDA, gloo on --cpu-smoke): a short run
                                  with checkpoints, an interrupted run resumed with the same losses, and an eval
                                  whose PNGs equal those of the 1-process CPU eval within 1/255
  e  train.compile / sample.compile   the compiled run agrees with the eager one (CUDA only)

Everything goes through the public paths users run: engine.config.load_config on the recipes, models.build_model,
the family record's dataset/batches/loss/sample, tokenizer.build_tokenizer, train.py as a subprocess.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FP32_TOL = 1e-3        # CPU vs CUDA in fp32: max |a - b| / max |b| (TF32 off; reductions add up in another order)
# attention paths vs the per-segment loop in the same dtype, relative to its largest output
ATTN_TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}
PNG_TOL = 2           # the eval PNGs of the CUDA and the CPU run: max |difference| in 1/255 steps (cuDNN runs the
                      # decoder's convolutions in TF32 by default; a flipped token moves pixels by far more)
COMPILE_TOL = 1e-3    # compiled vs eager losses / images: relative
OPTIONAL = ("omegaconf", "diffusers", "flash_attn", "xformers")


# ------------------------------------------------------------------------------------------------- the record
def fam_get(fam, name: str):
    """The one place that reads a field of a family record: the core's (`dataset`, `batches`, `loss`), its
    `training` capability's (`param_groups`, `to_device`, `batch_rows`) or its `sampling` capability's (`sample`,
    `settings`, `num_classes`; None for a family that only trains)."""
    if name in ("dataset", "batches", "loss"):
        return getattr(fam, name)
    if name in ("param_groups", "to_device", "batch_rows"):
        return getattr(fam.training, name)
    return getattr(fam.sampling, name) if fam.sampling is not None else None


def settings_of(fam, cfg, model):
    make = fam_get(fam, "settings")
    return make(cfg, model) if make is not None else None


# ---------------------------------------------------------------------------------------------------- results
class Skip(Exception):
    """A row that cannot run here (missing package, too little memory, CPU smoke): says why, never fails."""


class Disagree(AssertionError):
    pass


@dataclass
class Row:
    name: str
    status: str = "ok"
    reason: str = ""
    figures: dict = field(default_factory=dict)
    seconds: float = 0.0


class Report:
    def __init__(self, out: Path, only: list[str] | None):
        self.rows: list[Row] = []
        self.out, self.only = out, only
        self.header: dict = {}

    def wanted(self, name: str) -> bool:
        return not self.only or any(name.startswith(o) for o in self.only)

    def group_wanted(self, group: str) -> bool:
        """Some row of `group` (rows named '<group> ...') is wanted."""
        return not self.only or any(o.startswith(group) or group.startswith(o) for o in self.only)

    def run(self, name: str, fn, *args, **kw):
        """Run one row: fn(...) returns its figures (a dict) and may add a note under figures['note']."""
        if not self.wanted(name):
            return None
        row = Row(name)
        t = time.perf_counter()
        out = None
        try:
            out = fn(*args, **kw) or {}
            row.figures = {k: v for k, v in out.items() if k != "note"}
            row.reason = str(out.get("note", ""))
        except Skip as e:
            row.status, row.reason = "skip", str(e)
        except Exception as e:  # noqa: BLE001 - a row's failure is reported, the next row runs
            row.status = "FAIL"
            row.reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
            if not isinstance(e, Disagree):
                tb = traceback.format_exc().strip().splitlines()
                row.figures["traceback"] = tb[-6:]
        finally:
            _free_cuda()
        row.seconds = time.perf_counter() - t
        self.rows.append(row)
        # progress on stderr (where a long row hangs); the one table goes to stdout at the end
        print(f"[{len(self.rows)}] {row.name}: {row.status} ({row.seconds:.1f} s)", file=sys.stderr, flush=True)
        self.write()  # after every row: a run killed by a hung kernel or a time limit keeps what it found
        return out

    def write(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "gpu_check.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({**self.header, "rows": [vars(r) for r in self.rows]}, indent=1, default=str))
        os.replace(tmp, path)
        return path

    def table(self) -> str:
        w = max([len(r.name) for r in self.rows] + [4])
        lines = [f"{'row':<{w}}  status  {'s':>6}  figures / reason", "-" * (w + 40)]
        for r in self.rows:
            lines.append(_line(r, w))
        return "\n".join(lines)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _line(r: Row, w: int = 40) -> str:
    figs = ", ".join(f"{k} {_fmt(v)}" for k, v in r.figures.items() if k != "traceback")
    tail = "; ".join(x for x in (figs, r.reason) if x)
    return f"{r.name:<{w}}  {r.status:<6}  {r.seconds:6.1f}  {tail}"


def _free_cuda():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------- utilities
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> int:
    if device.type != "cuda":
        return 0
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_gib(device, base: int = 0):
    if device.type != "cuda":
        return None
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 30


def total_gib(device):
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / 2 ** 30


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    if a.shape != b.shape:
        raise Disagree(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    scale = b.abs().max().item() or 1.0
    return (a - b).abs().max().item() / scale


def as_tensor(out) -> torch.Tensor:
    """A sample as one tensor: (samples, labels) -> samples; a list of per-row samples -> flattened and joined."""
    if isinstance(out, tuple):
        out = out[0]
    if isinstance(out, (list, tuple)):
        return torch.cat([t.reshape(-1) for t in out])
    return out


def finite(t: torch.Tensor, what: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise Disagree(f"{what} is not finite")


def generators(n: int, seed: int = 0):
    return [torch.Generator().manual_seed(seed * 100003 + i) for i in range(n)]


@contextlib.contextmanager
def no_tf32():
    """fp32 comparisons against the CPU: TF32 matmuls/convs would be an intended 1e-3 difference, not a bug."""
    if not torch.cuda.is_available():
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def build_on(cfg, fam, device):
    """models.build_model with the weights made on `device` (the released sizes take a while to initialise on a
    CPU); where a constructor does not work under the device context manager (torch >= 2.0), built on the CPU and
    moved."""
    from models import build_model
    torch.manual_seed(0)
    if device.type == "cuda" and hasattr(torch.device(device), "__enter__"):
        try:
            with torch.device(device):
                model, fam = build_model(cfg, fam)
            return model.to(device), fam
        except Exception as e:  # noqa: BLE001 - fall back to the plain path, which the row then checks
            print(f"  (built on the CPU: {type(e).__name__} under the device context: {str(e)[:100]})")
            torch.manual_seed(0)
    model, fam = build_model(cfg, fam)
    return model.to(device), fam


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def quiet_logs() -> None:
    """The engine's per-call precision lines would drown the table: warnings and errors only."""
    try:
        from loguru import logger
    except ImportError:
        return
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def package_status() -> dict:
    out = {}
    for name in OPTIONAL:
        try:
            mod = importlib.import_module(name)
            out[name] = f"ok {getattr(mod, '__version__', '')}".strip()
        except Exception as e:  # noqa: BLE001 - broken builds raise anything at import
            out[name] = f"missing ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})"
    return out


# ----------------------------------------------------------------------------------------------- the families
@dataclass
class Spec:
    debug: str                    # recipe of the debug flavour
    released: str                 # recipe of the released size
    per_gpu: int                  # the release's training batch per GPU (rows, images; NiT: packs)
    per_gpu_source: str
    debug_overrides: tuple = ()
    released_overrides: tuple = ()


SPECS = {
    "nat": Spec("configs/debug/nat_synthetic.yaml", "configs/AutoNAT_L.yaml", 256,
                "AutoNAT: global batch 2048 on 8 GPUs",
                released_overrides=("data.kind=synthetic", "data.synthetic_seq_len=256", "data.synthetic_vocab=1024")),
    "enat": Spec("configs/debug/enat_debug.yaml", "configs/enat_L_256.yaml", 128,
                 "ENAT README: global batch 2048 on 16 A100s",
                 released_overrides=("data.kind=synthetic", "data.synthetic_seq_len=256",
                                     "data.synthetic_vocab=1024")),
    "nit": Spec("configs/debug/nit_debug.yaml", "configs/nit_XL.yaml", 1,
                "NiT-XL: one pack of 16384 tokens per GPU", debug_overrides=("sample.height=64", "sample.width=96")),
    "eqar": Spec("configs/debug/eqar_debug.yaml", "configs/eqar_large.yaml", 32,
                 "equivariant AR: global batch 2048 on 64 A100s"),
    "eqtok": Spec("configs/debug/eqtok_debug.yaml", "configs/eqtok_stage1.yaml", 12,
                  "column tokenizer: 12 per GPU (release config)",
                  debug_overrides=("loss.disc_start=0",),
                  released_overrides=("data.kind=synthetic", "model.discriminator=conv", "loss.perceptual=none",
                                      "loss.semantic_weight=0", "loss.disc_start=0")),
}


def load_cfg(recipe: str, overrides, out: Path):
    try:
        from engine.config import load_config
    except ImportError as e:
        raise Skip(f"omegaconf missing: the config loader needs it ({e})") from None
    return load_config(str(ROOT / recipe), [*overrides, f"output_dir={out}"], mode="pretrain")


def eqar_cache(cfg, rows: int, where: Path) -> str:
    """A latent cache as scripts/eqar_cache_latents.py writes it (data.kind=latents): random posterior means."""
    from models import get_family
    fam = get_family("eqar")
    dim = cfg.model.get("vae_embed_dim") or fam.flavours[str(cfg.model.flavour)].defaults["vae_embed_dim"]
    g = torch.Generator().manual_seed(0)
    path = where / f"eqar_latents_{rows}x{int(cfg.data.token_num)}x{int(dim)}.pt"
    if not path.exists():
        where.mkdir(parents=True, exist_ok=True)
        torch.save({"mean": torch.randn(rows, 2, int(cfg.data.token_num), int(dim), generator=g) * 0.5,
                    "label": torch.arange(rows) % 10}, path)
    return str(path)


def family_setup(name: str, released: bool, work: Path, batch: int | None = None):
    """(cfg, family record) of the debug or released recipe, with data a user could point it at (synthetic rows,
    a latent cache) and train.batch_size = the per-GPU batch."""
    spec = SPECS[name]
    recipe = spec.released if released else spec.debug
    over = list(spec.released_overrides if released else spec.debug_overrides)
    if batch is not None:
        over.append(f"train.batch_size={batch}")
        if name == "eqar":
            over.append("train.batch_size_per_rank=null")
        if name in ("nat", "enat", "eqtok"):
            over.append(f"data.synthetic_n={max(batch, 16)}")
    cfg = load_cfg(recipe, over, work / f"{name}_{'released' if released else 'debug'}")
    if name == "eqar":
        from omegaconf import OmegaConf
        n = max(int(cfg.train.batch_size), 8)
        OmegaConf.update(cfg, "data.kind", "latents")
        OmegaConf.update(cfg, "data.path", eqar_cache(cfg, n, work / "data"))
    from models import get_family
    return cfg, get_family(cfg.family)


def nit_pack(model, grids, seed: int = 0) -> dict:
    """One NiT training pack as datasets/nit_packs.py hands it to the loss (images by ascending length)."""
    from models.nit.model import pack_latents
    g = torch.Generator().manual_seed(seed)
    grids = sorted(grids, key=lambda hw: hw[0] * hw[1])
    x, hw = pack_latents([torch.randn(model.in_channels, h, w, generator=g) for h, w in grids], model.patch_size)
    return {"x": x, "hw_list": hw, "label": torch.randint(0, model.num_classes, (len(grids),), generator=g)}


def realistic_grids(tokens: int, patch: int = 1) -> list[tuple[int, int]]:
    """A NiT data mix filling `tokens` (in patches): 256-px and 512-px crops under DC-AE f32 and native sizes."""
    mix = [(8, 8), (16, 16), (8, 12), (12, 16), (10, 15), (16, 24), (14, 27), (8, 8), (12, 12)]
    out, used, i = [], 0, 0
    while True:
        h, w = mix[i % len(mix)]
        n = (h // patch) * (w // patch)
        if used + n > tokens:
            break
        out.append((h, w))
        used += n
        i += 1
    return out


def train_batch(name, fam, cfg, model, step: int = 0):
    """One micro-batch through the family's own data path (its dataset and batches), or a NiT pack."""
    if name == "nit":
        net = getattr(model, "module", model)
        if int(cfg.data.max_seq_len) >= 4096:
            grids = realistic_grids(int(cfg.data.max_seq_len), net.patch_size)
        else:
            grids = [(4, 4), (4, 6), (2, 2)]
        return nit_pack(net, grids, seed=step)
    ds = fam_get(fam, "dataset")(cfg, "train")
    return fam_get(fam, "batches")(ds, cfg, step, 0, 1)[0]


def sample_labels(fam, cfg, model, n: int) -> torch.Tensor:
    num = fam_get(fam, "num_classes")
    k = int(num(model, cfg)) if num is not None else int(cfg.data.num_classes)
    return torch.arange(n) % k


def run_sample(name, fam, cfg, model, n: int, device, precision: str = "fp32", seed: int = 0):
    """The family's sample function (or the tokenizer round trip for eqtok, which has none)."""
    from engine.precision import autocast
    model.eval()
    with torch.no_grad(), autocast(device, precision, role="gpu_check"):
        if name == "eqtok":
            g = torch.Generator().manual_seed(seed)
            h, w = int(cfg.data.image_size), int(cfg.data.crop_width)
            x = (torch.rand(n, 3, h, w, generator=g) * 2 - 1).to(device)
            return model.decode(model.encode_mean(x))
        sample = fam_get(fam, "sample")
        labels = sample_labels(fam, cfg, model, n).to(device)
        return as_tensor(sample(model, labels, generators(n, seed), settings_of(fam, cfg, model)))


def forward_probe(name, model, batch, device):
    """A deterministic forward of the family's network on one training batch (no random draws): the number the
    CPU-vs-device comparison looks at besides the samples."""
    b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    model.eval()
    with torch.no_grad():
        if name in ("nat", "enat"):
            return model(b["tokens"], b["label"])
        if name == "nit":
            n = b["label"].shape[0]
            t = torch.linspace(0.1, 0.9, n, device=device)
            return model(b["x"], t, b["label"], b["hw_list"])
        if name == "eqtok":
            return model.decode(model.encode_mean(b["image"]))
    return None


# ------------------------------------------------------------------------------------------------------ rows a
def fill_zero_tensors(model) -> int:
    """Seeded N(0, 0.02) into every all-zero floating parameter: adaLN-Zero gates and zero-initialised output layers
    (NiT, the flow head) would make outputs and velocities exactly 0 on both devices, a comparison that cannot fail."""
    g = torch.Generator().manual_seed(7)
    n = 0
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.numel() and not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                n += 1
    return n


def row_precision(name, precision, device, work, steps: int = 3):
    from engine.optim import build_optimizer
    from engine.precision import autocast, grad_scaler
    from models import TrainContext, build_model
    if precision == "fp16" and device.type != "cuda":
        raise Skip("fp16 is CUDA only (README, precision)")
    cfg, fam = family_setup(name, False, work)
    torch.manual_seed(0)
    model, fam = build_model(cfg, fam)
    model.to(device).train()
    groups = fam_get(fam, "param_groups")
    opt = build_optimizer(model, cfg.train, groups(model, cfg) if groups is not None else None)
    scaler = grad_scaler(device, precision)
    to_device = fam_get(fam, "to_device")
    ctx = TrainContext(cfg=cfg, step=0, ema=None)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        ctx.step = step
        torch.manual_seed(1000 + step)
        batch = to_device(train_batch(name, fam, cfg, model, step), device)
        with autocast(device, precision, role="gpu_check"):
            loss, _ = fam_get(fam, "loss")(model, batch, ctx)
        finite(loss.detach(), f"loss at step {step + 1}")
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    sync(device)
    step_s = (time.perf_counter() - t0) / steps
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    moved = sum(int(not torch.equal(a, b)) for a, b in zip(before, after))
    if moved == 0 and not (scaler is not None and scaler.get_scale() < 65536.0):
        raise Disagree(f"{steps} optimizer steps left every weight unchanged")
    for p in after:
        finite(p, "a weight after the optimizer steps")
    out = run_sample(name, fam, cfg, model, 2, device, precision)
    finite(out.float() if out.is_floating_point() else out, "the sample")
    figs = {"loss_first": losses[0], "loss_last": losses[-1], "s_per_step": step_s, "tensors_moved": moved,
            "sample_shape": list(out.shape)}
    if scaler is not None:
        figs["grad_scale"] = float(scaler.get_scale())
    return figs


def row_cpu_vs_device(name, device, work, fault: bool):
    """Same weights and inputs on the CPU and on `device` in fp32: forward outputs and samples."""
    from models import build_model
    cfg, fam = family_setup(name, False, work)
    torch.manual_seed(0)
    ref, fam = build_model(cfg, fam)
    ref.eval()
    zeros = fill_zero_tensors(ref)
    dev = copy.deepcopy(ref).to(device)
    batch = train_batch(name, fam, cfg, ref, 0)
    figs, errs = {}, {}
    with no_tf32():
        a = forward_probe(name, ref, batch, torch.device("cpu"))
        if a is not None:
            b = forward_probe(name, dev, batch, device)
            if fault:
                b = b + 0.05 * b.abs().max()
            errs["forward"] = rel_err(b, a)
            figs["max_abs_forward"] = float(a.abs().max())
        sa = run_sample(name, fam, cfg, ref, 3, torch.device("cpu"))
        sb = run_sample(name, fam, cfg, dev, 3, device)
    if sa.is_floating_point():
        if fault and a is None:
            sb = sb + 0.05 * sb.abs().max()
        errs["sample"] = rel_err(sb, sa)
        figs["max_abs_sample"] = float(sa.abs().max())
    else:  # mask-predict tokens: an argmax tie can flip one; the logits above are the check
        figs["sample_tokens_equal"] = float((sa.cpu() == sb.cpu()).float().mean())
    figs.update({f"rel_err_{k}": v for k, v in errs.items()})
    figs["zero_tensors_filled"] = zeros
    bad = {k: v for k, v in errs.items() if not v <= FP32_TOL}
    if bad:
        raise Disagree(f"fp32 {device.type} vs cpu beyond {FP32_TOL:g}: " +
                       ", ".join(f"{k} {v:.3g}" for k, v in bad.items()))
    figs["note"] = f"tolerance {FP32_TOL:g} (max |diff| / max |cpu|, TF32 off)"
    return figs


# ------------------------------------------------------------------------------------------------------ rows b
def released_train(name, device, work, smoke: bool):
    from engine.optim import build_optimizer
    from engine.precision import autocast, grad_scaler
    from models import TrainContext
    spec = SPECS[name]
    batch_n = 2 if smoke else spec.per_gpu
    cfg, fam = family_setup(name, not smoke, work, batch=batch_n if name != "nit" else None)
    if name == "nit" and not smoke:
        from omegaconf import OmegaConf
        OmegaConf.update(cfg, "train.batch_size", 1)
    params = _meta_params(cfg, fam)
    if device.type == "cuda":
        need = params * 16 / 2 ** 30  # fp32 weights, grads, two AdamW moments
        if need > 0.9 * total_gib(device):
            raise Skip(f"too little memory: {params / 1e6:.0f}M params need about {need:.1f} GiB before activations, "
                       f"the GPU has {total_gib(device):.1f}")
    base = reset_peak(device)
    model, fam = build_on(cfg, fam, device)
    model.train()
    groups = fam_get(fam, "param_groups")
    opt = build_optimizer(model, cfg.train, groups(model, cfg) if groups is not None else None)
    precision = resolved(cfg.train.precision, device)
    scaler = grad_scaler(device, precision)
    batch = fam_get(fam, "to_device")(train_batch(name, fam, cfg, model, 0), device)
    ctx = TrainContext(cfg=cfg, step=0, ema=None)

    def step():
        with autocast(device, precision, role="gpu_check"):
            loss, _ = fam_get(fam, "loss")(model, batch, ctx)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    try:
        loss, first = timed(step, device)
        loss, s = timed(step, device)
    except torch.cuda.OutOfMemoryError as e:
        raise Skip(f"too little memory for batch {batch_n}: {str(e).splitlines()[0][:120]}") from None
    finite(loss.detach(), "released-size loss")
    rows = fam_get(fam, "batch_rows")(batch)
    figs = {"flavour": str(cfg.model.flavour), "params_M": params / 1e6, "batch": rows, "precision": precision,
            "s_per_step": s, "first_step_s": first, "images_per_s": rows / s}
    if device.type == "cuda":
        figs["peak_GiB"] = peak_gib(device, base)
        figs["gpu_GiB"] = total_gib(device)
    if smoke:  # the released recipe still loads, builds (on `meta`) and makes its per-GPU batch
        rcfg, rfam = family_setup(name, True, work, batch=spec.per_gpu if name != "nit" else None)
        figs["released_params_M"] = _meta_params(rcfg, rfam) / 1e6
        if name != "nit":
            figs["released_batch"] = fam_get(rfam, "batch_rows")(train_batch(name, rfam, rcfg, None, 0))
        figs["note"] = f"debug flavour at batch 2; {spec.released} loaded and built on meta (cpu-smoke)"
    else:
        figs["note"] = f"per-GPU batch: {spec.per_gpu_source}"
    return figs


def resolved(word, device) -> str:
    """The recipe's precision word as it runs here (`auto` -> bf16 or fp32)."""
    from core.precision import resolve_precision
    return resolve_precision(str(word), device, role="gpu_check")[0]


def _meta_params(cfg, fam) -> int:
    from models import build_model
    with torch.device("meta"):
        m, _ = build_model(cfg, fam)
    return sum(p.numel() for p in m.parameters())


def released_sample(name, device, work, smoke: bool, cap: float):
    cfg, fam = family_setup(name, not smoke, work)
    model, fam = build_on(cfg, fam, device)
    model.eval()
    precision = resolved(cfg.eval.precision, device)
    want = 2 if smoke else int(cfg.eval.batch_size)
    call = lambda k: timed(lambda: run_sample(name, fam, cfg, model, k, device, precision), device)[1]  # noqa: E731
    n, notes, base = 2, [], reset_peak(device)
    try:
        t = call(n)  # warm-up (kernel selection, caches)
        if t <= cap:
            base = reset_peak(device)
            t = call(n)
        else:
            notes.append("the time includes the first call's warm-up (a second call would pass the cap)")
        # double the batch up to the recipe's eval batch while the next call is predicted to fit the cap
        while n < want:
            nxt = min(want, 2 * n)
            if t * nxt / n > cap:
                notes.append(f"batch {n} instead of the recipe's {want}: a larger call would pass the {cap:.0f} s "
                             f"cap")
                break
            base = reset_peak(device)
            n, t = nxt, call(nxt)
    except torch.cuda.OutOfMemoryError as e:
        raise Skip(f"too little memory at batch {n}: {str(e).splitlines()[0][:120]}") from None
    if t > cap:
        notes.append(f"one call at batch {n} took {t:.0f} s, over the {cap:.0f} s cap")
    figs = {"flavour": str(cfg.model.flavour), "batch": n, "precision": precision, "s_per_call": t,
            "images_per_s": n / t, "settings": _sampler_words(name, cfg)}
    if device.type == "cuda":
        figs["peak_GiB"] = peak_gib(device, base)
    if smoke:  # the released recipe's sampler settings still validate against its network (built on `meta`)
        from models import build_model
        rcfg, rfam = family_setup(name, True, work)
        with torch.device("meta"):
            rmodel, _ = build_model(rcfg, rfam)
        if name != "eqtok":
            settings_of(rfam, rcfg, rmodel)
        figs["released_settings"] = _sampler_words(name, rcfg)
        notes.append(f"debug flavour; {SPECS[name].released}'s sampler settings checked on meta (cpu-smoke)")
    figs["note"] = "; ".join(notes)
    return figs


def _sampler_words(name, cfg) -> str:
    s = cfg.sample
    if name == "nit":
        return f"{s.mode} {s.steps} steps cfg {s.cfg_scale} [{s.guidance_low},{s.guidance_high}] {s.height}x{s.width}"
    if name in ("nat", "enat"):
        return f"{s.gen_steps} steps strategy {Path(str(s.strategy)).name}"
    if name == "eqar":
        return f"{cfg.data.token_num} tokens x {s.num_sampling_steps} flow steps cfg {s.cfg} {s.cfg_schedule}"
    if name == "eqtok":
        return f"reconstruction (encode_mean, decode) {cfg.data.image_size}x{cfg.data.crop_width}"
    return ""


# -------------------------------------------------------------------------------- tokenizers and the Inception
_BUILT: dict = {}


def built(key, make):
    """One CPU copy per network and process (a random init of the Inception costs seconds on a CPU); rows get
    copies, so that moving one to the device leaves the reference on the CPU."""
    if key not in _BUILT:
        torch.manual_seed(0)
        _BUILT[key] = make()
    return copy.deepcopy(_BUILT[key])


def _vqgan(config: str):
    from tokenizer.vqgan import VQGANTokenizer, build_vqmodel
    return built(("vqgan", config), lambda: VQGANTokenizer(build_vqmodel(config)))


def _dcae(path: str | None):
    if path is None:
        raise Skip("no --dcae DIR given (a local diffusers DC-AE folder)")
    try:
        import diffusers  # noqa: F401
    except Exception as e:  # noqa: BLE001
        raise Skip(f"diffusers missing ({type(e).__name__}): DC-AE needs it") from None
    from tokenizer import build_tokenizer
    return built(("dcae", path), lambda: build_tokenizer("dcae", ckpt=path))


def _inception():
    from metrics.inception import FIDInception
    return built(("inception",), lambda: FIDInception().eval())


def _images(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def net_apply(kind: str, net, x):
    """The forward a user's pipeline runs: tokenizer round trip (encode, decode), Inception pool3 features."""
    if kind == "inception":
        return net(x, logits=False, spatial=False)["pool3"]
    return net.decode(net.encode(x))


def row_net_precision(kind, build, size, precision, device):
    from engine.precision import autocast
    if precision == "fp16" and device.type != "cuda":
        raise Skip("fp16 is CUDA only (README, precision)")
    net = build().to(device)
    x = _images(2, size).to(device)
    with torch.no_grad(), autocast(device, precision, role="gpu_check"):
        out, s = timed(lambda: net_apply(kind, net, x), device)
    finite(out.float(), f"{kind} output")
    return {"shape": list(out.shape), "s": s, "note": "inference only (frozen network: no loss, no optimizer)"}


def row_net_cpu_vs_device(kind, build, size, device, fault: bool):
    ref = build()
    dev = copy.deepcopy(ref).to(device)
    x = _images(2, size, seed=1)
    with torch.no_grad(), no_tf32():
        a = net_apply(kind, ref, x)
        b = net_apply(kind, dev, x.to(device))
    if fault:
        b = b + 0.05 * b.abs().max()
    err = rel_err(b, a)
    if not err <= FP32_TOL:
        raise Disagree(f"fp32 {device.type} vs cpu: rel. error {err:.3g} > {FP32_TOL:g}")
    return {"rel_err": err, "note": f"tolerance {FP32_TOL:g} (max |diff| / max |cpu|, TF32 off)"}


def row_net_throughput(kind, build, size, batch, precision, device, cap):
    from engine.precision import autocast
    net = build().to(device)
    n = batch
    base = reset_peak(device)
    x = _images(n, size).to(device)
    with torch.no_grad(), autocast(device, precision, role="gpu_check"):
        try:
            timed(lambda: net_apply(kind, net, x[:2]), device)
            _, t2 = timed(lambda: net_apply(kind, net, x[:2]), device)
            note = ""
            if t2 * n / 2 > cap:
                n = max(2, min(n, int(cap / max(t2, 1e-9) * 2)))
                note = f"batch reduced {batch} -> {n} to stay under the {cap:.0f} s cap"
            _, t = timed(lambda: net_apply(kind, net, x[:n]), device)
        except torch.cuda.OutOfMemoryError as e:
            raise Skip(f"too little memory: {str(e).splitlines()[0][:120]}") from None
    figs = {"size": size, "batch": n, "precision": precision, "images_per_s": n / t}
    if device.type == "cuda":
        figs["peak_GiB"] = peak_gib(device, base)
    figs["note"] = note
    return figs


# ------------------------------------------------------------------------------------------------------ rows c
def attention_pack(smoke: bool):
    """(lengths, heads, head_dim): NiT-XL's heads (16 x 72) on an LPFHP-like pack of 16384 tokens; tiny on CPU."""
    if smoke:
        return [4, 4, 16, 24, 64], 2, 8
    return sorted(h * w for h, w in realistic_grids(16384)), 16, 72


def varlen_paths(q) -> tuple[dict, dict]:
    """name -> callable(q, k, v, seg) for every packed path that runs here; name -> why not, for the others."""
    from models.nit import varlen_attention as va
    paths, missing = {}, {}
    for name in ("runs", "grouped", "loop", "dense"):
        paths[name] = lambda q, k, v, seg, name=name: va.varlen_attention(q, k, v, seg, backend=name)
    if va.flash_usable(q):
        paths["flash-attn varlen"] = lambda q, k, v, seg: va.varlen_attention(q, k, v, seg, backend="flash")
    else:
        why = "flash-attn does not import" if not va._load_flash() else "needs CUDA fp16/bf16 tensors"
        missing["flash-attn varlen"] = why
    sdpa = _sdpa_backends()
    if q.is_cuda:
        for label, backend in sdpa.items():
            paths[f"runs/sdpa-{label}"] = (lambda q, k, v, seg, b=backend:
                                           _with_sdpa(b, lambda: va.varlen_attention(q, k, v, seg, backend="runs")))
    else:
        missing["runs/sdpa-<backend>"] = "SDPA backend selection is checked on CUDA only"
    return paths, missing


def _sdpa_backends() -> dict:
    """SDPA kernels this torch can be forced to (torch.nn.attention.sdpa_kernel, torch >= 2.3)."""
    try:
        from torch.nn.attention import SDPBackend
    except ImportError:
        return {}
    names = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
             "math": "MATH"}
    return {k: getattr(SDPBackend, v) for k, v in names.items() if hasattr(SDPBackend, v)}


def _with_sdpa(backend, fn):
    from torch.nn.attention import sdpa_kernel
    with sdpa_kernel(backend):
        return fn()


def row_attention_path(name, fn, q, k, v, seg, ref, device, dense_ok: bool):
    if name == "dense" and not dense_ok:
        raise Skip("dense block-diagonal mask too large for the free memory at this pack")
    base = reset_peak(device)
    try:
        out = fn(q, k, v, seg)
        sync(device)
    except torch.cuda.OutOfMemoryError as e:
        raise Skip(f"too little memory: {str(e).splitlines()[0][:100]}") from None
    except RuntimeError as e:
        if "No available kernel" in str(e) or "not supported" in str(e).lower():
            raise Skip(f"kernel unavailable for these inputs: {str(e).splitlines()[0][:100]}") from None
        raise
    mem = peak_gib(device, base)
    times = []
    for _ in range(5):
        _, t = timed(lambda: fn(q, k, v, seg), device)
        times.append(t)
    err = rel_err(out, ref)
    tol = ATTN_TOL[q.dtype]
    figs = {"dtype": str(q.dtype).replace("torch.", ""), "rel_err": err, "ms": 1e3 * sorted(times)[2]}
    if mem is not None:
        figs["peak_GiB"] = mem
    if not err <= tol:
        raise Disagree(f"differs from the per-segment loop: rel. error {err:.3g} > {tol:g}")
    return figs


def attention_rows(report: Report, device, smoke: bool):
    from models.nit.varlen_attention import Segments
    lengths, heads, hd = attention_pack(smoke)
    seg = Segments(lengths, device)
    g = torch.Generator().manual_seed(0)
    n = sum(lengths)
    qkv32 = [torch.randn(n, heads, hd, generator=g).to(device) for _ in range(3)]
    dtypes = [torch.float32] + ([torch.bfloat16, torch.float16] if device.type == "cuda" else [torch.bfloat16])
    from models.nit.varlen_attention import varlen_attention
    for dt in dtypes:
        q, k, v = (t.to(dt) for t in qkv32)
        ref = varlen_attention(q, k, v, seg, backend="loop")
        paths, missing = varlen_paths(q)
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 8 * 2 ** 30
        dense_ok = n * n * (heads * 4 + 1) < 0.5 * free  # mask + a math-kernel score matrix, worst case
        tag = str(dt).replace("torch.", "")
        for name, fn in paths.items():
            report.run(f"attention varlen {name} {tag}", row_attention_path, name, fn, q, k, v, seg, ref, device,
                       dense_ok)
        if dt == dtypes[0] or device.type == "cuda":
            for name, why in missing.items():
                report.run(f"attention varlen {name} {tag}", _skip, why)
    dense_attention_rows(report, device, smoke)


def _skip(why):
    raise Skip(why)


def dense_attention_rows(report, device, smoke):
    """models.layers.attention (the other families' path): sdpa, math, xformers on one U-ViT-sized batch."""
    from models import layers
    b, h, nq, d = (2, 2, 16, 8) if smoke else (64, 16, 257, 64)
    g = torch.Generator().manual_seed(1)
    dt = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(b, h, nq, d, generator=g).to(device, dt) for _ in range(3))
    ref = layers.attention(q, k, v, backend="math")
    for name in ("sdpa", "xformers"):
        def one(name=name):
            if name == "xformers":
                if not layers._load_xformers():
                    raise Skip("xformers does not import")
                if not q.is_cuda:
                    raise Skip("xformers runs on CUDA tensors only")
            base = reset_peak(device)
            out = layers.attention(q, k, v, backend=name)
            if name == "xformers" and layers._xformers_ops is False:
                raise Skip("xformers imports but its kernel failed on the first call (a build for another torch or "
                           "CUDA?): the dense families fall back to SDPA, as designed")
            mem = peak_gib(device, base)
            times = [timed(lambda: layers.attention(q, k, v, backend=name), device)[1] for _ in range(5)]
            err = rel_err(out, ref)
            tol = ATTN_TOL[dt]
            if not err <= tol:
                raise Disagree(f"differs from explicit softmax attention: rel. error {err:.3g} > {tol:g}")
            figs = {"dtype": str(dt).replace("torch.", ""), "rel_err": err, "ms": 1e3 * sorted(times)[2]}
            if mem is not None:
                figs["peak_GiB"] = mem
            return figs
        report.run(f"attention dense {name}", one)


# ------------------------------------------------------------------------------------------------- rows d, e
TRAIN_RECIPE = "configs/debug/nat_synthetic.yaml"


class Runs:
    """train.py under torchrun --nproc_per_node=1 (nccl on CUDA, gloo on the CPU), NAT debug on synthetic tokens; the
    reference eval is the plain 1-process CPU run (`python train.py ... device=cpu`)."""

    def __init__(self, work: Path, device):
        self.work, self.device = work / "train_py", device
        self.tok = self.work / "tokenizer.pt"
        self.logs: dict[str, str] = {}

    def tokenizer(self) -> Path:
        """A demo VQ checkpoint (debug flavour, random weights) as train.py writes one: the eval decodes with it."""
        if not self.tok.exists():
            from tokenizer.demo_vq import build_demo_vq
            torch.manual_seed(0)
            vq = build_demo_vq("debug")
            self.work.mkdir(parents=True, exist_ok=True)
            torch.save({"model": vq.state_dict(), "family": "demo_vq", "config": {"model": {"flavour": "debug"}}},
                       self.tok)
        return self.tok

    def cmd(self, mode: str, out: Path, device: str, *extra: str, torchrun: bool = True) -> list[str]:
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"] if torchrun else []
        return [sys.executable, *launcher, str(ROOT / "train.py"), "--config", str(ROOT / TRAIN_RECIPE), "--mode", mode,
                f"output_dir={out}", f"device={device}", "train.steps=4", "train.ckpt_every=2", "train.log_every=1",
                "train.warmup_steps=1", "tokenizer.kind=demo_vq", f"tokenizer.ckpt={self.tokenizer()}",
                "eval.metrics=[]", "eval.n=8", "eval.batch_size=4", "eval.save_png=-1", "eval.resume=false", *extra]

    def start(self, key: str, mode: str, out: Path, device: str, *extra: str, torchrun: bool = True
              ) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        log = open(self.work / f"{key}.log", "w")
        p = subprocess.Popen(self.cmd(mode, out, device, *extra, torchrun=torchrun), cwd=ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
        p.key, p.log = key, log
        return p

    def wait(self, *procs: subprocess.Popen, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        for p in procs:
            try:
                rc = p.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                rc = "timeout"
            p.log.close()
            if rc != 0:
                text = (self.work / f"{p.key}.log").read_text(errors="replace").strip().splitlines()
                err = [ln for ln in text if ln.startswith("error:")] or text[-3:]
                raise RuntimeError(f"train.py ({p.key}) exited {rc}: {' | '.join(err)[:250]} "
                                   f"(log {self.work / (p.key + '.log')})")

    def out(self, key: str) -> Path:
        return self.work / key


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {int(r["step"]): float(r["loss"]) for r in rows}


def pngs(out: Path) -> dict[str, "object"]:
    """The eval's PNGs by file name (the image's global index); the folder above them is named by a hash of the
    settings, which differs between runs with e.g. sample.compile on and off."""
    import numpy as np
    from PIL import Image
    found = {}
    for p in sorted((out / "eval").rglob("*.png")):
        if p.name in found:
            raise Disagree(f"two evals under {out / 'eval'} (image {p.name} twice)")
        with Image.open(p) as im:
            found[p.name] = np.asarray(im).astype(np.int16)
    return found


def compare_pngs(a: dict, b: dict, what: str, tol: int) -> dict:
    if not a or set(a) != set(b):
        raise Disagree(f"{what}: PNG sets differ ({len(a)} vs {len(b)} files)")
    worst = max(int(abs(a[k] - b[k]).max()) for k in a)
    same = sum(int((a[k] == b[k]).all()) for k in a)
    if worst > tol:
        raise Disagree(f"{what}: max pixel difference {worst}/255 > {tol}/255 ({same}/{len(a)} images identical)")
    return {"images": len(a), "identical": same, "max_diff_255": worst}


def train_py_rows(report: Report, work: Path, device, smoke: bool, fault: bool):
    if not any(report.group_wanted(n) for n in ("train.py", "compile")):
        return
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        report.run("train.py", _skip, "omegaconf missing: train.py needs it")
        return
    runs = Runs(work, device)
    dev = "cuda" if device.type == "cuda" else "cpu"
    runs.tokenizer()
    state = {}

    def pretrain_resume():
        a, b = runs.out("full"), runs.out("resumed")
        p1 = runs.start("full", "pretrain", a, dev)
        p2 = runs.start("interrupted", "pretrain", b, dev, "train.max_steps_this_run=2")
        runs.wait(p1, p2)
        ckpts = sorted(p.name for p in (a / "checkpoints").glob("step_*.pt"))
        state["ckpt"] = a / "checkpoints" / ckpts[-1]
        # the evals of the next row only need the finished run's checkpoint: they run beside the resume
        ck = f"eval.pretrained_path={state['ckpt']}"
        state["evals"] = (runs.start("eval_device", "eval", runs.out("eval_device"), dev, ck),
                          runs.start("eval_cpu", "eval", runs.out("eval_cpu"), "cpu", ck, torchrun=False))
        runs.wait(runs.start("resume", "pretrain", b, dev))
        la, lb = losses(a), losses(b)
        if sorted(la) != [1, 2, 3, 4] or sorted(lb) != [1, 2, 3, 4]:
            raise Disagree(f"logged steps {sorted(la)} / {sorted(lb)}, expected 1..4")
        # CUDA kernels with atomic adds (embedding backward) may move the last bits between two identical runs
        tol = 0.0 if dev == "cpu" else 1e-5
        worst = max(abs(la[s] - lb[s]) / max(abs(la[s]), 1e-12) for s in la)
        if fault:
            worst = 1.0
        if worst > tol:
            raise Disagree(f"resumed losses differ from the uninterrupted run's: rel. {worst:.3g} > {tol:g} "
                           f"({ {s: (la[s], lb[s]) for s in la} })")
        return {"backend": "nccl" if dev == "cuda" else "gloo", "loss_step4": la[4], "resume_rel_diff": worst,
                "checkpoints": len(ckpts), "note": f"resume tolerance {tol:g}"}

    report.run("train.py pretrain + resume", pretrain_resume)

    def eval_vs_cpu():
        if "evals" not in state:
            raise Skip("no checkpoint: the pretrain row failed before its first run finished")
        runs.wait(*state["evals"])
        a, b = pngs(runs.out("eval_device")), pngs(runs.out("eval_cpu"))
        state["eval_pngs"] = a
        figs = compare_pngs(a, b, f"eval on {dev} vs cpu", PNG_TOL)
        figs["note"] = f"tolerance {PNG_TOL}/255 per pixel" + ("; cpu-smoke: cpu vs cpu (determinism)"
                                                              if dev == "cpu" else "")
        return figs

    report.run("train.py eval vs cpu eval", eval_vs_cpu)

    def train_compile():
        if dev != "cuda":
            raise Skip("cpu-smoke: torch.compile is checked on CUDA only (on a CPU it needs minutes and a compiler)")
        if "ckpt" not in state:
            raise Skip("no eager run to compare with: the pretrain row failed")
        c = runs.out("compiled")
        runs.wait(runs.start("compiled", "pretrain", c, dev, "train.compile=true"), timeout=540)
        la, lc = losses(runs.out("full")), losses(c)
        worst = max(abs(la[s] - lc[s]) / max(abs(la[s]), 1e-12) for s in la)
        if worst > COMPILE_TOL:
            raise Disagree(f"compiled losses differ from eager: rel. {worst:.3g} > {COMPILE_TOL:g}")
        return {"rel_diff": worst, "note": f"tolerance {COMPILE_TOL:g}"}

    report.run("compile train.compile=true", train_compile)

    def sample_compile():
        from omegaconf import OmegaConf
        base = OmegaConf.load(ROOT / "configs" / "base.yaml")
        if OmegaConf.select(base, "sample.compile", default="<absent>") == "<absent>":
            raise Skip("configs/base.yaml has no sample.compile key in this version")
        if dev != "cuda":
            raise Skip("cpu-smoke: torch.compile is checked on CUDA only")
        if "eval_pngs" not in state:
            raise Skip("no eager eval to compare with: the eval row failed")
        out = runs.out("eval_compiled")
        runs.wait(runs.start("eval_compiled", "eval", out, dev, f"eval.pretrained_path={state['ckpt']}",
                             "sample.compile=true"), timeout=540)
        figs = compare_pngs(pngs(out), state["eval_pngs"], "compiled vs eager eval", PNG_TOL)
        figs["note"] = f"tolerance {PNG_TOL}/255 per pixel"
        return figs

    report.run("compile sample.compile=true", sample_compile)

    def eqar_fast_path_compiled():
        """The column AR's fast path compiled whole (token step + Euler loop, CUDA graphs) against it eagerly, on the
        debug generator with a perturbed head (its zero-initialised output would make every path agree)."""
        if dev != "cuda":
            raise Skip("cpu-smoke: torch.compile is checked on CUDA only")
        from core.seeding import row_generators
        from engine.compile_sampling import put_switches
        from models.eqar.condition import sample
        cfg, fam = family_setup("eqar", False, work)
        model, _ = build_on(cfg, fam, device)
        model.eval()
        with torch.no_grad():
            for p in model.diffloss.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        switches = put_switches(model, fam, False, "cuda")
        labels = torch.arange(4, device=device) % int(model.class_num)

        def run(compiled: bool, batched: bool):
            for sw in switches:
                sw.mode = compiled
            with torch.no_grad():
                return sample(model, labels, row_generators(0, range(4)), num_tokens=8, num_steps=10, cfg=3.0,
                              batched_head=batched)
        run(False, False)  # warm-up
        eager, secs = timed(lambda: run(False, False), device)
        figs = {"eager_s": secs}
        for batched in (False, True):
            run(True, batched)  # the compile and the graphs' recording
            got, secs = timed(lambda: run(True, batched), device)
            diff = (got - eager).abs().max().item()
            if not diff <= COMPILE_TOL * max(1.0, eager.abs().max().item()):
                raise Disagree(f"compiled eqar fast path (batched_head={batched}) differs from eager: {diff:.3g}")
            key = "compiled_batched" if batched else "compiled"
            figs[f"{key}_s"], figs[f"{key}_max_abs_diff"] = secs, diff
        return figs

    report.run("compile eqar fast path", eqar_fast_path_compiled)


# ------------------------------------------------------------------------------------------------------- main
FAMILY_ORDER = ("nat", "enat", "nit", "eqar", "eqtok")
NETS = ("vqgan", "dcae", "inception")
ROW_GROUPS = (*FAMILY_ORDER, *NETS, "attention", "train.py", "compile")


def check_args(args, smoke: bool, fault: set) -> str | None:
    """The one-line problem with the command line, before anything runs or is written; None when it is fine."""
    if not smoke and not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False); run with --cpu-smoke on a CPU"
    if args.dcae is not None and not os.path.isfile(os.path.join(args.dcae, "config.json")):
        return (f"--dcae {args.dcae}: not a diffusers DC-AE folder (no config.json there); give the local folder, "
                f"e.g. assets/dc-ae-f32c32-sana-1.1-diffusers")
    if not args.row_cap > 0:
        return f"--row-cap must be a positive number of seconds, got {args.row_cap}"
    bad = sorted(fault - {*FAMILY_ORDER, *NETS, "train.py"})
    if bad:
        return f"--inject-fault {','.join(bad)}: expected names among {', '.join((*FAMILY_ORDER, *NETS, 'train.py'))}"
    if args.only:
        for o in (s.strip() for s in args.only.split(",")):
            if not any(g.startswith(o) or o.startswith(g) for g in ROW_GROUPS):
                return f"--only {o}: matches no row (rows start with {', '.join(ROW_GROUPS)})"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and the train.py runs")
    ap.add_argument("--cpu-smoke", action="store_true", help="the same rows on the CPU at the smallest sizes")
    ap.add_argument("--dcae", default=None, help="a local diffusers DC-AE folder (rows 'dcae ...')")
    ap.add_argument("--only", default=None, help="comma-separated row-name prefixes (e.g. 'nat,attention')")
    ap.add_argument("--row-cap", type=float, default=30.0, help="seconds a throughput row may take (default 30)")
    ap.add_argument("--inject-fault", default="", metavar="NAMES",
                    help="comma-separated: perturb the device output of these (a family, vqgan, dcae, inception, "
                         "train.py): their rows must then fail (proves the check can)")
    args = ap.parse_args(argv)
    quiet_logs()
    smoke = bool(args.cpu_smoke)
    fault = {f.strip() for f in args.inject_fault.split(",") if f.strip()}
    problem = check_args(args, smoke, fault)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    device = torch.device("cpu") if smoke else torch.device("cuda", 0)
    out = Path(args.out).resolve()
    os.chdir(ROOT)  # recipes name their files (strategies, assets) relative to the repository root, as train.py
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work_", dir=out))
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    report = Report(out, only)

    pk = package_status()
    header = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "cpu_smoke": smoke, "packages": pk, "inject_fault": sorted(fault),
              "tolerances": {"fp32_cpu_vs_device": FP32_TOL, "png_max_diff_255": PNG_TOL, "compile": COMPILE_TOL,
                             "attention": {str(k).replace("torch.", ""): v for k, v in ATTN_TOL.items()}}}
    report.header = header
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device {header['device_name']}"
          f"{' (cpu-smoke)' if smoke else ''}")
    for name, st in pk.items():
        print(f"  optional package {name}: {st}")
    precisions = ("fp32", "bf16", "fp16")  # fp16 rows skip on the CPU, saying why

    for name in FAMILY_ORDER:
        for p in precisions:
            report.run(f"{name} debug {p}", row_precision, name, p, device, work)
        report.run(f"{name} debug cpu-vs-device", row_cpu_vs_device, name, device, work, name in fault)
        report.run(f"{name} released train", released_train, name, device, work, smoke)
        report.run(f"{name} released sample", released_sample, name, device, work, smoke, args.row_cap)

    nets = {"vqgan": (lambda: _vqgan("tiny"), lambda: _vqgan("mage" if not smoke else "tiny"), 32,
                      64 if smoke else 256, 125),
            "dcae": (lambda: _dcae(args.dcae), lambda: _dcae(args.dcae), 64, 64 if smoke else 256, 32),
            "inception": (_inception, _inception, 80, 80 if smoke else 299, 200)}
    for kind, (debug, full, size, full_size, batch) in nets.items():
        for p in precisions:
            report.run(f"{kind} debug {p}", row_net_precision, kind, debug, size, p, device)
        report.run(f"{kind} debug cpu-vs-device", row_net_cpu_vs_device, kind, debug, size, device, kind in fault)
        report.run(f"{kind} released throughput", row_net_throughput, kind, full, full_size,
                   2 if smoke else batch, "bf16" if device.type == "cuda" else "fp32", device, args.row_cap)

    if report.group_wanted("attention"):
        attention_rows(report, device, smoke)
    train_py_rows(report, work, device, smoke, "train.py" in fault)

    print("\n" + report.table())
    failed = [r.name for r in report.rows if r.status == "FAIL"]
    path = report.write()
    print(f"\n{len(report.rows)} rows: {sum(r.status == 'ok' for r in report.rows)} ok, {len(failed)} FAIL, "
          f"{sum(r.status == 'skip' for r in report.rows)} skip; {path}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
