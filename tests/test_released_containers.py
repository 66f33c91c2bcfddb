"""Released containers are read without running code of the file: a Lightning 1.4 `tokenizer.ckpt` whose
`callbacks` are keyed by the callback class (and an argparse.Namespace, OmegaConf-like hyper-parameters) loads, its
foreign classes as inert placeholders, logged; a class whose unpickling would write a file never runs (even when its
module is importable), and where torch refuses a global even as a placeholder the error is one line naming the file
and the class. The weights-loading bench runs in its tiny mode."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from core.loading import CheckpointError
from tests.helpers import ROOT, env

# the code that wrote the file: defined in a throwaway module, never importable by the process that loads it
WRITER = '''
import os


class ModelCheckpoint:  # Lightning 1.4 keys callbacks state by this class
    pass


class DictConfig:  # pickles with __getstate__/__setstate__, as OmegaConf nodes do
    def __init__(self, content):
        self._content = content

    def __getstate__(self):
        return {"_content": self._content}

    def __setstate__(self, state):
        open(os.environ["MARKER"] + ".setstate", "w").write("ran")
        self.__dict__.update(state)


def _write(path):
    open(path, "w").write("ran")


class Trap:  # unpickling it would call _write(marker)
    def __reduce__(self):
        return (_write, (os.environ["MARKER"] + ".reduce",))


class Shell:  # unpickling it would run a shell command
    def __reduce__(self):
        return (os.system, ("touch " + os.environ["MARKER"] + ".system",))
'''

BUILD = '''
import argparse, os, sys
import torch
import lightning_like as L
from tokenizer.column import build_column_autoencoder, ema_buffer_name
torch.manual_seed(0)
model = build_column_autoencoder("debug")
sd = {k: v.clone() for k, v in model.state_dict().items()}
for m in ("encoder", "decoder", "semantic_decoder", "quant_layer", "post_quant_layer"):
    for n, p in getattr(model, m).named_parameters():
        sd[ema_buffer_name(m, n)] = p.detach() + 1.0  # EMA differs from live: which one is used shows
    sd[f"ema_{m}.decay"] = torch.tensor(0.9999)
    sd[f"ema_{m}.num_updates"] = torch.tensor(5, dtype=torch.int32)
ckpt = {"epoch": 3, "global_step": 7, "pytorch-lightning_version": "1.4.2", "state_dict": sd,
        "callbacks": {L.ModelCheckpoint: {"monitor": None, "best_model_score": None, "dirpath": "/logs"}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]}], "lr_schedulers": [],
        "hyper_parameters": {"ddconfig": L.DictConfig({"ch": 128}), "args": argparse.Namespace(lr=1e-4)}}
if sys.argv[2] == "trap":
    ckpt["hyper_parameters"]["trap"] = L.Trap()
if sys.argv[2] == "shell":
    ckpt["hyper_parameters"]["shell"] = L.Shell()
torch.save(ckpt, sys.argv[1])
'''


def _container(tmp_path, kind="lightning") -> tuple[Path, Path]:
    """(file, marker prefix): a Lightning-1.4-style tokenizer.ckpt written by a process that can import the
    throwaway module `lightning_like`; this test process cannot."""
    mod = tmp_path / "writer_code"
    mod.mkdir(exist_ok=True)
    (mod / "lightning_like.py").write_text(WRITER)
    path, marker = tmp_path / f"{kind}_tokenizer.ckpt", tmp_path / "MARKER"
    e = env()
    e.update(PYTHONPATH=f"{mod}:{ROOT}", MARKER=str(marker))
    subprocess.run([sys.executable, "-c", BUILD, str(path), kind], cwd=ROOT, env=e, check=True, timeout=120)
    assert "lightning_like" not in sys.modules
    return path, marker


def _markers(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.glob("MARKER*"))


def test_lightning_container_through_train_py(tmp_path):
    """tokenizer.ckpt= a Lightning 1.4 file: an eqar debug training step encodes with it (its EMA weights)."""
    path, _ = _container(tmp_path)
    with pytest.raises(Exception, match="lightning_like.ModelCheckpoint"):  # what a plain weights-only load does
        torch.load(path, weights_only=True)
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "train.py", "--config", "configs/debug/eqar_debug.yaml", "--mode", "pretrain",
                        f"tokenizer.ckpt={path}", f"output_dir={out}", "train.steps=1", "train.ckpt_every=1"],
                       cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "read as inert placeholders" in log and "lightning_like.ModelCheckpoint" in log \
        and "lightning_like.DictConfig" in log, log[-2000:]


def test_lightning_container_tokenizer_loader_uses_ema(tmp_path):
    from engine.config import load_config
    from engine.generate import build_tokenizer
    from tokenizer.column import build_column_autoencoder
    path, marker = _container(tmp_path)
    tok = build_tokenizer(load_config("configs/debug/eqar_debug.yaml", [f"tokenizer.ckpt={path}"]), "cpu")
    torch.manual_seed(0)
    live = build_column_autoencoder("debug").state_dict()
    got = tok.model.state_dict()
    assert all(torch.equal(got[k], v + 1.0) for k, v in live.items() if v.is_floating_point())
    from core.released import Placeholder, read_released
    obj = read_released(path)
    (cls,) = obj["callbacks"]
    assert issubclass(cls, Placeholder) and cls.foreign == "lightning_like.ModelCheckpoint"
    assert obj["callbacks"][cls]["dirpath"] == "/logs" and obj["hyper_parameters"]["args"].lr == 1e-4
    node = obj["hyper_parameters"]["ddconfig"]
    assert node.foreign == "lightning_like.DictConfig" and node.state == {"_content": {"ch": 128}}
    assert _markers(tmp_path) == []


def test_foreign_code_never_runs_even_when_importable(tmp_path, monkeypatch):
    """The writer's module is importable here: still nothing of it is imported or run."""
    path, marker = _container(tmp_path, "trap")
    monkeypatch.syspath_prepend(str(tmp_path / "writer_code"))
    monkeypatch.setenv("MARKER", str(marker))
    from tokenizer.column_ckpt import load_column_any
    tok = load_column_any(path)
    assert tok.model.embed_dim > 0
    from core.released import read_released
    trap = read_released(path)["hyper_parameters"]["trap"]
    assert trap.foreign == "lightning_like._write" and trap.args == (str(marker) + ".reduce",)
    assert "lightning_like" not in sys.modules and _markers(tmp_path) == []


