"""The config contract: every key the code reads is declared, and the config printed is the config that runs.

- Each family's debug recipe runs its modes through train.py (pretrain with the periodic sample grid where the family
  has one, eval, AutoNAT's search) with the config in OmegaConf struct mode: a read of a key that no config file
  declares would end the run with an error line.
- A read of an undeclared key (a base.yaml without one of the engine's keys, a family file without one of the
  family's) is one `error:` line naming the key, the file that read it and the file that should declare it.
- eqar's official per-GPU batch, blr and epochs are translated while the config loads: the printed config, the
  checkpoint's config and the run agree. The batch-split check speaks once, in the same words, for every family.
"""
import dataclasses
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

import train
from engine import runner
from tests.helpers import ROOT, env

NAT, AUTONAT, ENAT = "configs/debug/nat_synthetic.yaml", "configs/debug/autonat_debug.yaml", "configs/debug/enat_debug.yaml"
EQAR, EQTOK, NIT = "configs/debug/eqar_debug.yaml", "configs/debug/eqtok_debug.yaml", "configs/debug/nit_debug.yaml"
VQ = "configs/demo/vq_fmnist.yaml"  # demo_vq has no debug recipe: its demo one at the debug flavour


@pytest.fixture
def struct_runs(monkeypatch):
    """The configs train.py hands to the runner, each checked to be in struct mode."""
    seen, real = [], runner.run

    def spy(cfg, mode, **kw):
        seen.append((mode, OmegaConf.is_struct(cfg)))
        return real(cfg, mode, **kw)
    monkeypatch.setattr(runner, "run", spy)
    return seen


def _main(*args):
    assert train.main([*map(str, args), "device=cpu"]) == 0, args


