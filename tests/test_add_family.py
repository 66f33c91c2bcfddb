"""README.md's "Adding a family" is the whole contract: its field lists are the fields of Family, Training and
Sampling, its key list is the keys of configs/base.yaml (every key the engine reads), and a family written with only
the fields it names trains (with the generic sample-grid preview) and evaluates through train.py, per-row and with a
replayed official stream."""
import ast
import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from models.family import Family, Sampling, Training
from tests.helpers import ROOT


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("### Adding a family")
    end = min(i for i in (text.find("\n## ", start), text.find("\n### ", start + 1)) if i > 0)
    return text[start:end]


def _block(section: str, head: str) -> list[str]:
    """The '- ' lines of the list that follows the line starting with `head`."""
    lines = section.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(head))
    out = []
    for line in lines[i + 1:]:
        if not line.startswith("- "):
            break
        out.append(line)
    return out


def readme_fields(section: str) -> dict[str, list[str]]:
    return {name: [re.match(r"- `(\w+)`:", line).group(1) for line in _block(section, f"Fields of `{name}`")]
            for name in ("Family", "Training", "Sampling")}


def readme_keys(section: str) -> list[str]:
    keys = []
    for line in _block(section, "Config keys the engine reads"):
        head, tail = line[2:].split(": ", 1)
        prefix = "" if head == "top level" else re.match(r"`(\w+)`", head).group(1) + "."
        keys += [prefix + k for k in re.findall(r"`([\w.]+)`", tail.split(" (")[0])]
    return keys


