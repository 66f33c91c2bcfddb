"""The AutoNAT README commands after `--config configs/AutoNAT_L.yaml`: flag mapping, released-weight loading, and
the eval and search commands end to end on the debug recipe (random debug UViT, random debug VQ, seeded random
FID-Inception weights in the pytorch-fid .pth layout, so no FID wheel or download is needed)."""
import csv
import json
import math
import shlex
import shutil

import numpy as np
import pytest
import torch

import train
from tests.helpers import parse_train_args, run, torchrun_cmd
from engine.config import load_config
from engine.generate import load_weights
from engine.search import search_eval_n
from models.nat.family import initial_strategy
from models import build_model
from samplers.strategy import Strategy

# The three commands of the official README (LeapLabTHU/ImprovedNAT), verbatim.
README = {
    "eval": r"""torchrun --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=localhost:0 train.py \
--config configs/AutoNAT_L.yaml \
--gen_steps 8 \
--searched_strategy configs/AutoNAT_L-T8_strategy.yaml \
--pretrained_path assets/nnet_ema.pth \
--mode eval \
--eval_n 50000""",
    "pretrain": r"""torchrun --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=localhost:0 train.py \
--config configs/AutoNAT_L.yaml \
--mode pretrain \
--beta_alpha_beta 12 3""",
    "search": r"""torchrun --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=localhost:0 train.py \
--config configs/AutoNAT_L.yaml \
--gen_steps 8 \
--pretrained_path assets/nnet_ema.pth \
--mode search \
--eval_n 50000""",
}
DEBUG = "configs/debug/autonat_debug.yaml"


def readme_args(mode: str) -> list[str]:
    words = shlex.split(README[mode].replace("\\\n", " "))
    return words[words.index("train.py") + 1:]


parsed = parse_train_args


def test_readme_commands_map_onto_the_recipe(monkeypatch):
    cfg, mode = parsed(monkeypatch, readme_args("eval"))
    assert mode == "eval" and cfg.family == "nat" and cfg.model.flavour == "AutoNAT_L"
    assert (cfg.sample.gen_steps, cfg.sample.strategy) == (8, "configs/AutoNAT_L-T8_strategy.yaml")
    assert (cfg.eval.pretrained_path, cfg.eval.n, cfg.eval.batch_size) == ("assets/nnet_ema.pth", 50000, 125)
    assert cfg.eval.ref_stats == "assets/fid_stats/fid_stats_imagenet256_guided_diffusion.npz"
    assert (cfg.eval.fid_mode, cfg.eval.labels) == ("pytorch-fid", "random")
    assert (cfg.tokenizer.kind, cfg.tokenizer.ckpt) == ("vqgan_mage", "assets/vqgan_jax_strongaug.ckpt")
    assert Strategy.from_yaml(cfg.sample.strategy, gen_steps=cfg.sample.gen_steps).steps == 8
    with torch.device("meta"):
        model, _ = build_model(cfg)
    assert (model.seq_len, model.codebook_size, model.null_label) == (256, 1024, 1000)

    cfg, mode = parsed(monkeypatch, readme_args("pretrain"))
    t = cfg.train
    assert mode == "pretrain" and list(cfg.loss.beta_alpha_beta) == [12, 3]
    assert (cfg.data.kind, cfg.data.path, cfg.data.num_classes) == (
        "tokens", "assets/imagenet256_vq_features/train.npy", 1000)
    assert (t.steps, t.batch_size, t.lr, t.warmup_steps, t.weight_decay, list(t.betas)) == (
        500000, 2048, 4e-4, 5000, 0.03, [0.99, 0.99])
    assert (t.ema_decay, t.grad_clip, t.precision) == (0.9999, 0.0, "auto")
    assert (cfg.loss.label_drop, cfg.loss.label_smoothing) == (0.15, 0.1) and "per_sample_ratio" not in cfg.loss

    cfg, mode = parsed(monkeypatch, readme_args("search"))
    assert mode == "search" and cfg.eval.pretrained_path == "assets/nnet_ema.pth"
    assert search_eval_n(cfg) == 50000  # --eval_n drives the search's FID size, as in the official code
    s = cfg.search
    assert (s.max_upd, s.lr_ratio, s.lr_other, s.fd_step_ratio, s.fd_step_other, s.momentum) == (
        100, 1e-3, 0.1, 0.01, 0.1, 0.5)
    init = initial_strategy(cfg)  # the official search starts from the MaskGIT-like point, not the released one
    assert init.source == "maskgit_init(8)" and len(init.to_vector()) == 30
    np.testing.assert_allclose(init.ratios, np.cos(np.linspace(0, math.pi / 2, 9))[1:-1])
    assert init.cfg == tuple(np.linspace(0, 1, 9)[1:])