@pytest.fixture(scope="module")
def world(tmp_path_factory, fid_weights):
    """Fake Fashion-MNIST files, a demo_vq and a column tokenizer trained by train.py, NiT packs and a tiny DC-AE,
    random reference statistics."""
    from tests.nit_helpers import write_eval_assets, write_latent_dataset
    from tests.test_data import write_idx
    root = tmp_path_factory.mktemp("struct")
    rng = np.random.default_rng(0)
    fm = root / "fmnist"
    fm.mkdir()
    for split, n in (("train", 16), ("t10k", 8)):
        write_idx(fm / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(fm / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    _main("--config", VQ, f"output_dir={root / 'vq'}", f"data.path={fm}", "model.flavour=debug", "train.steps=2",
          "train.batch_size=8", "train.ckpt_every=2", "train.sample_every=2")
    _main("--config", EQTOK, f"output_dir={root / 'eqtok'}", "train.sample_every=3")
    shapes = [(2, 2)] * 4 + [(2, 3)] * 2 + [(3, 2)] * 2
    lat_root, meta, _ = write_latent_dataset(root / "nit", shapes, [k % 5 for k in range(len(shapes))], channels=32)
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "pack_dataset.py"), "--data-meta", meta,
                        "--max-seq-len", "32"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    packs = next((root / "nit" / "meta").glob("*LPFHP*.json"))
    nit = write_eval_assets(root / "nit")
    a = rng.normal(size=(2048, 16)) * 0.1
    np.savez(root / "ref.npz", mu=rng.normal(size=2048) * 0.1, sigma=a @ a.T + 1e-3 * np.eye(2048))
    return {"root": root, "fmnist": fm, "vq": root / "vq" / "checkpoints" / "step_0000002.pt",
            "column": root / "eqtok" / "checkpoints" / "step_0000003.pt", "fid": fid_weights,
            "nit": [f"data.data_meta={meta}", f"data.sampler_meta={packs}", f"data.latent_dirs={lat_root}",
                    f"tokenizer.ckpt={nit['dcae']}"]}


SMALL = ["train.steps=2", "train.ckpt_every=2", "train.log_every=1"]


def test_demo_vq_and_eqtok_pretrain_with_preview_in_struct_mode(world):
    """The fixture trained both tokenizers (preview grids included); here only what they wrote is checked."""
    assert (world["root"] / "vq" / "samples" / "step_0000002.png").is_file()
    assert (world["root"] / "eqtok" / "samples" / "step_0000003.png").is_file()
    assert world["vq"].is_file() and world["column"].is_file()


def test_nat_and_autonat_pretrain_eval_search_in_struct_mode(world, tmp_path, struct_runs):
    _main("--config", NAT, f"output_dir={tmp_path / 'nat'}", *SMALL)
    out = tmp_path / "autonat"
    common = ["--config", AUTONAT, f"output_dir={out}", f"tokenizer.ckpt={world['vq']}", "sample.gen_steps=2",
              "sample.strategy=cosine"]
    _main(*common, "--mode", "pretrain", *SMALL, "train.batch_size=8", "train.sample_every=2")
    _main(*common, "--mode", "eval", "eval.metrics=[]", "sample.grid_classes=2", "sample.grid_per_class=2")
    _main(*common, "--mode", "search", f"eval.ref_stats={world['root'] / 'ref.npz'}",
          f"eval.inception_weights={world['fid']}", "eval.inception_dtype=fp32", "search.max_upd=0")
    assert struct_runs == [("pretrain", True), ("pretrain", True), ("eval", True), ("search", True)]
    assert (out / "samples" / "step_0000002.png").is_file() and (out / "samples.png").is_file()
    assert (out / "search_history.csv").is_file()


def test_enat_pretrain_and_eval_in_struct_mode(world, tmp_path, struct_runs):
    out = tmp_path / "enat"
    common = ["--config", ENAT, f"output_dir={out}", f"tokenizer.ckpt={world['vq']}"]
    _main(*common, "--mode", "pretrain", *SMALL, "train.sample_every=2")
    _main(*common, "--mode", "eval", "eval.metrics=[]")
    assert struct_runs == [("pretrain", True), ("eval", True)]
    assert (out / "samples" / "step_0000002.png").is_file() and (out / "samples.png").is_file()


def test_eqar_pretrain_and_eval_in_struct_mode(world, tmp_path, struct_runs):
    out = tmp_path / "eqar"
    common = ["--config", EQAR, f"output_dir={out}", f"tokenizer.ckpt={world['column']}"]
    _main(*common, "--mode", "pretrain", *SMALL, "train.sample_every=2")
    _main(*common, "--mode", "eval")
    assert struct_runs == [("pretrain", True), ("eval", True)]
    assert (out / "samples" / "step_0000002.png").is_file() and len(list(out.glob("ariter*/*.png"))) == 4


def test_nit_pretrain_and_eval_in_struct_mode(world, tmp_path, struct_runs):
    out = tmp_path / "nit"
    common = ["--config", NIT, f"output_dir={out}", *world["nit"]]
    _main(*common, "--mode", "pretrain", *SMALL, "train.sample_every=2")
    _main(*common, "--mode", "eval", f"eval.inception_weights={tmp_path / 'none.pth'}")
    assert struct_runs == [("pretrain", True), ("eval", True)]
    assert (out / "samples" / "step_0000002.png").is_file()


# --------------------------------------------------------------------------------------- undeclared keys
def _error_lines(capsys) -> list[str]:
    return [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]


def test_engine_read_of_an_undeclared_key_names_base_yaml(tmp_path, monkeypatch, capsys):
    """A base.yaml without train.sample_every (read by the runner's checks and the trainer): one line naming the key,
    the reader and the base file, exit 2, no traceback."""
    import engine.config as config
    base = yaml.safe_load(config.BASE.read_text())
    del base["train"]["sample_every"]
    copy = tmp_path / "base.yaml"
    copy.write_text(yaml.safe_dump(base))
    monkeypatch.setattr(config, "BASE", copy)
    assert train.main(["--config", NAT, f"output_dir={tmp_path / 'o'}", "device=cpu", *SMALL]) == 2
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines == [f"error: config key 'train.sample_every' is read by engine/runner.py but declared in no config "
                     f"file (family 'nat'): declare it with its default in {copy}"]
    assert "Traceback" not in err and not (tmp_path / "o" / "checkpoints").exists()


def test_family_read_of_an_undeclared_key_names_the_family_file(tmp_path, monkeypatch, capsys):
    """A family file without data.synthetic_vocab (read by the family's data set): the family file is named."""
    import models.nat.family as nat
    fam = yaml.safe_load((ROOT / nat.FAMILY.config).read_text())
    del fam["data"]["synthetic_vocab"]
    copy = tmp_path / "nat.yaml"
    copy.write_text(yaml.safe_dump(fam))
    monkeypatch.setattr(nat, "FAMILY", dataclasses.replace(nat.FAMILY, config=str(copy)))
    recipe = yaml.safe_load((ROOT / NAT).read_text())
    del recipe["data"]["synthetic_vocab"]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert train.main(["--config", str(tmp_path / "recipe.yaml"), f"output_dir={tmp_path / 'o'}", "device=cpu",
                       *SMALL]) == 2
    assert _error_lines(capsys) == [
        f"error: config key 'data.synthetic_vocab' is read by models/token_family.py but declared in no config file "
        f"(family 'nat'): declare it with its default in {copy}"]


def test_search_keys_belong_to_families_with_a_search_space():
    """configs/base.yaml declares the search loop's keys; a family without --mode search has none of them (a
    search key given to it would be accepted and never read)."""
    from engine.config import ConfigError, load_config
    assert load_config(AUTONAT).search.momentum == 0.5
    enat = load_config(ENAT)
    assert "search" not in enat
    with pytest.raises(ConfigError, match="unknown config key 'search' in command line .family 'enat'.: family 'enat' has no --mode search"):
        load_config(ENAT, ["search.max_upd=3"])


# ------------------------------------------------------------------------------- the config is final when printed
def _printed_config(log: str) -> dict:
    """The YAML block of the `config:` record of a run's log.txt (up to the next timestamped record)."""
    text = log.split("| config:\n", 1)[1]
    record = re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \| ", text, flags=re.M)
    return yaml.safe_load(text[:record.start()] if record else text)


def test_eqar_official_schedule_is_in_the_printed_and_checkpointed_config(world, tmp_path):
    """--batch_size (per process) x processes x grad_accum, --blr -> lr, --epochs / --warmup_epochs -> steps over
    the training set (8 synthetic images): printed at start as they run, stored in the checkpoint unchanged."""
    out = tmp_path / "o"
    p = subprocess.run([sys.executable, "train.py", "--config", EQAR, "--batch_size", "1", "--blr", "1e-4",
                        "--epochs", "1", "--warmup_epochs", "0.5", "train.grad_accum=2", "data.synthetic_n=8",
                        f"tokenizer.ckpt={world['column']}", f"output_dir={out}", "train.ckpt_every=1000",
                        "device=cpu"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    printed = _printed_config((out / "log.txt").read_text())
    t = printed["train"]
    # batch 1 x 1 process x 2 micro-batches; lr = blr x 2 / 256; 8 images // 2 = 4 steps per epoch
    assert (t["batch_size"], t["steps"], t["warmup_steps"]) == (2, 4, 2)
    assert t["lr"] == pytest.approx(1e-4 * 2 / 256)
    state = torch.load(out / "checkpoints" / "step_0000004.pt", weights_only=True)
    assert state["config"] == printed
    logs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3, 4] and math.isfinite(logs[-1]["loss"])
    assert logs[0]["lr"] == pytest.approx(1e-4 * 2 / 256 * 1 / 2)  # warm-up 2 steps: step 1 at half the LR


def test_eqar_epochs_list_the_image_folder_once(world, tmp_path, monkeypatch):
    """--epochs counts the training images while the config loads; the trainer gets that data set instead of
    listing the folder again."""
    from PIL import Image

    import datasets.column_images as ci
    folder = tmp_path / "images"
    for c in range(2):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((16, 16, 3), 60 + 100 * c + i, np.uint8)).save(folder / f"class{c}" / f"{i}.png")
    calls, real = [], ci.list_image_folder
    monkeypatch.setattr(ci, "list_image_folder", lambda root: calls.append(root) or real(root))
    out = tmp_path / "o"
    assert train.main(["--config", EQAR, "--epochs", "1", "--batch_size", "2", "data.kind=imagefolder",
                       f"data.path={folder}", f"tokenizer.ckpt={world['column']}", f"output_dir={out}",
                       "device=cpu"]) == 0
    assert calls == [str(folder)]
    assert (out / "checkpoints" / "step_0000002.pt").exists()  # 4 images, 2 per step: one epoch is 2 steps


@pytest.mark.parametrize("recipe", [NAT, AUTONAT, ENAT, EQAR, EQTOK, NIT, VQ])
def test_batch_split_is_checked_once_for_every_family(recipe, tmp_path, capsys):
    assert train.main(["--config", recipe, "--mode", "pretrain", f"output_dir={tmp_path / 'o'}", "device=cpu",
                       "train.batch_size=3", "train.grad_accum=2"]) == 2
    (line,) = _error_lines(capsys)
    assert re.fullmatch(r"error: train\.batch_size( \(--[\w-]+\))? 3 \(global\) is not divisible by 1 process\(es\) x "
                        r"train\.grad_accum 2", line), line
