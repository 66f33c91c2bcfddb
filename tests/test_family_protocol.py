"""A sixth family is one model file, one sampler, one recipe: a toy continuous flow-matching family written here,
outside the repository's packages, trains with 2 processes (killed and resumed: identical losses) and evaluates with
world-size-invariant outputs, through the unchanged engine.

Also: the layers point one way (nothing below the engine imports it), and a tokenizer checkpoint with missing keys
given as tokenizer.ckpt ends in one line naming the file and the keys.
"""
import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ROOT, read_metrics

TOY_FAMILY = '''
"""Toy family: class-conditional rectified flow on 3x8x8 images of two classes, in pixel space."""
import os
import time

import torch
from torch import nn

from core.seeding import normal_rows
from models.family import Family, Sampling

SHAPE = (3, 8, 8)


class Velocity(nn.Module):
    def __init__(self, hidden=32, classes=2):
        super().__init__()
        dim = SHAPE[0] * SHAPE[1] * SHAPE[2]
        self.label = nn.Embedding(classes, hidden)
        self.inp = nn.Linear(dim + 1, hidden)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, t, y):
        h = self.inp(torch.cat([x.flatten(1), t[:, None]], 1)) + self.label(y)
        return self.out(h).view_as(x)


class Blobs:
    """Class 0: dark images, class 1: bright ones, with per-image noise."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.label = torch.arange(n) % 2
        self.image = (self.label.float() - 0.5)[:, None, None, None] + 0.2 * torch.randn((n, *SHAPE), generator=g)


def dataset(cfg, split):
    return Blobs(int(cfg.data.n), 0)


def batches(ds, cfg, step, rank, world):
    # a different number of rows on every rank and step, a function of (seed, step, rank) only
    g = torch.Generator().manual_seed(int(cfg.seed) * 7919 + step * 104729 + rank)
    idx = torch.randint(len(ds.label), (2 + (step + rank) % 3,), generator=g)
    return [{"image": ds.image[idx], "label": ds.label[idx]}]


def loss(model, batch, ctx):
    if os.environ.get("TOY_SLOW"):
        time.sleep(0.3)
    x1 = batch["image"]
    x0 = torch.randn_like(x1)
    t = torch.rand(x1.shape[0])
    tt = t[:, None, None, None]
    v = model((1 - tt) * x0 + tt * x1, t, batch["label"])
    value = ((v - (x1 - x0)) ** 2).mean()
    return value, {"loss": value.item()}


def sample(model, labels, generators, steps, size=None):
    """Euler from noise (t = 0) to data (t = 1); row i's noise from generators[i]."""
    x = normal_rows(generators, SHAPE, labels.device)
    for i in range(steps):
        t = torch.full((x.shape[0],), i / steps, device=x.device)
        x = x + model(x, t, labels) / steps
    return x.clamp(-1, 1)


FAMILY = Family(
    name="toyflow",
    flavours={"tiny": Velocity},
    dataset=dataset,
    batches=batches,
    loss=loss,
    config=os.path.join(os.path.dirname(os.path.abspath(__file__)), "toyflow.yaml"),
    sampling=Sampling(sample=sample, settings=lambda cfg, model: int(cfg.sample.steps),
                      num_classes=lambda model, cfg: 2),
)
'''

TOY_CONFIG = """
data:
  n: 64
sample:
  steps: 4
  grid_classes: 2
  grid_per_class: 2
"""

