"""Bad input to the two entry points gives one `error:` line, exit code 2, no traceback, and leaves files alone.

Each case is one line of CASES: (id, argv for train.py or extract_imagenet_feature.py, setup that writes files into
the case folder, the text the last stderr line must contain). `{t}` in argv/culprit is the case folder, `{a}` the
shared folder of small inputs (tiny checkpoints, image folders, stats files). Every file present before the run
(inputs and the prior checkpoints/results the setup wrote) must keep its checksum. Cases the engine does not handle
yet carry `xfail=` (strict: fixing one makes its test fail until the mark is removed).

Each single-process case runs the script as `__main__` in a child forked from an interpreter that has imported torch
once (tests/forkrun.py: the project itself is imported by the child); `BAD_INPUT_FRESH=1` starts a fresh interpreter
per case instead, as torchrun cases always do. `BAD_INPUT_TIMES=1` prints each case's seconds.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from tests.forkrun import ForkRunner

ROOT = Path(__file__).resolve().parent.parent
TRAIN, EXTRACT = "train.py", "extract_imagenet_feature.py"
GPU_CHECK = "scripts/gpu_check.py"
TIMEOUT = 240
WORKERS = int(os.environ.get("BAD_INPUT_WORKERS", "2"))  # processes at a time


# ------------------------------------------------------------------------------------------------ shared inputs
def _png(path: Path, seed: int, size=(40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _junk(path: Path, data: bytes = b"\xff\xd8\xff\xe0 not really an image") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _truncate(src: Path, dst: Path) -> None:
    b = src.read_bytes()
    dst.write_bytes(b[:len(b) // 2])


class _Opaque:  # pickled into a checkpoint: a weights-only load must refuse it
    pass


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """Small inputs every case may use (built once, a few MB)."""
    from engine.config import load_config
    from engine.optim import build_optimizer, make_ema
    from engine.trainer import save_checkpoint
    from metrics.inception import FIDInception
    from models import build_model
    from tokenizer.dcae import build_tiny_autoencoder_dc
    from tokenizer.demo_vq import build_demo_vq
    from tokenizer.vqgan import build_vqmodel

    a = tmp_path_factory.mktemp("bad_input_assets")
    torch.manual_seed(0)
    # image folders: readable + unreadable images, only unreadable ones, no class folders, classes without images
    for c in range(2):
        for j in range(2):
            _png(a / "imgs" / "train" / f"n{c}" / f"x{j}.png", 10 * c + j)
            _png(a / "one" / "train" / f"n{c}" / f"x{j}.png", 10 * c + j)
        _junk(a / "imgs" / "train" / f"n{c}" / "broken.JPEG")
        for j in range(3):
            _junk(a / "junk" / "train" / f"n{c}" / f"x{j}.JPEG")
        (a / "noimg" / "train" / f"n{c}").mkdir(parents=True)
        (a / "noimg" / "train" / f"n{c}" / "notes.txt").write_text("no images here")
    (a / "empty" / "train").mkdir(parents=True)
    _png(a / "flat" / "train" / "ILSVRC2012_val_00000001.JPEG", 99)  # ImageNet's val split as released
    # tokenizer checkpoints: good tiny VQGAN, truncated, garbage, pickled objects, other kinds
    torch.save({"state_dict": build_vqmodel("tiny").state_dict()}, a / "tiny.ckpt")
    _truncate(a / "tiny.ckpt", a / "trunc.ckpt")
    _junk(a / "garbage.ckpt", b"this is not a checkpoint\n" * 8)
    torch.save({"weights": _Opaque()}, a / "objects.ckpt")
    vq = build_demo_vq("debug")
    torch.save({"model": vq.state_dict(), "family": "demo_vq", "config": {"model": {"flavour": "debug"}}},
               a / "demo_vq.pt")
    torch.save(vq.state_dict(), a / "demo_vq_state_dict.pt")
    sd = vq.state_dict()
    sd.pop("quantize.embed")
    torch.save({"model": sd, "family": "demo_vq", "config": {"model": {"flavour": "debug"}}}, a / "demo_vq_missing.pt")
    build_tiny_autoencoder_dc().save_pretrained(str(a / "dcae"))
    (a / "dcae_badcfg").mkdir()
    (a / "dcae_badcfg" / "config.json").write_text("{ not json")
    (a / "dcae_trunc").mkdir()
    (a / "dcae_trunc" / "config.json").write_bytes((a / "dcae" / "config.json").read_bytes())
    weights = "diffusion_pytorch_model.safetensors"
    _truncate(a / "dcae" / weights, a / "dcae_trunc" / weights)
    # generators: the debug AutoNAT (plain EMA state dict, as released), a debug ENAT (wrong family for it)
    nat_cfg = load_config(ROOT / "configs/debug/autonat_debug.yaml")
    nat, _ = build_model(nat_cfg)
    torch.save(nat.state_dict(), a / "nnet_ema.pth")
    _truncate(a / "nnet_ema.pth", a / "nnet_trunc.pth")
    enat, _ = build_model(load_config(ROOT / "configs/debug/enat_debug.yaml"))
    torch.save(enat.state_dict(), a / "enat_ema.pth")
    # a prior training checkpoint of configs/debug/nat_synthetic.yaml (step 5), copied into cases' output_dir
    syn_cfg = load_config(ROOT / "configs/debug/nat_synthetic.yaml")
    model, fam = build_model(syn_cfg)
    save_checkpoint(a / "prior_step5.pt", model, make_ema(model), build_optimizer(model, syn_cfg.train), 5, fam.name,
                    syn_cfg)
    # random FID-Inception weights in fp16 (half the bytes; only the plumbing is under test) and stats files
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in FIDInception().state_dict().items()},
               a / "inception.pth")
    np.savez(a / "stats_ok.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    np.savez(a / "stats_4d.npz", mu=np.zeros(4), sigma=np.eye(4))  # readable, but 4 dims instead of 2048
    np.savez(a / "stats_nomu.npz", mean=np.zeros(4), cov=np.eye(4))
    np.savez(a / "stats_onlymu.npz", mu=np.zeros(4))
    np.savez(a / "stats_shape.npz", mu=np.zeros(4), sigma=np.eye(3))
    np.save(a / "stats_bare.npy", np.zeros(4))
    (a / "stats.txt").write_text("mu: 0\nsigma: 1\n")
    np.save(a / "tokens_empty.npy", np.zeros((0, 17), np.int64))
    (a / "bad.yaml").write_text("train:\n  lr: [1, 2\n")
    (a / "typo.yaml").write_text("family: nat\ntrain:\n  batch_sise: 8\n")
    (a / "interp.yaml").write_text("family: nit\nmodel:\n  flavour: debug\ntrain:\n  steps: ${train.nope}\n")
    _nit_assets(a)
    _column_assets(a)
    _edit_assets(a)
    return a


def _edit_assets(a: Path) -> None:
    """--mode edit: two 16x16 grey PNGs (the debug AutoNAT's canvas) and a mask of the wrong size."""
    for k in range(2):
        _png(a / "edit16" / f"img{k}.png", 50 + k, size=(16, 16))
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(a / "edit_mask8.png")


NIT_SHAPES = [(2, 2)] * 4 + [(2, 3)] * 2 + [(3, 2)] * 2  # latent grids: 8 images, 3 LPFHP packs of <= 16 tokens


def _nit_assets(a: Path) -> None:
    """NiT: a packed latent dataset as extract_imagenet_feature.py + scripts/pack_dataset.py write it, random debug
    weights as the released flat safetensors and as accelerate save_state folders (complete and not)."""
    from safetensors.torch import save_file

    from datasets.lpfhp import pack_lengths
    from datasets.nit_meta import write_sampler_meta
    from models.nit.model import FLAVOURS
    from tests.nit_helpers import randomized, write_latent_dataset
    write_latent_dataset(a / "nit", NIT_SHAPES, [k % 2 for k in range(len(NIT_SHAPES))], channels=32)
    write_sampler_meta(str(a / "nit" / "meta" / "x_merge_LPFHP_16.json"),
                       pack_lengths([h * w for h, w in NIT_SHAPES], 16, verbose=False))
    sd = {k: v.contiguous() for k, v in randomized(FLAVOURS["debug"](), seed=0).state_dict().items()}
    save_file(sd, str(a / "nit.safetensors"))
    _truncate(a / "nit.safetensors", a / "nit_trunc.safetensors")
    for name, files in (("nit_online_only", ("model_1",)), ("nit_ema_only", ("model",))):
        (a / name).mkdir()
        for f in files:
            save_file(sd, str(a / name / f"{f}.safetensors"))
    (a / "nit_garbage").mkdir()
    _junk(a / "nit_garbage" / "model.safetensors", b"not a safetensors file\n" * 4)


def nit_meta(t: Path, a: Path, line: int, text: str | None = None, name: str = "meta.jsonl", **fields) -> None:
    """{t}/<name>: the asset data-meta with 1-based line `line` replaced by `text`, or with `fields` changed."""
    lines = (a / "nit" / "meta" / "x_merge_meta.jsonl").read_text().splitlines()
    lines[line - 1] = text if text is not None else json.dumps({**json.loads(lines[line - 1]), **fields})
    (t / name).write_text("\n".join(lines) + "\n")


def nit_latent_copy(folder: str, change: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    """{t}/<folder>: a copy of the asset latent folders with one file (the first image's) changed."""
    def setup(t: Path, a: Path) -> None:
        import shutil
        shutil.copytree(a / "nit" / "latents", t / folder)
        first = json.loads((a / "nit" / "meta" / "x_merge_meta.jsonl").read_text().splitlines()[0])
        change(t / folder / first["type"] / first["latent_file"])
    return setup


def nit_missing_on_rank1(t: Path, a: Path) -> None:
    """A data-meta whose one missing latent file is read by rank 1 only (2 processes, first step)."""
    from datasets.nit_packs import PackOrder
    packs = json.loads((a / "nit" / "meta" / "x_merge_LPFHP_16.json").read_text())
    order = PackOrder(len(packs), 2, seed=0)
    mine, other = packs[order(0, 1)], packs[order(0, 0)]
    assert not set(mine) & set(other)
    nit_meta(t, a, mine[0] + 1, latent_file="n00/missing.safetensors")


def nit_prior(t: Path, a: Path) -> None:
    """An earlier NiT run's losses and sample grid in {t}/out."""
    (t / "out").mkdir(parents=True)
    (t / "out" / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0}) + "\n" for s in (1, 2)))
    (t / "out" / "samples.png").write_bytes(b"\x89PNG prior grid")