def test_refused_global_is_one_line_naming_file_and_class(tmp_path):
    path, marker = _container(tmp_path, "shell")
    from tokenizer.column_ckpt import load_column_any
    with pytest.raises(CheckpointError) as e:
        load_column_any(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: cannot be read") and "posix.system" in msg and "\n" not in msg, msg
    assert "weights_only=False" not in msg and "set to `False`" not in msg
    p = subprocess.run([sys.executable, "train.py", "--config", "configs/debug/eqar_debug.yaml", "--mode", "pretrain",
                        f"tokenizer.ckpt={path}", f"output_dir={tmp_path / 'run'}", "train.steps=1"],
                       cwd=ROOT, env={**env(), "MARKER": str(marker)}, capture_output=True, text=True, timeout=300)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert last.startswith("error: ") and str(path) in last and "posix.system" in last, last
    assert _markers(tmp_path) == []


def test_placeholders_where_weights_belong_name_the_class(tmp_path):
    """A generator container whose weights are an object of a foreign class: the error names that class."""
    mod = tmp_path / "writer_code"
    mod.mkdir()
    (mod / "wrapped.py").write_text("class Weights:\n    def __init__(self, t):\n        self.t = t\n")
    path = tmp_path / "gen.pth"
    code = f"import torch, wrapped; torch.save({{'model_ema': wrapped.Weights(torch.zeros(2))}}, {str(path)!r})"
    subprocess.run([sys.executable, "-c", code], env={**env(), "PYTHONPATH": str(mod)}, check=True, timeout=60)
    from engine.config import load_config
    from engine.generate import load_weights
    from models import build_model
    cfg = load_config("configs/debug/eqar_debug.yaml", [f"eval.pretrained_path={path}"])
    model, fam = build_model(cfg)
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects \(wrapped.Weights\) where the weights"):
        load_weights(model, cfg, fam.name)


def test_bench_load_tiny(tmp_path):
    out = tmp_path / "rows.json"
    p = subprocess.run([sys.executable, "scripts/bench_load.py", "--tiny", "--json", str(out)], cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["case"], r["variant"]) for r in rows] == [("nit_xl", "whole"), ("nit_xl", "mapped"),
                                                         ("eqar_large", "whole"), ("eqar_large", "mapped")]
    assert all(r["peak_rss"] > 0 and r["weights"] > 0 for r in rows)
    assert p.stdout.count("both loads give the same weights: True") == 2, p.stdout


def _mappings_of(path: Path) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] == str(path):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((lo, hi))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps (Linux)")
def test_sampling_weights_stay_mapped_from_the_file(tmp_path):
    """An official {'model', 'model_ema', ...} container loaded for sampling: the model's tensors are the file's
    EMA tensors, memory-mapped (no copy in memory; the live copy is never read); a training init copies them."""
    import argparse
    from engine.config import load_config
    from engine.generate import load_weights
    from models import build_model
    cfg = load_config("configs/debug/eqar_debug.yaml")
    torch.manual_seed(0)
    model, fam = build_model(cfg)
    ema = {k: v + 1.0 for k, v in model.state_dict().items()}
    path = tmp_path / "places_debug.ckpt"
    torch.save({"model": model.state_dict(), "model_ema": ema, "epoch": 1, "args": argparse.Namespace(model="debug")},
               path)
    cfg = load_config("configs/debug/eqar_debug.yaml", [f"eval.pretrained_path={path}"])
    model, fam = build_model(cfg)
    load_weights(model, cfg, fam.name)
    ranges = _mappings_of(path)
    assert ranges
    for k, v in model.state_dict().items():
        assert torch.equal(v, ema[k]), k
        assert any(lo <= v.data_ptr() < hi for lo, hi in ranges), f"{k} was copied out of the mapped file"
    trained, _ = build_model(cfg)
    load_weights(trained, cfg, fam.name, mapped=False)
    assert all(torch.equal(v, ema[k]) for k, v in trained.state_dict().items())
    assert not any(lo <= v.data_ptr() < hi for v in trained.state_dict().values() for lo, hi in _mappings_of(path))
