"""ENAT recipes: the four commands of the official README after `--config configs/enat_L_{256,512}.yaml` map onto
the intended config (parsed by train.py, run() replaced), `--input_res` switches the token grid, token file and
reference statistics, and every recipe builds its released layout on the `meta` device."""
import json
import os
import shlex

import pytest
import torch

from tests.helpers import parse_train_args
from engine.config import load_config
from models.token_family import strategy_from_config
from models import build_model
from models.layers import count_params

SPEC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "layouts")
L256, L512 = "configs/enat_L_256.yaml", "configs/enat_L_512.yaml"

# The four commands of the official README (LeapLabTHU/ENAT), verbatim.
README = {
    "eval256": r"""torchrun --rdzv_backend=c10d --rdzv_endpoint=localhost:0 --nproc_per_node=8 train.py \
    --gen_steps=8 \
    --eval_n 50000 \
    --enc_dec 22 2 \
    --embed_dim 1024 \
    --num_heads 16 \
    --cfg_scale 2.5 \
    --mask_temp 1.5 \
    --samp_temp 6 \
    --pretrained_path assets/nnet_ema.pth \
    --output_dir ./in256_eval \
    --test_bsz 125 \
    --input_res 256 \
    --reference_image_path assets/fid_stats/fid_stats_imagenet256_guided_diffusion.npz""",
    "eval512": r"""torchrun --rdzv_backend=c10d --rdzv_endpoint=localhost:0 --nproc_per_node=8 train.py \
    --gen_steps=8 \
    --eval_n 5000 \
    --enc_dec 22 2 \
    --embed_dim 1024 \
    --num_heads 16 \
    --cfg_scale 3.5 \
    --mask_temp 1.5 \
    --samp_temp 4 \
    --pretrained_path assets/nnet_ema_512.pth \
    --output_dir ./in512_eval \
    --test_bsz 25 \
    --input_res 512 \
    --reference_image_path assets/fid_stats/fid_stats_imagenet512_guided_diffusion.npz""",
    "train256": r"""torchrun --nproc_per_node=8 --nnodes=2 --node_rank=... --master_addr=... --master_port=... train.py \
    --gen_steps=8 \
    --enc_dec 22 2 \
    --embed_dim 1024 \
    --num_heads 16 \
    --output_dir ./in256_train \
    --train_steps 500000 \
    --input_res 256 \
    --batch_size 2048 \
    --lr 0.0004""",
    "train512": r"""torchrun --nproc_per_node=8 --nnodes=2 --node_rank=... --master_addr=... --master_port=... train.py \
    --gen_steps=8 \
    --enc_dec 22 2 \
    --embed_dim 1024 \
    --num_heads 16 \
    --output_dir ./in512_train \
    --train_steps 500000 \
    --input_res 512 \
    --batch_size 512 \
    --lr 0.0001""",
}


def readme_args(name: str, config: str) -> list[str]:
    """The README command without its launcher, with `--config <recipe>` in front of the official flags."""
    words = shlex.split(README[name].replace("\\\n", " "))
    return ["--config", config] + words[words.index("train.py") + 1:]


parsed = parse_train_args


def spec_shapes(name):
    with open(os.path.join(SPEC_DIR, name)) as f:
        return json.load(f)["keys"]


def meta_model(cfg):
    with torch.device("meta"):
        return build_model(cfg)[0]