def _column_assets(a: Path) -> None:
    """The equivariant AR's inputs: a debug column tokenizer (eqtok container; one with a key short; a Lightning
    file with one EMA tensor short), a latent cache and a prior debug generator checkpoint (step 5)."""
    from engine.config import load_config
    from engine.optim import build_optimizer, make_ema
    from engine.trainer import save_checkpoint
    from models import build_model
    from tokenizer.column import build_column_autoencoder
    from tests.column_ema import ColumnEMA
    ae = build_column_autoencoder("debug")
    sd = ae.state_dict()
    box = {"family": "eqtok", "config": {"model": {"flavour": "debug"}}, "step": 1}
    torch.save({**box, "model": sd, "ema": sd}, a / "eqtok_tok.pt")
    short = {k: v for k, v in sd.items() if k != "quant_layer.bias"}
    torch.save({**box, "model": short, "ema": short}, a / "eqtok_tok_missing.pt")
    light = {**sd, **ColumnEMA(ae).state_dict()}
    light.pop("ema_quant_layer.bias")
    torch.save({"state_dict": light}, a / "column_lightning_missing.ckpt")
    # a latent cache of 8-d tokens (the debug generator takes 16-d ones)
    torch.save({"mean": torch.zeros(4, 4, 8), "label": torch.zeros(4, dtype=torch.long)}, a / "latents_8d.pt")
    cfg = load_config(ROOT / "configs/debug/eqar_debug.yaml")
    model, fam = build_model(cfg)
    save_checkpoint(a / "eqar_step5.pt", model, make_ema(model), build_optimizer(model, cfg.train), 5, fam.name, cfg)


# ------------------------------------------------------------------------------------------------- setups
def prior_train(t: Path, a: Path) -> None:
    """An earlier run's checkpoint and log in {t}/out: must survive any failed run."""
    (t / "out" / "checkpoints").mkdir(parents=True)
    (t / "out" / "checkpoints" / "step_0000005.pt").write_bytes((a / "prior_step5.pt").read_bytes())
    (t / "out" / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0}) + "\n" for s in range(1, 6)))


def prior_eval(t: Path, a: Path) -> None:
    """An earlier eval's result and sample grid in {t}/out."""
    (t / "out" / "eval" / "samples_n4_0123456789").mkdir(parents=True)
    (t / "out" / "eval" / "samples_n4_0123456789" / "result.json").write_text(json.dumps({"fid": 12.5}))
    (t / "out" / "samples.png").write_bytes(b"\x89PNG prior grid")


def edit_pngs(t: Path, a: Path) -> None:
    """A PNG that this project did not write, where --mode edit writes its images."""
    _png(t / "out" / "edit" / "000000.png", 7, size=(16, 16))


def prior_tokens(t: Path, a: Path) -> None:
    """An earlier extraction (the val split) in the output folder {t}/feat."""
    (t / "feat").mkdir()
    np.save(t / "feat" / "val.npy", np.arange(2 * 17, dtype=np.int64).reshape(2, 17))
    (t / "feat" / "val_skipped.txt").write_text("")


def prior_latents(t: Path, a: Path) -> None:
    (t / "lat" / "data_meta").mkdir(parents=True)
    (t / "lat" / "data_meta" / "dcae_256x256_meta.jsonl").write_text('{"image_file": "n0/x0.png"}\n')


def unfinished_shards(t: Path, a: Path) -> None:
    """An interrupted extraction at --input_res 32: one finished shard and its manifest."""
    import extract_imagenet_feature as extract
    prior_tokens(t, a)
    assert extract.main([*VQ_TINY, "--path", str(a / "imgs"), "--vq_ckpt", str(a / "tiny.ckpt"),
                         "--output", str(t / "feat" / "train.npy"),
                         "--shard_size", "2", "--row_block", "2", "--max_shards", "1"]) == 3


def prior_eqar(t: Path, a: Path) -> None:
    """An earlier equivariant-AR run (step 5) in {t}/out."""
    (t / "out" / "checkpoints").mkdir(parents=True)
    (t / "out" / "checkpoints" / "step_0000005.pt").write_bytes((a / "eqar_step5.pt").read_bytes())
    (t / "out" / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)))


def finished_tokens(t: Path, a: Path) -> None:
    """A finished extraction at --input_res 32 in {t}/feat/train.npy (with its settings record)."""
    import extract_imagenet_feature as extract
    assert extract.main([*VQ_TINY, "--path", str(a / "imgs"), "--vq_ckpt", str(a / "tiny.ckpt"),
                         "--output", str(t / "feat" / "train.npy")]) == 0


def finished_latents(t: Path, a: Path) -> None:
    """A finished DC-AE extraction (train split, 64 px) in {t}/lat."""
    import extract_imagenet_feature as extract
    assert extract.main([s.format(t=t, a=a) for s in DCAE]) == 0


def damaged_shard(how: str) -> Callable[[Path, Path], None]:
    """unfinished_shards, then its finished shard cut in half, overwritten with text, or holding object arrays."""
    def setup(t: Path, a: Path) -> None:
        unfinished_shards(t, a)
        shard = t / "feat" / ".train.npy.shards" / "shard_000000.npz"
        if how == "truncated":
            shard.write_bytes(shard.read_bytes()[:200])
        elif how == "garbage":
            shard.write_bytes(b"not a shard\n" * 4)
        else:
            with open(shard, "wb") as f:
                np.savez(f, rows=np.array([object()], dtype=object), skipped=np.array([], dtype=np.str_))
    return setup


def damaged_meta_shard(t: Path, a: Path) -> None:
    """An interrupted DC-AE extraction whose finished shard (JSON) was cut short."""
    import extract_imagenet_feature as extract
    prior_latents(t, a)
    argv = [s.format(t=t, a=a) for s in DCAE]
    assert extract.main([*argv, "--shard_size", "2", "--row_block", "2", "--max_shards", "1"]) == 3
    (shard,) = (t / "lat").glob(".shards_*/shard_000000.json")
    shard.write_text(shard.read_text()[:20])


def file_at(name: str, data: bytes = b"x") -> Callable[[Path, Path], None]:
    """Setup writing one plain file {t}/name (e.g. to stand where a folder should be)."""
    def setup(t: Path, a: Path) -> None:
        (t / name).parent.mkdir(parents=True, exist_ok=True)
        (t / name).write_bytes(data)
    return setup


def both(*setups) -> Callable[[Path, Path], None]:
    def setup(t: Path, a: Path) -> None:
        for s in setups:
            s(t, a)
    return setup


# ------------------------------------------------------------------------------------------------- argv parts
SYN = ["--config", "configs/debug/nat_synthetic.yaml", "--mode", "pretrain", "output_dir={t}/out", "device=cpu",
       "train.steps=6"]
EVAL = ["--config", "configs/debug/autonat_debug.yaml", "--mode", "eval", "output_dir={t}/out", "device=cpu",
        "--pretrained_path", "{a}/nnet_ema.pth", "tokenizer.ckpt={a}/demo_vq.pt", "eval.ref_stats={a}/stats_ok.npz",
        "eval.inception_weights={a}/inception.pth"]
VQ_TINY = ["--vq_config", "tiny", "--input_res", "32", "--num_workers", "0", "--no_progress"]
VQ = [*VQ_TINY, "--path", "{a}/imgs", "--vq_ckpt", "{a}/tiny.ckpt", "--output", "{t}/feat/train.npy"]
DCAE = ["--tokenizer", "dcae", "--input_res", "64", "--num_workers", "0", "--no_progress", "--path", "{a}/imgs",
        "--dcae_path", "{a}/dcae", "--output", "{t}/lat"]