TOY_RECIPE = """
family: toyflow
model:
  flavour: tiny
tokenizer:
  kind: pixels
train:
  steps: 8
  batch_size: 2
  lr: 1.0e-2
  warmup_steps: 0
  ema_decay: 0.5
  log_every: 1
  ckpt_every: 4
  keep_ckpts: 5
  sample_every: 4
eval:
  n: 8
  batch_size: 2
  inception_dtype: fp32
  labels: balanced
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toyfamily")
    (root / "toyflow.py").write_text(TOY_FAMILY)
    (root / "toyflow.yaml").write_text(TOY_CONFIG)
    (root / "recipe.yaml").write_text(TOY_RECIPE)
    from metrics import save_stats
    from metrics.inception import FIDInception
    torch.manual_seed(0)
    torch.save(FIDInception().state_dict(), root / "inception.pth")
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((64, 2048))
    save_stats(root / "ref.npz", feats.mean(0), np.cov(feats, rowvar=False))
    return root


def _env(root, **extra):
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{root}", **extra)
    e.pop("TOY_SLOW", None) if "TOY_SLOW" not in extra else None
    return e


def _cmd(nproc, root, *args):
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    return [*launch, str(ROOT / "train.py"), "--config", str(root / "recipe.yaml"), *args]


def _run(cmd, root, **extra):
    p = subprocess.run(cmd, cwd=ROOT, env=_env(root, **extra), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


@pytest.mark.slow
def test_toy_family_trains_resumes_and_evaluates_through_the_engine(toy):
    a, b = toy / "a", toy / "b"
    _run(_cmd(2, toy, "--mode", "pretrain", f"output_dir={a}"), toy)
    assert (a / "samples" / "step_0000004.png").exists()  # the generic preview: a grid of the family's samples

    # kill the 2-process run once its step-4 checkpoint exists (slowed down so that the kill comes mid-run)
    p = subprocess.Popen(_cmd(2, toy, "--mode", "pretrain", f"output_dir={b}"), cwd=ROOT,
                         env=_env(toy, TOY_SLOW="1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + 120
    while not (b / "checkpoints" / "step_0000004.pt").exists():
        assert p.poll() is None, "training ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (b / "checkpoints" / "step_0000008.pt").exists()
    _run(_cmd(2, toy, "--mode", "pretrain", f"output_dir={b}"), toy)
    ma, mb = read_metrics(a), read_metrics(b)
    assert sorted(ma) == sorted(mb) == list(range(1, 9))
    assert [ma[s]["loss"] for s in ma] == [mb[s]["loss"] for s in ma]
    assert len({ma[s]["loss"] for s in ma}) == 8  # the steps really differ (varying rows, fresh draws)

    # eval: the same images and FID with 1 and 2 processes
    ckpt = a / "checkpoints" / "step_0000008.pt"
    common = [f"eval.pretrained_path={ckpt}", f"eval.inception_weights={toy / 'inception.pth'}",
              f"eval.ref_stats={toy / 'ref.npz'}"]
    results = []
    for nproc, out in ((1, toy / "e1"), (2, toy / "e2")):
        _run(_cmd(nproc, toy, "--mode", "eval", f"output_dir={out}", *common, "eval.save_npz=true"), toy)
        (tag,) = (out / "eval").iterdir()
        with np.load(tag / "samples.npz") as z:  # the ADM batch: uint8 [N, H, W, C] in sample order
            images = torch.from_numpy(z["arr_0"]).permute(0, 3, 1, 2)
        import json
        results.append((images, json.loads((tag / "result.json").read_text())))
        assert (out / "samples.png").exists()
    (i1, r1), (i2, r2) = results
    assert i1.shape == (8, 3, 8, 8) and i1.dtype == torch.uint8 and torch.equal(i1, i2)
    assert r1["fid"] == pytest.approx(r2["fid"], rel=1e-6) and np.isfinite(r1["fid"])
    assert len({tuple(x.flatten().tolist()) for x in i1}) == 8  # every sample has its own noise

    # modes follow from what the family provides: no search space, so no search
    p = subprocess.run(_cmd(1, toy, "--mode", "search", f"output_dir={toy / 's'}"), cwd=ROOT, env=_env(toy),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: --mode search is not supported")


LOWER = ("metrics", "tokenizer", "samplers", "models", "datasets", "core")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_layers_point_one_way():
    bad = []
    for pkg in LOWER:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            mods = _imports(f)
            if "engine" in mods:
                bad.append(f"{f.relative_to(ROOT)} imports engine")
            if pkg == "core" and mods & (set(LOWER) - {"core"}):
                bad.append(f"{f.relative_to(ROOT)} (bottom layer) imports {sorted(mods & set(LOWER))}")
    assert not bad, bad


def test_tokenizer_checkpoint_with_missing_keys_is_one_line(tmp_path):
    import train
    vq = tmp_path / "vq"
    assert train.main(["--config", "configs/demo/vq_fmnist.yaml", f"output_dir={vq}", "data.kind=fmnist",
                       "model.flavour=debug", "--mode", "eval"]) == 2  # demo_vq has no sampler: one line, exit 2
    from tokenizer.demo_vq import build_demo_vq
    sd = build_demo_vq("debug").state_dict()
    for k in ("quantize.embed", "decoder.conv_out.weight"):
        sd.pop(k)
    bad = tmp_path / "broken_vq.pt"
    torch.save({"model": sd, "ema": sd, "flavour": "debug", "config": {"model": {"flavour": "debug"}}}, bad)
    nat = tmp_path / "nat"
    assert train.main(["--config", "configs/debug/nat_synthetic.yaml", f"output_dir={nat}", "train.steps=1",
                       "train.ckpt_every=1"]) == 0
    from metrics import save_stats
    from tests.helpers import write_random_fid_weights
    save_stats(tmp_path / "ref.npz", np.zeros(2048), np.eye(2048))
    write_random_fid_weights(tmp_path / "inception.pth")
    p = subprocess.run([sys.executable, "train.py", "--config", "configs/debug/nat_synthetic.yaml", "--mode", "eval",
                        f"output_dir={nat}", "tokenizer.kind=demo_vq", f"tokenizer.ckpt={bad}",
                        f"eval.ref_stats={tmp_path / 'ref.npz'}", f"eval.inception_weights={tmp_path / 'inception.pth'}"],
                       cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert lines[-1].startswith("error: ") and str(bad) in lines[-1]
    assert "missing key" in lines[-1] and "quantize.embed" in lines[-1] and "decoder.conv_out.weight" in lines[-1]