def test_search_init_choices():
    auto = load_config(DEBUG, ["search.init=auto"])
    assert initial_strategy(auto).source == "configs/AutoNAT_L-T8_strategy.yaml"
    cos = load_config(DEBUG, ["search.init=auto", "sample.strategy=cosine"])
    assert initial_strategy(cos).source == "maskgit_init(8)"
    assert initial_strategy(load_config(DEBUG, ["search.init=sample", "sample.strategy=cosine"])).source.startswith(
        "enat_cosine(8")
    with pytest.raises(ValueError, match="strategy has 8 steps but gen_steps is 4"):
        initial_strategy(load_config(DEBUG, ["search.init=configs/AutoNAT_L-T8_strategy.yaml",
                                             "sample.gen_steps=4"]))


# ------------------------------------------------------------------------------------------- debug end to end
@pytest.fixture(scope="module")
def assets(tmp_path_factory, fid_weights):
    """Random debug generator (released layout: plain EMA state dict), random debug VQ, random FID-Inception
    weights, reference statistics."""
    from tokenizer.demo_vq import build_demo_vq
    d = tmp_path_factory.mktemp("autonat_assets")
    torch.manual_seed(0)
    cfg = load_config(DEBUG)
    model, _ = build_model(cfg)
    sd = model.state_dict()
    torch.save(sd, d / "nnet_ema.pth")
    torch.save({f"module.{k}": v for k, v in sd.items()}, d / "nnet_ema_ddp.pth")
    vq = build_demo_vq("debug")
    torch.save({"model": vq.state_dict(), "family": "demo_vq", "config": {"model": {"flavour": "debug"}}},
               d / "tokenizer.pt")
    shutil.copyfile(fid_weights, d / "inception.pth")  # tests/conftest.py: seeded random, pytorch-fid layout
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2048, 16)) * 0.1
    np.savez(d / "ref_stats.npz", mu=rng.normal(size=2048) * 0.1, sigma=a @ a.T + 1e-3 * np.eye(2048))
    return d, sd


def debug_args(assets, out):
    d, _ = assets
    return [f"tokenizer.ckpt={d / 'tokenizer.pt'}", f"eval.ref_stats={d / 'ref_stats.npz'}", f"output_dir={out}",
            f"eval.inception_weights={d / 'inception.pth'}", "device=cpu"]


def test_released_state_dict_loads_strictly(assets):
    d, sd = assets
    for name in ("nnet_ema.pth", "nnet_ema_ddp.pth"):
        cfg = load_config(DEBUG, [f"eval.pretrained_path={d / name}"])
        model, fam = build_model(cfg)
        load_weights(model, cfg, fam.name)
        assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    bad = dict(sd)
    bad.pop("mid_block.mlp.fc1.bias")
    torch.save(bad, d / "broken.pth")
    cfg = load_config(DEBUG, [f"eval.pretrained_path={d / 'broken.pth'}"])
    with pytest.raises(ValueError, match=r"broken\.pth.*missing key.*mid_block\.mlp\.fc1\.bias"):
        load_weights(build_model(cfg)[0], cfg, "nat")


def _swap_config(argv):
    i = argv.index("configs/AutoNAT_L.yaml")
    return argv[:i] + [DEBUG] + argv[i + 1:]


def _point_at(argv, weights):
    return [str(weights) if a == "assets/nnet_ema.pth" else ("4" if a == "50000" else a) for a in argv]


def test_readme_eval_command_runs_on_debug_recipe(assets, tmp_path):
    d, _ = assets
    argv = _point_at(_swap_config(readme_args("eval")), d / "nnet_ema.pth")
    assert train.main(argv + debug_args(assets, tmp_path)) == 0
    res = json.loads(next(tmp_path.glob("eval/*/result.json")).read_text())
    assert res["n"] == 4 and math.isfinite(res["fid"]) and res["fid"] > 0