NIT_TRAIN = ["--config", "configs/debug/nit_debug.yaml", "--mode", "pretrain", "output_dir={t}/out", "device=cpu",
             "data.data_meta={a}/nit/meta/x_merge_meta.jsonl", "data.sampler_meta={a}/nit/meta/x_merge_LPFHP_16.json",
             "data.latent_dirs={a}/nit/latents", "data.max_seq_len=16", "train.steps=2"]
# the NiT README's sampling command (run mode eval from --ckpt), on the debug recipe at 32 x 32
NIT_EVAL = ["--config", "configs/debug/nit_debug.yaml", "--ckpt", "{a}/nit.safetensors", "--sample-dir", "{t}/out",
            "--height", "32", "--width", "32", "--per-proc-batch-size", "2", "--mode", "ode", "--num-steps", "2",
            "--cfg-scale", "2.25", "--guidance-low", "0.0", "--guidance-high", "0.7", "device=cpu",
            "--num-fid-samples", "2", "tokenizer.ckpt={a}/dcae", "eval.inception_weights={a}/inception.pth",
            "eval.ref_stats={a}/stats_ok.npz"]
EQAR = ["--config", "configs/debug/eqar_debug.yaml", "--mode", "pretrain", "output_dir={t}/out", "device=cpu",
        "tokenizer.ckpt={a}/eqtok_tok.pt"]
EQAR_EVAL = ["--config", "configs/debug/eqar_debug.yaml", "--mode", "eval", "output_dir={t}/out", "device=cpu",
             "tokenizer.ckpt={a}/eqtok_tok.pt", "eval.ref_stats={a}/stats_ok.npz",
             "eval.inception_weights={a}/inception.pth"]
EQAR_W = [*EQAR_EVAL, "--pretrained_path", "{a}/eqar_step5.pt"]
EDIT = ["--config", "configs/debug/autonat_debug.yaml", "--mode", "edit", "output_dir={t}/out", "device=cpu",
        "--pretrained_path", "{a}/nnet_ema.pth", "tokenizer.ckpt={a}/demo_vq.pt", "edit.images={a}/edit16",
        "edit.labels=1", "edit.mask=box:4,4,12,12"]
EQTOK = ["--config", "configs/debug/eqtok_debug.yaml", "--mode", "pretrain", "output_dir={t}/out", "device=cpu"]


def with_(argv: list[str], *changes: str) -> list[str]:
    """argv with `--flag value` pairs replaced (or appended); changes are given as 'flag=value' strings."""
    out = list(argv)
    for ch in changes:
        flag, value = ch.split("=", 1)
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


ENGINE = "engine fix pending: "
# torch's advice for a file a weights-only load refuses: never to be passed on to a user
UNSAFE_HINTS = ("weights_only=False", "set to `False`", "This file can still be loaded", "allow_pickle",
                "load it unsafely")


@dataclass
class Case:
    id: str
    script: str
    argv: list[str]
    setup: Callable[[Path, Path], None] | None
    culprit: str
    xfail: str | None = None
    absent: tuple[str, ...] = ()  # files (under {t}) that must not exist after the run
    nproc: int = 1
    env: dict = field(default_factory=dict)


def case(id, script, argv, setup, culprit, xfail=None, **kw) -> Case:
    return Case(id, script, argv, setup, culprit, xfail, **kw)