def check_eval(cfg, res, n, bsz, weights, out, cfg_scale, samp_temp):
    assert cfg.family == "enat" and cfg.data.input_res == res and cfg.output_dir == out
    assert list(cfg.model.enc_dec) == [22, 2] and (cfg.model.embed_dim, cfg.model.num_heads) == (1024, 16)
    s = cfg.sample
    assert (s.gen_steps, s.strategy, s.cfg_scale, s.mask_temp, s.samp_temp, s.reuse) == (
        8, "cosine", cfg_scale, 1.5, samp_temp, True)
    e = cfg.eval
    assert (e.pretrained_path, e.n, e.batch_size, e.use_ema) == (weights, n, bsz, True)
    assert e.ref_stats == f"assets/fid_stats/fid_stats_imagenet{res}_guided_diffusion.npz"
    assert (e.fid_mode, e.labels, e.inception_dtype) == ("pytorch-fid", "balanced", "fp32")
    assert (cfg.tokenizer.kind, cfg.tokenizer.ckpt) == ("vqgan_mage", "assets/vqgan_jax_strongaug.ckpt")
    # the engine's strategy: ENAT's cosine schedule with the released knobs
    st = strategy_from_config(cfg)
    assert st.source == f"enat_cosine(8, cfg_scale={cfg_scale}, mask_temp=1.5, samp_temp={samp_temp})"
    assert st.cfg[0] == 0.0 and st.cfg[-1] == pytest.approx(7 / 8 * cfg_scale)
    model = meta_model(cfg)
    assert (model.seq_len, model.codebook_size, model.null_label) == ((res // 16) ** 2, 1024, 1000)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == spec_shapes(f"keys_enat_L_{res}.json")


def check_train(cfg, res, batch, lr, out):
    t = cfg.train
    assert cfg.family == "enat" and cfg.output_dir == out and cfg.sample.gen_steps == 8
    assert (cfg.data.kind, cfg.data.path) == ("tokens", f"assets/imagenet{res}_vq_features/train.npy")
    assert (t.steps, t.batch_size, t.lr, t.warmup_steps, t.weight_decay, list(t.betas)) == (
        500000, batch, lr, 5000, 0.03, [0.99, 0.99])
    assert (t.ema_decay, t.grad_clip, t.precision) == (0.9999, 0.0, "auto")
    lo = cfg.loss
    assert (list(lo.beta_alpha_beta), lo.label_drop, lo.label_smoothing, lo.reuse_prob, lo.per_sample_ratio) == (
        [12, 3], 0.15, 0.1, 0.5, False)
    assert meta_model(cfg).seq_len == (res // 16) ** 2


@pytest.mark.parametrize("config", [L256, L512])
def test_readme_commands_map_onto_either_recipe(monkeypatch, config):
    # without --mode, --pretrained_path selects eval (the official train.py evaluates when it is given)
    cfg, mode = parsed(monkeypatch, readme_args("eval256", config))
    assert mode == "eval"
    check_eval(cfg, 256, 50000, 125, "assets/nnet_ema.pth", "./in256_eval", 2.5, 6.0)
    cfg, mode = parsed(monkeypatch, readme_args("eval512", config))
    assert mode == "eval"
    check_eval(cfg, 512, 5000, 25, "assets/nnet_ema_512.pth", "./in512_eval", 3.5, 4.0)
    cfg, mode = parsed(monkeypatch, readme_args("train256", config))
    assert mode == "pretrain"
    check_train(cfg, 256, 2048, 4e-4, "./in256_train")
    cfg, mode = parsed(monkeypatch, readme_args("train512", config))
    assert mode == "pretrain"
    check_train(cfg, 512, 512, 1e-4, "./in512_train")


@pytest.mark.parametrize("config,res,lr,batch,bsz,cfg_scale,samp_temp", [
    (L256, 256, 4e-4, 2048, 125, 2.5, 6.0),
    (L512, 512, 1e-4, 512, 25, 3.5, 4.0),
])
def test_recipe_defaults_are_the_released_settings(config, res, lr, batch, bsz, cfg_scale, samp_temp):
    cfg = load_config(config)
    check_train(cfg, res, batch, lr, f"outputs/enat_L_{res}")
    assert (cfg.sample.cfg_scale, cfg.sample.samp_temp, cfg.sample.mask_temp, cfg.sample.reuse) == (
        cfg_scale, samp_temp, 1.5, True)
    assert (cfg.eval.n, cfg.eval.batch_size, cfg.eval.labels, cfg.seed) == (50000, bsz, "balanced", 1234)
    assert cfg.eval.ref_stats == f"assets/fid_stats/fid_stats_imagenet{res}_guided_diffusion.npz"
    assert {k: list(v.shape) for k, v in meta_model(cfg).state_dict().items()} == \
        spec_shapes(f"keys_enat_L_{res}.json")


def test_input_res_switches_grid_token_file_and_reference_stats(monkeypatch):
    cfg, _ = parsed(monkeypatch, ["--config", L256, "--input_res", "512"])
    assert cfg.data.path == "assets/imagenet512_vq_features/train.npy"
    assert cfg.eval.ref_stats == "assets/fid_stats/fid_stats_imagenet512_guided_diffusion.npz"
    assert meta_model(cfg).seq_len == 1024
    cfg, _ = parsed(monkeypatch, ["--config", L512, "--input_res", "256"])
    assert cfg.data.path == "assets/imagenet256_vq_features/train.npy" and meta_model(cfg).seq_len == 256
    # the interpolation is resolved in what checkpoints store
    from engine.config import to_container
    assert to_container(cfg)["model"]["input_res"] == 256
    cfg, _ = parsed(monkeypatch, ["--config", L256, "--input_res", "200"])
    with pytest.raises(ValueError, match="input_res 200 is not a multiple of the tokenizer downsample 16"):
        meta_model(cfg)


@pytest.mark.parametrize("config,n_params,depths", [
    ("configs/enat_S_256.yaml", 50_384_219, (15, 1)),
    ("configs/enat_B_256.yaml", 219_646_721, (15, 1)),
])
def test_small_size_recipes(config, n_params, depths):
    cfg = load_config(config)
    model = meta_model(cfg)
    assert count_params(model) == n_params and model.enc_dec == depths and model.seq_len == 256
    assert cfg.train.steps == 300000 and cfg.sample.reuse


def test_debug_and_demo_recipes_fit_their_tokenizers():
    from tokenizer.demo_vq import DEMO_VQ_FLAVOURS
    for config, vq_flavour, grid in (("configs/debug/enat_debug.yaml", "debug", 4),
                                     ("configs/demo/enat_fmnist.yaml", "demo", 8)):
        cfg = load_config(config)
        model = build_model(cfg)[0]
        assert model.codebook_size == DEMO_VQ_FLAVOURS[vq_flavour]["codebook_size"]
        assert model.seq_len == grid * grid and model.null_label == cfg.data.num_classes == 10
        assert cfg.family == "enat" and cfg.tokenizer.kind == "demo_vq" and cfg.sample.reuse
    # the demo ENAT shares the NAT demo's data, tokenizer, training budget and evaluation, so their FIDs compare
    enat, nat = load_config("configs/demo/enat_fmnist.yaml"), load_config("configs/demo/nat_fmnist.yaml")
    for section in ("data", "tokenizer", "eval"):
        assert enat[section] == nat[section], section
    for key in ("steps", "batch_size", "lr", "warmup_steps", "lr_schedule", "min_lr_ratio", "ema_decay"):
        assert enat.train[key] == nat.train[key], key
    sizes = [count_params(build_model(c)[0]) for c in (enat, nat)]
    assert 0.9 < sizes[0] / sizes[1] < 1.2, sizes
    assert enat.output_dir == "outputs/demo/enat" != nat.output_dir
