"""ENAT end to end on the debug recipe: the README eval command (released-weights container, reuse sampling, FID),
2-process DDP pretraining with reuse training, then eval of the trained checkpoint with reuse on."""
import json
import math

import numpy as np
import pytest
import torch

import train
from engine.config import load_config
from models import build_model
from tests.helpers import read_metrics, run, torchrun_cmd, write_random_fid_weights
from tests.test_enat_recipes import readme_args

DEBUG = "configs/debug/enat_debug.yaml"
# the README's values that are too big for a CPU test -> small ones (paths are filled in per test)
SMALL = {("--eval_n", "50000"): "4", ("--enc_dec", "22"): "3", ("--embed_dim", "1024"): "32",
         ("--num_heads", "16"): "2", ("--test_bsz", "125"): "2", ("--input_res", "256"): "16"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Random debug ENAT saved like the released nnet_ema.pth (plain EMA state dict), a random debug VQ, a
    random-weight FID Inception and made-up reference statistics."""
    from tokenizer.demo_vq import build_demo_vq
    d = tmp_path_factory.mktemp("enat_assets")
    torch.manual_seed(0)
    model, _ = build_model(load_config(DEBUG))
    with torch.no_grad():  # adaLN-Zero starts every block as the identity: random weights exercise every path
        for p in model.parameters():
            p.normal_(0, 0.3)
    torch.save(model.state_dict(), d / "nnet_ema.pth")
    vq = build_demo_vq("debug")
    torch.save({"model": vq.state_dict(), "family": "demo_vq", "config": {"model": {"flavour": "debug"}}},
               d / "tokenizer.pt")
    write_random_fid_weights(d / "inception.pth", seed=0)  # pytorch-fid .pth layout, no wheel needed
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2048, 16)) * 0.1
    np.savez(d / "ref_stats.npz", mu=rng.normal(size=2048) * 0.1, sigma=a @ a.T + 1e-3 * np.eye(2048))
    return d


def local(assets):
    return [f"tokenizer.ckpt={assets / 'tokenizer.pt'}", f"eval.inception_weights={assets / 'inception.pth'}",
            "device=cpu"]


def small_readme_eval(assets, out):
    argv = readme_args("eval256", DEBUG)
    for i in range(1, len(argv)):
        if (argv[i - 1], argv[i]) in SMALL:
            argv[i] = SMALL[(argv[i - 1], argv[i])]
    paths = {"assets/nnet_ema.pth": assets / "nnet_ema.pth", "./in256_eval": out,
             "assets/fid_stats/fid_stats_imagenet256_guided_diffusion.npz": assets / "ref_stats.npz"}
    return [str(paths.get(a, a)) for a in argv]


def tokens_of(cfg, reuse: bool, n: int):
    """The eval's generator path for samples 0..n-1 (balanced labels, seed cfg.seed)."""
    from engine.generate import build_generator, generate
    cfg.sample.reuse = reuse
    model, fam = build_generator(cfg, torch.device("cpu"))
    labels = torch.arange(n) % model.null_label
    return generate(model, fam, fam.sampling.settings(cfg, model), labels, range(n), int(cfg.seed))[0]


def test_readme_eval_command_runs_on_debug_recipe(assets, tmp_path):
    argv = small_readme_eval(assets, tmp_path)
    assert "--mode" not in argv and argv[argv.index("--enc_dec") + 1:argv.index("--enc_dec") + 3] == ["3", "2"]
    assert train.main(argv + local(assets)) == 0
    assert (tmp_path / "eval").is_dir(), "the README eval command (--pretrained_path, no --mode) did not evaluate"
    (tag,) = (tmp_path / "eval").iterdir()
    res = json.loads((tag / "result.json").read_text())
    assert res["n"] == 4 and math.isfinite(res["fid"]) and res["fid"] > 0
    assert (tmp_path / "samples.png").exists()
    # the eval sampled with the recipe's reuse setting: its images are the reuse samples, not the plain ones
    from engine.checkpoint import load_file
    from core.images import to_uint8
    from engine.generate import build_tokenizer, decode
    images = torch.cat([load_file(tag / f"unit_{u:06d}.pt")["images"] for u in range(2)])
    cfg = load_config(DEBUG, [f"eval.pretrained_path={assets / 'nnet_ema.pth'}", *local(assets)])
    tok = build_tokenizer(cfg, torch.device("cpu"))
    with_reuse, without = tokens_of(cfg, True, 4), tokens_of(cfg, False, 4)
    assert torch.equal(to_uint8(decode(tok, with_reuse)), images)
    assert not torch.equal(with_reuse, without)


def test_trainer_feeds_reuse_training_from_the_ema(monkeypatch, tmp_path):
    from engine import trainer
    calls, make_ema = [], trainer.make_ema

    def watched_ema(model):
        ema = make_ema(model)
        ema.register_forward_hook(lambda m, args, kwargs, out: calls.append((kwargs.get("return_state"), m.training)),
                                  with_kwargs=True)
        return ema

    monkeypatch.setattr(trainer, "make_ema", watched_ema)
    assert train.main(["--config", DEBUG, f"output_dir={tmp_path}", "train.steps=3", "train.ckpt_every=3",
                       "loss.reuse_prob=1.0", "device=cpu"]) == 0
    assert calls == [(True, False)] * 3  # one eval-mode EMA pass per reuse batch gives the previous-step state
    assert [r["reuse"] for r in read_metrics(tmp_path).values()] == [1.0] * 3


@pytest.mark.slow
def test_two_process_pretrain_then_eval_with_reuse(assets, tmp_path):
    run(torchrun_cmd(2, "--config", DEBUG, "--mode", "pretrain", f"output_dir={tmp_path}", "train.steps=6",
                     "train.ckpt_every=6", "train.batch_size=16", "device=cpu"))
    m = read_metrics(tmp_path)
    assert sorted(m) == list(range(1, 7)) and all(math.isfinite(r["loss"]) for r in m.values())
    # each rank flips its own reuse coin: DDP must cope with prev_proj used on one rank only (find_unused)
    assert {r["reuse"] for r in m.values()} <= {0.0, 0.5, 1.0} and any(r["reuse"] > 0 for r in m.values())
    from engine.checkpoint import load_file
    state = load_file(tmp_path / "checkpoints" / "step_0000006.pt")
    assert state["family"] == "enat" and state["config"]["sample"]["reuse"] is True
    assert any(not torch.equal(state["ema"][k], v) for k, v in state["model"].items())
    assert train.main(["--config", DEBUG, "--mode", "eval", f"output_dir={tmp_path}",
                       f"eval.ref_stats={assets / 'ref_stats.npz'}", *local(assets)]) == 0
    (tag,) = (tmp_path / "eval").iterdir()
    res = json.loads((tag / "result.json").read_text())
    assert res["n"] == 4 and math.isfinite(res["fid"])