CASES = [
    # ---- train.py: values and keys (config validation)
    case("lr-not-a-number", TRAIN, SYN + ["train.lr=abc"], prior_train, "train.lr"),
    case("batch-size-negative", TRAIN, SYN + ["train.batch_size=-2"], prior_train, "train.batch_size"),
    case("batch-size-zero", TRAIN, SYN + ["train.batch_size=0"], prior_train, "train.batch_size"),
    case("steps-not-int", TRAIN, SYN + ["train.steps=2.5"], prior_train, "train.steps"),
    case("grad-accum-zero", TRAIN, SYN + ["train.grad_accum=0"], prior_train, "train.grad_accum"),
    case("log-every-zero", TRAIN, SYN + ["train.log_every=0"], prior_train, "train.log_every"),
    case("unknown-key", TRAIN, SYN + ["train.lrr=3"], prior_train, "did you mean 'train.lr'"),
    case("unknown-key-in-recipe", TRAIN, ["--config", "{a}/typo.yaml", "output_dir={t}/out"], prior_train,
         "train.batch_sise"),
    case("unknown-flag", TRAIN, SYN + ["--bogus_flag", "1"], prior_train, "--bogus_flag"),
    case("flag-missing-value", TRAIN, SYN + ["--beta_alpha_beta", "12"], prior_train, "--beta_alpha_beta takes 2"),
    case("flag-of-another-family", TRAIN, SYN + ["--enc_dec", "22", "2"], prior_train,
         "unknown flag --enc_dec for family 'nat'"),
    case("override-not-key-value", TRAIN, SYN + ["lr"], prior_train, "'lr' is not key=value"),
    case("mode-unknown", TRAIN, SYN + ["--mode", "sde"], prior_train, "--mode sde: expected one of"),
    case("family-typo", TRAIN, SYN + ["family=enatt"], prior_train, "did you mean 'enat'"),
    case("betas-out-of-range", TRAIN, SYN + ["train.betas=[0.9,1.5]"], prior_train, "train.betas"),
    case("precision-unknown", TRAIN, SYN + ["train.precision=fp8"], prior_train, "train.precision"),
    case("eval-source-unknown", TRAIN, EVAL + ["eval.source=bogus"], prior_eval, "eval.source"),
    case("sample-rng-unknown", TRAIN, EVAL + ["sample.rng=global"], prior_eval, "sample.rng"),
    case("search-gradient-unknown", TRAIN, SYN + ["--mode", "search", "search.gradient=sgd"], prior_train,
         "search.gradient"),
    case("mode-not-of-family", TRAIN, ["--config", "configs/demo/vq_fmnist.yaml", "--mode", "eval",
                                       "output_dir={t}/out"], prior_train, "not supported for family 'demo_vq'"),
    case("recipe-does-not-parse", TRAIN, ["--config", "{a}/bad.yaml", "output_dir={t}/out"], prior_train,
         "bad.yaml"),
    case("recipe-missing", TRAIN, ["--config", "{t}/nope.yaml"], None, "config file not found: {t}/nope.yaml"),
    case("unknown-family", TRAIN, SYN + ["family=gan"], prior_train, "family 'gan'"),
    case("unknown-flavour", TRAIN, SYN + ["model.flavour=huge"], prior_train, "flavour 'huge'"),
    case("unknown-data-kind", TRAIN, SYN + ["data.kind=images"], prior_train, "data.kind must be one of tokens, synthetic, got 'images'"),
    case("device-cuda-without-gpu", TRAIN, SYN + ["device=cuda"], prior_train, "device"),
    case("device-gpu", TRAIN, SYN + ["device=gpu"], prior_train, "device"),
    case("fp16-on-cpu", TRAIN, SYN + ["train.precision=fp16"], prior_train, "train.precision"),
    case("output-dir-unwritable", TRAIN, [*SYN, "output_dir={t}/afile/out"], both(prior_train, file_at("afile")),
         "{t}/afile"),
    case("input-res-300", TRAIN, ["--config", "configs/enat_S_256.yaml", "--input_res", "300", "output_dir={t}/out",
                                  "device=cpu"], prior_train, "input_res 300"),
    case("token-file-garbage", TRAIN, SYN + ["data.kind=tokens", "data.path={a}/garbage.ckpt"], prior_train,
         "{a}/garbage.ckpt: not a readable .npy token file"),
    case("token-file-empty", TRAIN, SYN + ["data.kind=tokens", "data.path={a}/tokens_empty.npy"], prior_train,
         "tokens_empty.npy: holds no rows"),
    # ---- train.py --mode eval: weights, tokenizer, statistics, sizes
    case("pretrained-missing", TRAIN, EVAL + ["--pretrained_path", "{t}/nope.pth"], prior_eval,
         "not found: {t}/nope.pth"),
    case("pretrained-garbage", TRAIN, EVAL + ["--pretrained_path", "{a}/garbage.ckpt"], prior_eval,
         "{a}/garbage.ckpt: cannot be read"),
    case("pretrained-pickled-objects", TRAIN, EVAL + ["--pretrained_path", "{a}/objects.ckpt"], prior_eval,
         "{a}/objects.ckpt"),
    case("pretrained-truncated", TRAIN, EVAL + ["--pretrained_path", "{a}/nnet_trunc.pth"], prior_eval,
         "{a}/nnet_trunc.pth: cannot be read"),
    case("pretrained-other-family", TRAIN, EVAL + ["--pretrained_path", "{a}/enat_ema.pth"], prior_eval,
         "{a}/enat_ema.pth does not fit UViT"),
    case("tokenizer-kind-unknown", TRAIN, EVAL + ["tokenizer.kind=bogus"], prior_eval, "tokenizer.kind"),
    case("tokenizer-ckpt-missing-keys", TRAIN, EVAL + ["tokenizer.ckpt={a}/demo_vq_missing.pt"], prior_eval,
         "demo_vq_missing.pt['model'] does not fit DemoVQ: 1 missing key(s): quantize.embed"),
    case("tokenizer-ckpt-garbage", TRAIN, EVAL + ["tokenizer.ckpt={a}/garbage.ckpt"], prior_eval,
         "{a}/garbage.ckpt: cannot be read (not a torch.save file)"),
    case("stats-missing", TRAIN, EVAL + ["eval.ref_stats={t}/none.npz"], prior_eval,
         "reference statistics not found: {t}/none.npz"),
    case("stats-without-mu-sigma", TRAIN, EVAL + ["eval.ref_stats={a}/stats_nomu.npz"], prior_eval,
         "stats_nomu.npz: not a reference file: needs `mu` and `sigma`"),
    case("stats-wrong-shapes", TRAIN, EVAL + ["eval.ref_stats={a}/stats_shape.npz"], prior_eval,
         "stats_shape.npz: `mu` must be [D] and `sigma` [D, D]; got (4,) and (3, 3)"),
    case("stats-wrong-dims", TRAIN, EVAL + ["eval.ref_stats={a}/stats_4d.npz"], prior_eval,
         "stats_4d.npz: `mu` has 4 dims"),
    case("stats-not-npz", TRAIN, EVAL + ["eval.ref_stats={a}/stats.txt"], prior_eval,
         "stats.txt: cannot be read as a stats file"),
    case("eval-n-below-is-splits", TRAIN, EVAL + ["eval.metrics=[is]", "eval.ref_stats=null"], prior_eval, "eval.n"),
    case("eval-batch-size-zero", TRAIN, EVAL + ["--test_bsz", "0"], prior_eval, "eval.batch_size"),
    case("eval-output-dir-unwritable", TRAIN, [*EVAL, "output_dir={t}/afile/out"], both(prior_eval, file_at("afile")),
         "{t}/afile"),
    case("eval-n-below-processes", TRAIN, EVAL + ["--eval_n", "1", "--test_bsz", "1"], prior_eval, "eval.n",
         nproc=2),
    # ---- extract_imagenet_feature.py (all must pass)
    case("extract-all-unreadable", EXTRACT, with_(VQ, "--path={a}/junk"), prior_tokens,
         "{a}/junk/train: none of the 6 image files could be read", absent=("feat/train.npy",)),
    case("extract-all-unreadable-2proc", EXTRACT, with_(VQ, "--path={a}/junk"), prior_tokens,
         "{a}/junk/train: none of the 6 image files could be read", absent=("feat/train.npy",), nproc=2),
    case("extract-folder-missing", EXTRACT, with_(VQ, "--path={t}/nowhere"), prior_tokens,
         "image folder {t}/nowhere/train not found (--path {t}/nowhere --split train)"),
    case("extract-no-class-folders", EXTRACT, with_(VQ, "--path={a}/empty"), prior_tokens,
         "{a}/empty/train holds no class folders"),
    case("extract-flat-folder", EXTRACT, with_(VQ, "--path={a}/flat"), prior_tokens,
         "{a}/flat/train holds no class folders; expected <class folder>/<images> inside it (it holds images"),
    case("extract-no-images", EXTRACT, with_(VQ, "--path={a}/noimg"), prior_tokens, "{a}/noimg/train: no images"),
    case("extract-ckpt-missing", EXTRACT, with_(VQ, "--vq_ckpt={t}/absent.ckpt"), prior_tokens,
         "VQGAN checkpoint not found: {t}/absent.ckpt (--vq_ckpt)"),
    case("extract-ckpt-truncated", EXTRACT, with_(VQ, "--vq_ckpt={a}/trunc.ckpt"), prior_tokens,
         "{a}/trunc.ckpt: cannot be read (truncated or corrupted"),
    case("extract-ckpt-garbage", EXTRACT, with_(VQ, "--vq_ckpt={a}/garbage.ckpt"), prior_tokens,
         "{a}/garbage.ckpt: cannot be read (not a torch.save file); expected a VQGAN state dict"),
    case("extract-ckpt-pickled-objects", EXTRACT, with_(VQ, "--vq_ckpt={a}/objects.ckpt"), prior_tokens,
         "{a}/objects.ckpt: cannot be read (it holds pickled Python objects"),
    case("extract-ckpt-train-checkpoint", EXTRACT, with_(VQ, "--vq_ckpt={a}/demo_vq.pt"), prior_tokens,
         "{a}/demo_vq.pt is a train.py checkpoint of family 'demo_vq', not a VQGAN checkpoint"),
    case("extract-ckpt-other-model", EXTRACT, with_(VQ, "--vq_ckpt={a}/demo_vq_state_dict.pt"), prior_tokens,
         "{a}/demo_vq_state_dict.pt (expected VQGAN 'tiny' weights) does not fit VQModel"),
    case("extract-ckpt-other-size", EXTRACT, with_(VQ, "--vq_config=mage"), prior_tokens,
         "{a}/tiny.ckpt (expected VQGAN 'mage' weights) does not fit VQModel"),
    case("extract-output-unwritable", EXTRACT, with_(VQ, "--output={t}/afile/train.npy"), file_at("afile"),
         "output folder {t}/afile cannot be created or written"),
    case("extract-output-is-folder", EXTRACT, with_(VQ, "--output={t}/feat"), prior_tokens,
         "--output {t}/feat is a folder"),
    case("extract-input-res-300", EXTRACT, with_(VQ, "--vq_config=mage", "--input_res=300", "--vq_ckpt={t}/none.ckpt"),
         prior_tokens, "--input_res 300 is not a multiple of 16"),  # checked before the (absent) weights are read
    case("extract-input-res-text", EXTRACT, with_(VQ, "--input_res=big"), prior_tokens, "--input_res"),
    case("extract-device-cuda", EXTRACT, VQ + ["--device", "cuda"], prior_tokens, "--device cuda: no CUDA GPU"),
    case("extract-device-gpu", EXTRACT, VQ + ["--device", "gpu"], prior_tokens, "--device must be auto, cpu or cuda"),
    case("extract-vq-config-unknown", EXTRACT, with_(VQ, "--vq_config=huge"), prior_tokens, "--vq_config 'huge'"),
    case("extract-shard-size", EXTRACT, VQ + ["--shard_size", "10", "--row_block", "4"], prior_tokens,
         "--shard_size must be a positive multiple of --row_block"),
    case("extract-batch-size-zero", EXTRACT, VQ + ["--batch_size", "0"], prior_tokens, "--batch_size"),
    case("extract-unknown-argument", EXTRACT, VQ + ["--bogus"], prior_tokens, "unrecognized arguments: --bogus"),
    case("extract-settings-changed", EXTRACT, with_(VQ, "--input_res=64") + ["--shard_size", "2", "--row_block", "2"],
         unfinished_shards, "differing: --input_res"),
    case("extract-dcae-folder-missing", EXTRACT, with_(DCAE, "--dcae_path={t}/no-dcae"), prior_latents,
         "DC-AE directory not found: {t}/no-dcae"),
    case("extract-dcae-config-garbage", EXTRACT, with_(DCAE, "--dcae_path={a}/dcae_badcfg"), prior_latents,
         "dcae_badcfg/config.json: not a readable diffusers config.json"),
    case("extract-dcae-weights-truncated", EXTRACT, with_(DCAE, "--dcae_path={a}/dcae_trunc"), prior_latents,
         "{a}/dcae_trunc: cannot load AutoencoderDC weights"),
    case("extract-dcae-input-res-48", EXTRACT, with_(DCAE, "--input_res=48"), prior_latents,
         "--input_res 48 is not a multiple of 32"),
    case("extract-dcae-output-is-file", EXTRACT, with_(DCAE, "--output={t}/afile"), file_at("afile"),
         "--output {t}/afile is a file"),
    # ---- column tokenizer: semantic decoder size (it runs this many blocks per level and builds one more)
    case("eqtok-semantic-blocks-zero", TRAIN, ["--config", "configs/debug/eqtok_debug.yaml", "--mode", "pretrain",
                                               "output_dir={t}/out", "device=cpu", "model.semantic_num_res_blocks=0"],
         prior_train, "model.semantic_num_res_blocks"),
    # ---- NiT (train.py): silently wrong settings, the files the family reads, official sample_c2i_ddp.py flags
    case("nit-label-drop-above-1", TRAIN, NIT_TRAIN + ["loss.label_drop=1.5"], nit_prior,
         "config key 'loss.label_drop' must be a probability in [0, 1], got 1.5"),
    case("nit-repa-coeff-negative", TRAIN, NIT_TRAIN + ["loss.repa_coeff=-0.5"], nit_prior,
         "config key 'loss.repa_coeff' must be a number >= 0"),
    case("nit-repa-coeff-zero-with-encoder", TRAIN, NIT_TRAIN + ["loss.repa_coeff=0", "loss.repa_encoder={t}/enc.pt2"],
         nit_prior, "loss.repa_encoder={t}/enc.pt2 is set and would be ignored"),
    case("nit-repa-encoder-missing", TRAIN, NIT_TRAIN + ["loss.repa_encoder={t}/enc.pt2", "data.image_dir={a}/imgs"],
         nit_prior, "REPA encoder {t}/enc.pt2 not found"),
    case("nit-repa-radio-without-code", TRAIN, NIT_TRAIN + ["loss.repa_encoder={t}/radio_v2.5-h.pth.tar",
                                                            "data.image_dir={a}/imgs"],
         both(nit_prior, file_at("radio_v2.5-h.pth.tar")), "loss.radio_repo is not set"),
    case("nit-repa-without-image-dir", TRAIN, NIT_TRAIN + ["loss.repa_encoder={t}/enc.pt2"],
         both(nit_prior, file_at("enc.pt2")), "data.image_dir is not set"),
    case("nit-tokenizer-kind-unknown-pretrain", TRAIN, NIT_TRAIN + ["tokenizer.kind=bogus"], nit_prior,
         "config key 'tokenizer.kind' must be one of"),
    case("nit-data-kind-tokens", TRAIN, NIT_TRAIN + ["data.kind=tokens"], nit_prior, "data.kind must be 'packs'"),
    case("nit-max-seq-len-zero", TRAIN, NIT_TRAIN + ["data.max_seq_len=0"], nit_prior, "data.max_seq_len"),
    case("nit-pack-over-max-seq-len", TRAIN, NIT_TRAIN + ["data.max_seq_len=8"], nit_prior,
         "tokens > max_seq_len 8"),
    case("nit-grad-accum-mismatch", TRAIN, NIT_TRAIN + ["train.batch_size=4", "train.grad_accum=2"], nit_prior,
         "train.grad_accum 2 does not fit"),
    case("nit-data-meta-bad-line", TRAIN, NIT_TRAIN + ["data.data_meta={t}/meta.jsonl"],
         both(nit_prior, lambda t, a: nit_meta(t, a, 3, '{"image_file": "n00/img2.JPEG", ')),
         "{t}/meta.jsonl:3: not a JSON object"),
    case("nit-data-meta-field-not-int", TRAIN, NIT_TRAIN + ["data.data_meta={t}/meta_str.jsonl"],
         both(nit_prior, lambda t, a: nit_meta(t, a, 2, name="meta_str.jsonl", latent_h="2")),
         "{t}/meta_str.jsonl:2: data-meta field latent_h must be an integer >= 1, got '2'"),
    case("nit-data-meta-binary", TRAIN, NIT_TRAIN + ["data.data_meta={a}/tiny.ckpt"], nit_prior,
         "{a}/tiny.ckpt:"),
    case("nit-data-meta-is-folder", TRAIN, NIT_TRAIN + ["data.data_meta={a}/nit/meta"], nit_prior,
         "data-meta {a}/nit/meta is a folder"),
    case("nit-sampler-meta-not-json", TRAIN, NIT_TRAIN + ["data.sampler_meta={a}/nit/meta/x_merge_meta.jsonl"],
         nit_prior, "{a}/nit/meta/x_merge_meta.jsonl: not a JSON sampler-meta file"),
    case("nit-sampler-meta-not-indices", TRAIN, NIT_TRAIN + ["data.sampler_meta={t}/packs.json"],
         both(nit_prior, file_at("packs.json", b'[[0, 1], ["2"]]')),
         "{t}/packs.json: a sampler-meta file is a JSON list of lists of integer indices"),
    case("nit-sampler-meta-index-out-of-range", TRAIN, NIT_TRAIN + ["data.sampler_meta={t}/packs_99.json"],
         both(nit_prior, file_at("packs_99.json", b"[[0, 99]]")), "pack 0 refers to image index 99"),
    case("nit-latent-dirs-missing", TRAIN, NIT_TRAIN + ["data.latent_dirs={t}/nolat"], nit_prior,
         "data.latent_dirs {t}/nolat not found"),
    case("nit-latent-dirs-without-a-type", TRAIN,
         NIT_TRAIN + ["data.latent_dirs={{fixed-64x64: {a}/nit/latents/fixed-64x64}}"], nit_prior,
         "data.latent_dirs has no folder for data type 'native-resolution'"),
    case("nit-latent-truncated", TRAIN, NIT_TRAIN + ["data.latent_dirs={t}/lat"],
         both(nit_prior, nit_latent_copy("lat", lambda f: f.write_bytes(f.read_bytes()[:100]))),
         "{t}/lat/fixed-64x64/n00/img0.safetensors (data-meta index 0) cannot be read as safetensors"),
    case("nit-latent-without-label", TRAIN, NIT_TRAIN + ["data.latent_dirs={t}/lat_nolabel"],
         both(nit_prior, nit_latent_copy("lat_nolabel", lambda f: __import__("safetensors.torch").torch.save_file(
             {"latent": torch.zeros(2, 32, 2, 2)}, str(f)))),
         "{t}/lat_nolabel/fixed-64x64/n00/img0.safetensors (data-meta index 0) lacks ['label']"),
    case("nit-latent-missing-on-rank-1", TRAIN, NIT_TRAIN + ["data.data_meta={t}/meta.jsonl", "train.steps=1"],
         both(nit_prior, nit_missing_on_rank1), "n00/missing.safetensors (data-meta index", nproc=2),
    case("recipe-interpolation-missing-key", TRAIN, ["--config", "{a}/interp.yaml", "output_dir={t}/out"], nit_prior,
         "config key 'train.steps' in {a}/interp.yaml: cannot resolve its interpolation (Interpolation key "
         "'train.nope' not found)"),
    # ---- NiT eval (the README's sampling command): weights, sizes, sampler flags, output folders
    case("nit-ckpt-folder-without-ema", TRAIN, with_(NIT_EVAL, "--ckpt={a}/nit_online_only"), prior_eval,
         "error: {a}/nit_online_only/model.safetensors not found (EMA weights"),
    case("nit-ckpt-folder-without-online", TRAIN, with_(NIT_EVAL, "--ckpt={a}/nit_ema_only") + ["eval.use_ema=false"],
         prior_eval, "error: {a}/nit_ema_only/model_1.safetensors not found (online weights"),
    case("nit-ckpt-folder-garbage", TRAIN, with_(NIT_EVAL, "--ckpt={a}/nit_garbage"), prior_eval,
         "{a}/nit_garbage/model.safetensors: cannot be read as a safetensors file"),
    case("nit-ckpt-missing", TRAIN, with_(NIT_EVAL, "--ckpt={t}/none.safetensors"), prior_eval,
         "not found: {t}/none.safetensors"),
    case("nit-ckpt-truncated", TRAIN, with_(NIT_EVAL, "--ckpt={a}/nit_trunc.safetensors"), prior_eval,
         "{a}/nit_trunc.safetensors: cannot be read as a safetensors file"),
    case("nit-ckpt-other-model", TRAIN, with_(NIT_EVAL, "--ckpt={a}/nnet_ema.pth"), prior_eval,
         "{a}/nnet_ema.pth does not fit NiT"),
    case("nit-downsample-disagrees", TRAIN, NIT_EVAL + ["sample.downsample=16"], prior_eval,
         "sample.downsample 16 disagrees with tokenizer.kind dcae"),
    case("nit-in-channels-mismatch", TRAIN, NIT_EVAL + ["model.in_channels=4"], prior_eval,
         "model.in_channels 4 does not match tokenizer.kind dcae"),
    case("nit-height-not-multiple", TRAIN, with_(NIT_EVAL, "--height=48"), prior_eval,
         "image size 48x32 must be a multiple of 32"),
    case("nit-sizes-not-hxw", TRAIN, NIT_EVAL + ["sample.sizes=[32by64]"], prior_eval,
         "sample.sizes: a size is HxW"),
    case("nit-guidance-high-above-1", TRAIN, with_(NIT_EVAL, "--guidance-high=70"), prior_eval,
         "sample.guidance_high (--guidance-high) is a time t in [0, 1] (1 = noise), got 70.0"),
    case("nit-guidance-low-above-high", TRAIN, with_(NIT_EVAL, "--guidance-low=0.8", "--guidance-high=0.5"),
         prior_eval, "--guidance-low 0.8 must not exceed --guidance-high 0.5"),
    case("nit-solver-unknown", TRAIN, with_(NIT_EVAL, "--mode=euler"), prior_eval,
         "sample.mode (--mode) must be one of ode, sde, got 'euler'"),
    case("nit-heun-with-sde", TRAIN, with_(NIT_EVAL, "--mode=sde") + ["--heun"], prior_eval,
         "--heun is a corrector of the ODE sampler"),
    case("nit-num-steps-zero", TRAIN, with_(NIT_EVAL, "--num-steps=0"), prior_eval,
         "sample.steps (--num-steps) must be >= 1"),
    case("nit-per-proc-batch-size-zero", TRAIN, with_(NIT_EVAL, "--per-proc-batch-size=0"), prior_eval,
         "eval.batch_size"),
    case("nit-num-fid-samples-zero", TRAIN, with_(NIT_EVAL, "--num-fid-samples=0"), prior_eval, "eval.n"),
    case("nit-slice-vae-with-value", TRAIN, NIT_EVAL + ["--slice_vae=2"], prior_eval,
         "flag --slice_vae takes no value"),
    case("nit-cfg-scale-text", TRAIN, with_(NIT_EVAL, "--cfg-scale=high"), prior_eval, "sample.cfg_scale"),
    case("nit-global-seed-fraction", TRAIN, NIT_EVAL + ["--global-seed", "1.5"], prior_eval, "seed"),
    case("nit-sample-dir-under-file", TRAIN, with_(NIT_EVAL, "--sample-dir={t}/afile/out"),
         both(prior_eval, file_at("afile")), "{t}/afile"),
    case("nit-png-dir-under-file", TRAIN, NIT_EVAL + ["eval.save_png=2", "eval.png_dir={t}/afile/png"],
         both(prior_eval, file_at("afile")), "eval.png_dir {t}/afile/png cannot be created: {t}/afile is a file"),
    case("nit-dcae-folder-missing", TRAIN, NIT_EVAL + ["tokenizer.ckpt={t}/no-dcae"], prior_eval,
         "DC-AE directory not found: {t}/no-dcae"),
    # ---- eqar: the official flags' ranges (checked before anything loads), the schedule they translate to
    case("eqar-blr-negative", TRAIN, EQAR + ["--blr", "-1"], prior_eqar, "train.blr (--blr) must be a number >= 0"),
    case("eqar-blr-text", TRAIN, EQAR + ["--blr", "abc"], prior_eqar, "train.blr (--blr)"),
    case("eqar-epochs-zero", TRAIN, EQAR + ["--epochs", "0"], prior_eqar,
         "train.epochs (--epochs) must be an integer >= 1"),
    case("eqar-blr-negative-2proc", TRAIN, EQAR + ["--blr", "-1"], prior_eqar, "train.blr (--blr)", nproc=2),
    case("eqar-epochs-fraction", TRAIN, EQAR + ["--epochs", "2.5"], prior_eqar, "train.epochs (--epochs)"),
    case("eqar-warmup-epochs-negative", TRAIN, EQAR + ["--warmup_epochs", "-1"], prior_eqar,
         "train.warmup_epochs (--warmup_epochs) must be a number >= 0"),
    case("eqar-batch-size-zero", TRAIN, EQAR + ["--batch_size", "0"], prior_eqar,
         "train.batch_size_per_rank (--batch_size) must be an integer >= 1"),
    case("eqar-batch-size-negative", TRAIN, EQAR + ["--batch_size", "-3"], prior_eqar, "(--batch_size)"),
    case("eqar-token-num-zero", TRAIN, EQAR + ["--token_num", "0"], prior_eqar,
         "data.token_num (--token_num) must be an integer >= 2"),
    case("eqar-model-unknown", TRAIN, EQAR + ["--model", "giant_model"], prior_eqar,
         "family 'eqar' has no flavour 'giant_model'"),
    case("eqar-vae-embed-dim-zero", TRAIN, EQAR + ["--vae_embed_dim", "0"], prior_eqar, "(--vae_embed_dim)"),
    case("eqar-diffloss-d-zero", TRAIN, EQAR + ["--diffloss_d", "0"], prior_eqar, "model.diffloss_d (--diffloss_d)"),
    case("eqar-diffloss-w-zero", TRAIN, EQAR + ["--diffloss_w", "0"], prior_eqar, "model.diffloss_w (--diffloss_w)"),
    case("eqar-cond-length-negative", TRAIN, EQAR + ["--cond_length", "-1"], prior_eqar,
         "model.cond_length (--cond_length) must be an integer >= 0"),
    case("eqar-class-num-zero", TRAIN, EQAR + ["--class_num", "0"], prior_eqar, "model.class_num (--class_num)"),
    case("eqar-diffusion-batch-mul-zero", TRAIN, EQAR + ["--diffusion_batch_mul", "0"], prior_eqar,
         "(--diffusion_batch_mul)"),
    case("eqar-buffer-size-zero", TRAIN, EQAR + ["--buffer_size", "0"], prior_eqar,
         "model.buffer_size (--buffer_size)"),
    case("eqar-label-drop-above-one", TRAIN, EQAR + ["--label_drop_prob", "2"], prior_eqar, "(--label_drop_prob)"),
    case("eqar-vae-norm-zero", TRAIN, EQAR + ["--vae_norm", "0"], prior_eqar, "tokenizer.vae_norm (--vae_norm)"),
    case("eqar-img-size-other", TRAIN, EQAR + ["--img_size", "32"], prior_eqar,
         "makes one token per 4 px of 16-px-high images, but data.image_size=32"),
    case("eqar-num-sampling-steps-zero", TRAIN, EQAR + ["--num_sampling_steps", "0"], prior_eqar,
         "sample.num_sampling_steps (--num_sampling_steps) must be an integer >= 1"),
    case("eqar-cfg-schedule-unknown", TRAIN, EQAR + ["--cfg_schedule", "cosine"], prior_eqar,
         "sample.cfg_schedule (--cfg_schedule) must be one of linear, constant, got 'cosine'"),
    case("eqar-data-path-missing", TRAIN, EQAR + ["data.kind=imagefolder", "--data_path", "{t}/nowhere"],
         prior_eqar, "image folder {t}/nowhere not found"),
    case("eqar-latent-cache-other-width", TRAIN, EQAR + ["data.kind=latents", "data.path={a}/latents_8d.pt"],
         prior_eqar, "latents_8d.pt: latents (4, 1, 4, 8) and 4 labels do not fit model.vae_embed_dim"),
    case("eqar-resume-other-folder", TRAIN, EQAR + ["--resume", "{a}", "--ckpt", "eqar_step5.pt"], prior_eqar,
         "training resumes from the checkpoints of its own output_dir"),
    # ---- eqar: the tokenizer file, checked against the data geometry before anything loads
    case("eqar-tokenizer-missing", TRAIN, EQAR + ["tokenizer.ckpt={t}/none.ckpt"], prior_eqar,
         "column tokenizer checkpoint not found: {t}/none.ckpt (tokenizer.ckpt)"),
    case("eqar-tokenizer-garbage", TRAIN, EQAR + ["tokenizer.ckpt={a}/garbage.ckpt"], prior_eqar,
         "{a}/garbage.ckpt: cannot be read"),
    case("eqar-tokenizer-truncated", TRAIN, EQAR + ["tokenizer.ckpt={a}/trunc.ckpt"], prior_eqar,
         "{a}/trunc.ckpt: cannot be read (truncated or corrupted"),
    case("eqar-tokenizer-missing-key", TRAIN, EQAR + ["tokenizer.ckpt={a}/eqtok_tok_missing.pt"], prior_eqar,
         "eqtok_tok_missing.pt (ema) does not fit the column tokenizer: 1 missing key(s): quant_layer.bias"),
    case("eqar-tokenizer-lightning-missing-key", TRAIN, EQAR + ["tokenizer.ckpt={a}/column_lightning_missing.ckpt"],
         prior_eqar, "1 missing key(s): ema_quant_layer.bias"),
    case("eqar-tokenizer-other-family", TRAIN, EQAR + ["tokenizer.ckpt={a}/demo_vq.pt"], prior_eqar,
         "{a}/demo_vq.pt is a 'demo_vq' checkpoint, not a column tokenizer"),
    case("eqar-tokenizer-column-width", TRAIN, EQAR + ["data.column_width=8"], prior_eqar,
         "makes one token per 4 px of 16-px-high images, but data.image_size=16, data.column_width=8"),
    case("eqar-tokenizer-token-width", TRAIN, EQAR + ["--vae_embed_dim", "8"], prior_eqar,
         "makes 16-d tokens, but model.vae_embed_dim (--vae_embed_dim) is 8"),
    case("eqar-tokenizer-kind", TRAIN, EQAR + ["tokenizer.kind=pixels", "tokenizer.ckpt=null"], prior_eqar,
         "tokenizer.kind must be 'column'"),
    # ---- eqar --mode eval: sizes, sampling flags, the weights named by --resume/--ckpt
    case("eqar-eval-size-height", TRAIN, EQAR_W + ["eval.size=[32,16]"], prior_eval,
         "eval.size height 32: the column tokenizer makes images 16 px high"),
    case("eqar-eval-size-width", TRAIN, EQAR_W + ["eval.size=[16,18]"], prior_eval,
         "eval.size width 18 is not a multiple >= 2 of the column width 4"),
    case("eqar-eval-size-one-column", TRAIN, EQAR_W + ["eval.size=[16,4]"], prior_eval, "eval.size width 4"),
    case("eqar-eval-size-not-pair", TRAIN, EQAR_W + ["eval.size=[16]"], prior_eval, "eval.size must be [H, W]"),
    case("eqar-num-iter-one", TRAIN, EQAR_W + ["--num_iter", "1"], prior_eval, "sample.num_iter (--num_iter)"),
    case("eqar-cfg-negative", TRAIN, EQAR_W + ["--cfg", "-1"], prior_eval, "sample.cfg (--cfg)"),
    case("eqar-eval-bsz-zero", TRAIN, EQAR_W + ["--eval_bsz", "0"], prior_eval, "eval.batch_size"),
    case("eqar-num-images-zero", TRAIN, EQAR_W + ["--num_images", "0"], prior_eval, "eval.n"),
    case("eqar-ckpt-without-resume", TRAIN, EQAR_EVAL + ["--ckpt", "eqar_step5.pt"], prior_eval,
         "--ckpt is given without --resume"),
    case("eqar-resume-and-pretrained", TRAIN, EQAR_W + ["--resume", "{a}", "--ckpt", "nnet_ema.pth"], prior_eval,
         "name two different weight files"),
    case("eqar-resume-ckpt-absent", TRAIN, EQAR_EVAL + ["--resume", "{t}", "--ckpt", "nope.pt"], prior_eval,
         "not found: {t}/nope.pt"),
    case("eqar-resume-ckpt-garbage", TRAIN, EQAR_EVAL + ["--resume", "{a}", "--ckpt", "garbage.ckpt"], prior_eval,
         "{a}/garbage.ckpt: cannot be read"),
    case("eqar-resume-ckpt-truncated", TRAIN, EQAR_EVAL + ["--resume", "{a}", "--ckpt", "nnet_trunc.pth"],
         prior_eval, "{a}/nnet_trunc.pth: cannot be read"),
    # ---- eqtok: crops the tokenizer can take, loss ranges, weight files
    case("eqtok-lpips-file-missing", TRAIN, EQTOK + ["loss.perceptual=lpips", "loss.lpips_path={t}/vgg.pth"],
         prior_train, "LPIPS-VGG weights not found: {t}/vgg.pth (loss.lpips_path"),
    case("eqtok-crop-width-not-columns", TRAIN, EQTOK + ["data.crop_width=18"], prior_train,
         "data.crop_width=18 is not a multiple >= 2 of the column width 4"),
    case("eqtok-crop-width-one-column", TRAIN, EQTOK + ["data.crop_width=4"], prior_train, "data.crop_width=4"),
    case("eqtok-image-size-other", TRAIN, EQTOK + ["data.image_size=20"], prior_train,
         "data.image_size=20, but the column tokenizer (model.flavour=debug) is built for 16-px-high images"),
    case("eqtok-channels-other", TRAIN, EQTOK + ["data.channels=1"], prior_train,
         "data.channels gives 1-channel images"),
    case("eqtok-synthetic-n-zero", TRAIN, EQTOK + ["data.synthetic_n=0"], prior_train, "data.synthetic_n"),
    case("eqtok-width-not-groups", TRAIN, EQTOK + ["model.ch=30"], prior_train,
         "model.ch=30: the column tokenizer's widths must be multiples of 32"),
    case("eqtok-disc-channels-odd", TRAIN, EQTOK + ["model.disc_channels=3"], prior_train, "model.disc_channels"),
    case("eqtok-semantic-teacher-unknown", TRAIN, EQTOK + ["loss.semantic_teacher=dinov3"], prior_train,
         "loss.semantic_teacher must be none, dinov2 or package.module:factory, got 'dinov3'"),
    case("eqtok-kl-weight-negative", TRAIN, EQTOK + ["loss.kl_weight=-1"], prior_train, "loss.kl_weight"),
    case("eqtok-disc-start-negative", TRAIN, EQTOK + ["loss.disc_start=-5"], prior_train, "loss.disc_start"),
    case("eqtok-dino-path-missing", TRAIN, EQTOK + ["model.discriminator=dino", "model.dino_path={t}/dino.pth"],
         prior_train, "DINO ViT-S/16 (model.dino_path) weights not found: {t}/dino.pth"),
    case("eqtok-dinov2-path-missing", TRAIN, EQTOK + ["loss.semantic_weight=1"], prior_train,
         "DINOv2 ViT-B/14 (loss.dinov2_path) weights not found"),
    case("eqtok-init-from-lightning-missing-key", TRAIN,
         EQTOK + ["model.init_from={a}/column_lightning_missing.ckpt", "model.stage2=true"], prior_train,
         "1 missing key(s): ema_quant_layer.bias"),
    case("eqtok-init-from-truncated", TRAIN, EQTOK + ["model.init_from={a}/trunc.ckpt", "model.stage2=true"],
         prior_train, "{a}/trunc.ckpt: cannot be read (truncated or corrupted"),
    # ---- extraction (new): a finished output's recorded settings, damaged shards on resume
    case("extract-finished-other-input-res", EXTRACT, with_(VQ, "--input_res=64"), finished_tokens,
         "train.npy exists but was extracted with other settings (differing: --input_res 32 -> 64)"),
    case("extract-finished-other-row-block", EXTRACT, VQ + ["--row_block", "2", "--shard_size", "2"],
         finished_tokens, "(differing: --row_block 128 -> 2)"),
    case("extract-dcae-finished-other-split", EXTRACT, DCAE + ["--split", "val"], finished_latents,
         "dcae_64x64_meta.jsonl exists but was extracted with other settings (differing: --split train -> val)"),
    case("extract-finished-settings-unreadable", EXTRACT, VQ,
         both(finished_tokens, file_at("feat/train_settings.json", b"{")), "train_settings.json: unreadable"),
    case("extract-shard-truncated", EXTRACT, VQ + ["--shard_size", "2", "--row_block", "2"],
         damaged_shard("truncated"), "shard_000000.npz: unreadable shard (truncated or corrupted"),
    case("extract-shard-garbage", EXTRACT, VQ + ["--shard_size", "2", "--row_block", "2"],
         damaged_shard("garbage"), "shard_000000.npz: unreadable shard (not an .npz archive)"),
    case("extract-shard-pickled", EXTRACT, VQ + ["--shard_size", "2", "--row_block", "2"],
         damaged_shard("pickled"), "shard_000000.npz: unreadable shard (it holds pickled objects"),
    case("extract-dcae-shard-truncated", EXTRACT, DCAE + ["--shard_size", "2", "--row_block", "2"],
         damaged_meta_shard, "shard_000000.json: unreadable shard (truncated or corrupted"),
    # ---- config contract: search keys only where --mode search exists; keys derived at load checked like the rest
    case("search-key-family-without-search", TRAIN, EQAR + ["search.max_upd=3"], prior_eqar,
         "unknown config key 'search' in command line (family 'eqar'): family 'eqar' has no --mode search"),
    case("batch-split-2proc", TRAIN, SYN + ["train.batch_size=3"], prior_train,
         "train.batch_size (--batch_size) 3 (global) is not divisible by 2 process(es) x train.grad_accum 1", nproc=2),
    case("eqar-epochs-data-missing", TRAIN, EQAR + ["data.kind=imagefolder", "--data_path", "{t}/nowhere", "--epochs",
                                                    "1"], prior_eqar, "image folder {t}/nowhere not found"),
    # ---- scripts/gpu_check.py: its arguments, checked before anything runs or is written
    case("gpu-check-dcae-missing", GPU_CHECK, ["--cpu-smoke", "--out", "{t}/gc", "--dcae", "{t}/nowhere"], None,
         "--dcae {t}/nowhere: not a diffusers DC-AE folder"),
    case("gpu-check-row-cap-zero", GPU_CHECK, ["--cpu-smoke", "--out", "{t}/gc", "--row-cap", "0"], None,
         "--row-cap must be a positive number"),
    case("gpu-check-fault-unknown", GPU_CHECK, ["--cpu-smoke", "--out", "{t}/gc", "--inject-fault", "natt"], None,
         "--inject-fault natt: expected names among"),
    case("gpu-check-only-unknown", GPU_CHECK, ["--cpu-smoke", "--out", "{t}/gc", "--only", "bogus"], None,
         "--only bogus: matches no row"),
    # ---- --mode edit: the inputs (images, mask, labels, canvas), a family that cannot edit, earlier outputs
    case("edit-images-missing", TRAIN, EDIT + ["edit.images={t}/nope.png"], prior_eval,
         "edit.images {t}/nope.png not found"),
    case("edit-images-unset", TRAIN, EDIT + ["edit.images=null"], prior_eval, "edit.images is not set"),
    case("edit-box-outside", TRAIN, EDIT + ["edit.mask=box:0,0,40,8"], prior_eval,
         "edit.mask 'box:0,0,40,8': the box must satisfy 0 <= x0 < x1 <= 16"),
    case("edit-box-not-numbers", TRAIN, EDIT + ["edit.mask=box:a,b,c"], prior_eval, "expected box:x0,y0,x1,y1"),
    case("edit-mask-size", TRAIN, EDIT + ["edit.mask={a}/edit_mask8.png"], prior_eval,
         "edit_mask8.png is 8x8 pixels but the images are 16x16"),
    case("edit-mask-missing", TRAIN, EDIT + ["edit.mask={t}/nomask.png"], prior_eval, "edit.mask {t}/nomask.png"),
    case("edit-labels-count", TRAIN, EDIT + ["edit.labels=[1,2,3]"], prior_eval,
         "edit.labels has 3 labels for 2 images"),
    case("edit-labels-unset", TRAIN, EDIT + ["edit.labels=null"], prior_eval, "edit.labels is not set"),
    case("edit-label-out-of-range", TRAIN, EDIT + ["edit.labels=12"], prior_eval,
         "edit.labels 12 is not a class id of this model (0..9)"),
    case("edit-anchor-outside", TRAIN, EDIT + ["edit.canvas=[16,16]", "edit.anchor=[4,4]"], prior_eval,
         "edit.anchor [4, 4] puts the 16x16 image outside the canvas [16, 16]"),
    case("edit-extend-and-canvas", TRAIN, EDIT + ["edit.canvas=[16,32]", "edit.extend_right=16"], prior_eval,
         "edit.extend_left / edit.extend_right set the canvas themselves"),
    case("edit-canvas-off-grid", TRAIN, EDIT + ["edit.canvas=[24,24]"], prior_eval,
         "family 'nat' edits its fixed 4x4 token grid: the canvas must be 16x16 pixels"),
    case("edit-official-stream", TRAIN, EDIT + ["sample.rng=official"], prior_eval, "sample.rng=official"),
    case("edit-family-without-edit", TRAIN, ["--config", "configs/demo/vq_fmnist.yaml", "--mode", "edit",
                                             "output_dir={t}/out"], prior_train, "family demo_vq has no editing"),
    case("edit-foreign-pngs", TRAIN, EDIT, both(prior_eval, edit_pngs), "holds 1 numbered PNGs that this project"),
    # ---- eqar fast sampling path: its switches
    case("eqar-fast-path-text", TRAIN, EQAR_W + ["sample.fast_path=maybe"], prior_eval,
         "config key 'sample.fast_path' must be true/false, got 'maybe'"),
    case("eqar-batched-head-without-fast-path", TRAIN, EQAR_W + ["sample.batched_head=true", "sample.fast_path=false"],
         prior_eval, "batched_head (sample.batched_head) needs fast_path (sample.fast_path)"),
    # ---- sample.compile: its values, and `true` where torch.compile cannot work (no C++ compiler for the CPU)
    case("sample-compile-not-a-switch", TRAIN, EVAL + ["sample.compile=fast"], prior_eval,
         "config key 'sample.compile' must be true, false or auto, got 'fast'"),
    case("sample-compile-without-compiler", TRAIN, EVAL + ["sample.compile=true"], prior_eval,
         "sample.compile=true cannot work on this cpu: no C++ compiler", env={"CXX": "/nonexistent/c++"}),
]