def base_keys(node: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        out += base_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


def test_readme_lists_every_field_and_engine_key():
    section = readme_section()
    fields = readme_fields(section)
    for name, cls in (("Family", Family), ("Training", Training), ("Sampling", Sampling)):
        assert fields[name] == [f.name for f in dataclasses.fields(cls)], name
    keys = readme_keys(section)
    assert keys == base_keys(yaml.safe_load((ROOT / "configs/base.yaml").read_text()))
    assert len(keys) == len(set(keys))


# A sixth family written from the README section: 3x8x8 pixel images of two classes (dark, bright), a one-layer
# denoiser trained by a toy regression loss, sampled by a few denoising steps from noise.
MODULE = '''
"""Family `tinypix`: a one-layer pixel-space denoiser of two classes of 3x8x8 images."""
import os
from dataclasses import dataclass

import torch
from torch import nn

from models.family import Family, Sampling

SHAPE = (3, 8, 8)


class Denoiser(nn.Module):
    def __init__(self, classes=2):
        super().__init__()
        self.null_label = classes
        self.embed = nn.Embedding(classes, SHAPE[0] * SHAPE[1] * SHAPE[2])
        self.mix = nn.Parameter(torch.zeros(()))

    def forward(self, x, y):
        return torch.lerp(self.embed(y).view(-1, *SHAPE), x, torch.sigmoid(self.mix))


class Images:
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.label = torch.arange(n) % 2
        self.image = (self.label.float() - 0.5)[:, None, None, None] + 0.1 * torch.randn((n, *SHAPE), generator=g)


def dataset(cfg, split):
    return Images(int(cfg.data.n))


def batches(ds, cfg, step, rank, world):
    g = torch.Generator().manual_seed(int(cfg.seed) * 1000003 + step * 1009 + rank)
    idx = torch.randint(len(ds.label), (int(cfg.train.batch_size) // world,), generator=g)
    return [{"image": ds.image[idx], "label": ds.label[idx]}]


def loss(model, batch, ctx):
    x = batch["image"]
    value = ((model(x + torch.randn_like(x), batch["label"]) - x) ** 2).mean()
    return value, {"loss": value.item()}


@dataclass(frozen=True)
class Settings:
    steps: int
    stream: object = None  # sample.rng=official: one generator for the whole run, which also draws the labels


def settings(cfg, model):
    official = str(cfg.sample.rng) == "official"
    return Settings(int(cfg.sample.steps), torch.Generator().manual_seed(int(cfg.seed)) if official else None)


def denoise(model, labels, x, steps):
    for _ in range(steps):
        x = model(x, labels)
    return x.clamp(-1, 1)


def sample(model, labels, generators, settings, size=None):
    x = torch.stack([torch.randn(SHAPE, generator=g) for g in generators]).to(labels.device)
    return denoise(model, labels, x, settings.steps)


def replay(model, labels, settings, size=None):
    labels = torch.randint(2, labels.shape, generator=settings.stream).to(labels.device)
    x = torch.randn((labels.shape[0], *SHAPE), generator=settings.stream).to(labels.device)
    return denoise(model, labels, x, settings.steps), labels


FAMILY = Family(
    name="tinypix",
    flavours={"tiny": Denoiser},
    config=os.path.join(os.path.dirname(os.path.abspath(__file__)), "tinypix.yaml"),
    dataset=dataset,
    batches=batches,
    loss=loss,
    sampling=Sampling(sample=sample, settings=settings, replays=lambda s: s.stream is not None, replay=replay,
                      num_classes=lambda model, cfg: 2),
)
'''

CONFIG = """
data:
  n: 16
sample:
  steps: 2
  rng: per_row
  grid_classes: 2
  grid_per_class: 2
"""

RECIPE = """
family: tinypix
model:
  flavour: tiny
tokenizer:
  kind: pixels
train:
  steps: 6
  batch_size: 4
  lr: 0.1
  warmup_steps: 0
  ema_decay: 0.5
  log_every: 1
  ckpt_every: 3
  sample_every: 3
eval:
  n: 6
  batch_size: 4
  metrics: []
  save_npz: true
  save_png: -1
"""


def _field_names_used(source: str) -> dict[str, set[str]]:
    used = {"Family": set(), "Training": set(), "Sampling": set()}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in used:
            used[node.func.id] |= {k.arg for k in node.keywords}
    return used


def _train_py(root, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{root}")
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(root / "recipe.yaml"), *args],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _eval_outputs(out):
    (tag,) = (out / "eval").iterdir()
    with np.load(tag / "samples.npz") as z:
        return z["arr_0"], z["arr_1"], json.loads((tag / "result.json").read_text()), tag


def test_a_family_built_from_the_readme_trains_and_evaluates(tmp_path):
    fields = readme_fields(readme_section())
    for cls, names in _field_names_used(MODULE).items():
        assert names <= set(fields[cls]), (cls, names - set(fields[cls]))
    (tmp_path / "tinypix.py").write_text(MODULE)
    (tmp_path / "tinypix.yaml").write_text(CONFIG)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    run = tmp_path / "run"

    _train_py(tmp_path, "--mode", "pretrain", f"output_dir={run}")
    ckpt = run / "checkpoints" / "step_0000006.pt"
    assert ckpt.exists()
    assert (run / "samples" / "step_0000003.png").exists()  # the generic preview: a grid of `sample` outputs

    _train_py(tmp_path, "--mode", "eval", f"output_dir={tmp_path / 'e'}", f"eval.pretrained_path={ckpt}")
    images, labels, result, tag = _eval_outputs(tmp_path / "e")
    assert images.shape == (6, 8, 8, 3) and result["n"] == 6
    assert labels.tolist() == [0, 1, 0, 1, 0, 1]  # eval.labels balanced: the engine's labels
    assert len(list((tag / "png").glob("*.png"))) == 6
    bright = images.reshape(6, -1).mean(1)
    assert (bright[1::2] > bright[0::2]).all()  # the trained model tells its classes apart

    # the replay path: the family's stream draws the labels (batches in order, one process)
    _train_py(tmp_path, "--mode", "eval", f"output_dir={tmp_path / 'o'}", f"eval.pretrained_path={ckpt}",
              "sample.rng=official", "seed=3")
    _, labels, _, _ = _eval_outputs(tmp_path / "o")
    g = torch.Generator().manual_seed(3)
    want = []
    for rows in (4, 2):
        want += torch.randint(2, (rows,), generator=g).tolist()
        torch.randn((rows, 3, 8, 8), generator=g)
    assert labels.tolist() == want