def test_readme_search_command_runs_on_debug_recipe(assets, tmp_path):
    d, _ = assets
    argv = _point_at(_swap_config(readme_args("search")), d / "nnet_ema_ddp.pth")
    assert train.main(argv + debug_args(assets, tmp_path) + ["search.max_upd=1"]) == 0
    with open(tmp_path / "search_history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["update"]) for r in rows] == [0, 1] and all(math.isfinite(float(r["fid"])) for r in rows)
    assert int(rows[-1]["images"]) == 4 * (1 + 30 + 1)
    s0 = Strategy.from_yaml(tmp_path / "searched_strategies" / "stp_0.yaml", gen_steps=8)
    assert s0.to_vector() == pytest.approx(Strategy.maskgit_init(8).to_vector())
    s1 = Strategy.from_yaml(tmp_path / "searched_strategies" / "stp_1.yaml", gen_steps=8)
    assert s1.to_vector() != s0.to_vector()
    # the strategy written by the search is accepted by the eval command (--searched_strategy)
    argv = _point_at(_swap_config(readme_args("eval")), d / "nnet_ema.pth")
    argv[argv.index("configs/AutoNAT_L-T8_strategy.yaml")] = str(tmp_path / "searched_strategies" / "best.yaml")
    assert train.main(argv + debug_args(assets, tmp_path / "eval_best")) == 0


@pytest.mark.slow
def test_search_with_two_processes_matches_one(assets, tmp_path):
    from tests.helpers import run, torchrun_cmd
    d, _ = assets
    common = ["--config", DEBUG, "--mode", "search", "--pretrained_path", str(d / "nnet_ema.pth"), "--eval_n", "4",
              "--test_bsz", "2", "sample.gen_steps=2", "search.max_upd=1"]
    run(torchrun_cmd(2, *common, *debug_args(assets, tmp_path / "two")))
    assert train.main(common + debug_args(assets, tmp_path / "one")) == 0
    rows = {}
    for k in ("one", "two"):
        with open(tmp_path / k / "search_history.csv", newline="") as f:
            rows[k] = [{c: float(v) for c, v in r.items() if c != "seconds"} for r in csv.DictReader(f)]
    assert len(rows["one"]) == len(rows["two"]) == 2
    for a, b in zip(rows["one"], rows["two"]):
        assert a == pytest.approx(b, rel=1e-5)


def test_official_rng_replays_the_official_stream_through_eval(assets, tmp_path):
    """sample.rng=official: the eval's images are the decoded tokens of the official loop for this seed (labels and
    tokens from one torch stream, batch after batch); with 2 processes it is refused in one line."""
    from core.images import to_uint8
    from core.loading import load_file
    from engine.generate import build_tokenizer, decode
    from samplers.mask_predict import sample
    from samplers.official_stream import OfficialStream
    d, sd = assets
    argv = ["--config", DEBUG, "--mode", "eval", f"--pretrained_path={d / 'nnet_ema.pth'}", "--eval_n", "6",
            "--test_bsz", "3", "sample.rng=official", "sample.gen_steps=8", *debug_args(assets, tmp_path)]
    assert train.main(argv) == 0
    (tag,) = (tmp_path / "eval").iterdir()
    units = [load_file(tag / f"unit_{u:06d}.pt") for u in range(2)]
    cfg = load_config(DEBUG, [f"eval.pretrained_path={d / 'nnet_ema.pth'}", *debug_args(assets, tmp_path)[:1]])
    model, _ = build_model(cfg)
    model.load_state_dict(sd)
    model.eval()
    tok = build_tokenizer(cfg, torch.device("cpu"))
    strategy = Strategy.from_yaml("configs/AutoNAT_L-T8_strategy.yaml", gen_steps=8)
    stream = OfficialStream(int(cfg.seed), "autonat")
    for rec in units:  # the official eval loop: labels of a batch, then its sampling, on the same stream
        labels = stream.labels(3, model.null_label)
        toks = sample(model, labels, rng=stream, seq_len=model.seq_len, codebook_size=model.codebook_size,
                      strategy=strategy, null_label=model.null_label, rule="ties")
        assert torch.equal(rec["labels"], labels)
        assert torch.equal(rec["images"], to_uint8(decode(tok, toks.reshape(3, *model.grid))))
    p = run(torchrun_cmd(2, *argv[:-1], f"output_dir={tmp_path / 'two'}"), check=False)
    assert p.returncode != 0 and "run with 1 process" in p.stderr.strip().splitlines()[-1]