def _params():
    for c in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
        yield pytest.param(c, id=c.id, marks=marks)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _env(extra: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    return env


@dataclass
class Run:
    t: Path
    before: dict
    culprit: str
    proc: subprocess.CompletedProcess
    seconds: float = 0.0


def _launch(c: Case, t: Path, a: Path) -> tuple[Run, list[str]]:
    if c.setup is not None:
        c.setup(t, a)
    before = _snapshot(t)
    argv = [s.format(t=t, a=a) for s in c.argv]
    if c.nproc == 1:
        cmd = [sys.executable, str(ROOT / c.script), *argv]
    else:  # each rank's stderr goes to its own file, so every rank is checked
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={c.nproc}",
               "--log-dir", str(t / "torchrun_logs"), "--redirects", "3", str(ROOT / c.script), *argv]
    return Run(t, before, c.culprit.format(t=t, a=a), None), cmd


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory, assets):
    """Run every selected case as its own process, WORKERS at a time (each is mostly interpreter start-up)."""
    chosen = [it.callspec.params["c"] for it in request.session.items
              if it.module is request.module and hasattr(it, "callspec") and "c" in it.callspec.params]
    before_assets = _snapshot(assets)
    jobs = {}
    for c in chosen:  # setups first, in this process (some call the extraction in-process)
        jobs[c.id] = (c, *_launch(c, tmp_path_factory.mktemp(c.id), assets))

    # single-process cases run in children forked from interpreters that imported torch once (tests/forkrun.py);
    # torchrun cases and cases with their own environment start fresh interpreters
    fresh = bool(os.environ.get("BAD_INPUT_FRESH"))
    parents: queue.Queue = queue.Queue()
    if not fresh:
        for _ in range(min(WORKERS, sum(1 for c, _, _ in jobs.values() if c.nproc == 1 and not c.env))):
            parents.put(ForkRunner(_env({}), ROOT))
    io = tmp_path_factory.mktemp("case_io")

    def go(job):
        c, run, cmd = job
        t0 = time.time()
        if fresh or c.nproc > 1 or c.env:
            run.proc = subprocess.run(cmd, cwd=ROOT, env=_env(c.env), capture_output=True, text=True,
                                      timeout=TIMEOUT)
        else:
            parent = parents.get()
            try:
                (io / c.id).mkdir()
                run.proc = parent.run(cmd, ROOT, _env(c.env), io / c.id, TIMEOUT)
            finally:
                parents.put(parent)
        run.seconds = time.time() - t0
        return run

    with ThreadPoolExecutor(WORKERS) as pool:
        done = dict(zip(jobs, pool.map(go, jobs.values())))
    while not parents.empty():
        parents.get().close()
    if os.environ.get("BAD_INPUT_TIMES"):  # where the module's time goes
        for k, r in sorted(done.items(), key=lambda kv: -kv[1].seconds):
            print(f"{r.seconds:6.1f} s  {k}")
    return done, _snapshot(assets) == before_assets


def _stderr_checks(err: str, culprit: str, who: str) -> None:
    lines = [l for l in err.splitlines() if l.strip()]  # splitlines also cuts at the '\r' of progress bars
    assert lines, f"{who}: nothing on stderr"
    assert "Traceback" not in err, f"{who}: traceback on stderr:\n{err[-3000:]}"
    assert not any(h in err for h in UNSAFE_HINTS), f"{who}: quotes torch's advice to load unsafely"
    assert lines[-1].startswith("error: "), f"{who}: last stderr line is not an error line: {lines[-1]!r}"
    assert culprit in lines[-1], f"{who}: {culprit!r} not in {lines[-1]!r}"


@pytest.mark.parametrize("c", list(_params()))
def test_bad_input(c: Case, runs):
    done, assets_unchanged = runs
    r = done[c.id]
    p, t = r.proc, r.t
    if c.nproc == 1:
        assert p.returncode == 2, f"exit code {p.returncode}\n{p.stderr[-3000:]}"
        _stderr_checks(p.stderr, r.culprit, c.script)
    else:
        # torchrun exits 1 with its own report when a worker fails, and stops (SIGTERM, -15) the workers still
        # running: each rank must have printed the error line by then, and none may fail otherwise
        codes = [int(x) for x in re.findall(r"exitcode\s*:\s*(-?\d+)", p.stderr)]
        assert p.returncode != 0 and 2 in codes and set(codes) <= {2, -15}, f"exit codes {codes}\n{p.stderr[-3000:]}"
        logs = sorted((t / "torchrun_logs").rglob("stderr.log"))
        assert len(logs) == c.nproc, logs
        for log in logs:
            _stderr_checks(log.read_text(), r.culprit, f"{c.script} rank {log.parent.name}")
    after = _snapshot(t)
    changed = sorted(k for k, v in r.before.items() if after.get(k) != v)
    assert not changed, f"pre-existing files changed or removed: {changed}"
    assert assets_unchanged, "shared inputs were modified"
    for rel in c.absent:
        assert not (t / rel).exists(), f"{rel} was written"


def test_cases_are_distinct():
    assert len({c.id for c in CASES}) == len(CASES) >= 30
    assert len({(c.script, tuple(c.argv), c.nproc, c.setup) for c in CASES}) == len(CASES)


# ------------------------------------------------- stats files in-process (the message, without an eval around it)
STATS = [
    ("nomu", lambda p: np.savez(p, mean=np.zeros(4)), "not a reference file: needs `mu` and `sigma`"),
    ("onlymu", lambda p: np.savez(p, mu=np.zeros(4)), "has only one of `mu`/`sigma`"),
    ("shape", lambda p: np.savez(p, mu=np.zeros(4), sigma=np.eye(3)), "`mu` must be [D] and `sigma` [D, D]"),
    ("matrix-mu", lambda p: np.savez(p, mu=np.eye(4), sigma=np.eye(4)), "`mu` must be [D]"),
    ("text", lambda p: open(p, "w").write("mu sigma"), "cannot be read as a stats file (not a complete .npz"),
    ("bare-npy", lambda p: np.save(open(p, "wb"), np.zeros(4)), "a single .npy array (4,), not an .npz archive"),
    ("strings", lambda p: np.savez(p, mu=np.array(["a", "b"]), sigma=np.eye(2)), "must be numeric arrays"),
    ("nan", lambda p: np.savez(p, mu=np.full(2, np.nan), sigma=np.eye(2)), "contain NaN or inf"),
    ("images-not-uint8", lambda p: np.savez(p, arr_0=np.zeros((2, 4, 4, 3))), "`arr_0` must be uint8"),
]


@pytest.mark.parametrize("name,make,expect", STATS, ids=[s[0] for s in STATS])
def test_stats_file_errors_name_the_file(tmp_path, name, make, expect):
    from metrics.files import load_reference
    path = tmp_path / f"{name}.npz"
    make(path)
    # a ValueError (what entry points report as `error:`), one line, naming the file, without numpy's pickle hint
    with pytest.raises(ValueError) as e:
        load_reference(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and expect in msg and "\n" not in msg and "allow_pickle" not in msg, msg
    if name in ("nomu", "onlymu"):
        assert isinstance(e.value, KeyError)  # as before, for callers that catch KeyError
