"""Family eqar's record pieces: training targets = tokenizer sample() x vae_norm, sample() = sampler / vae_norm with
size -> tokens, settings validation (temperature), official schedule arithmetic, parameter groups, cached latents."""
import pytest
import torch

from core.seeding import row_generators
from engine.config import load_config
from models import build_model
from models.eqar.family import FAMILY, apply_official_schedule, eqar_sample, eqar_sample_settings, training_latents
from models.eqar.condition import sample as ar_sample
from tokenizer.column import ColumnTokenizer, build_column_autoencoder, gaussian_sample


@pytest.fixture()
def tok_file(tmp_path):
    torch.manual_seed(0)
    sd = build_column_autoencoder("debug").state_dict()
    path = tmp_path / "tok.pt"
    torch.save({"family": "eqtok", "config": {"model": {"flavour": "debug"}}, "model": sd, "ema": sd}, path)
    return path


def _cfg(*over):
    return load_config("configs/debug/eqar_debug.yaml", list(over))


def test_training_latents_are_tokenizer_samples_times_vae_norm(tok_file):
    cfg = _cfg(f"tokenizer.ckpt={tok_file}", "tokenizer.vae_norm=0.5")
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    torch.manual_seed(7)
    got = training_latents({"image": images, "label": torch.zeros(3, dtype=torch.long)}, cfg)
    tok = ColumnTokenizer(build_column_autoencoder("debug"))
    tok.model.load_state_dict(torch.load(tok_file, weights_only=True)["ema"])
    torch.manual_seed(7)
    want = gaussian_sample(tok.encode(images)) * 0.5
    assert got.shape == (3, 4, 16) and torch.allclose(got, want, atol=1e-6)
    # cached means get the same per-image noise law
    torch.manual_seed(7)
    cached = training_latents({"mean": tok.encode(images), "label": torch.zeros(3, dtype=torch.long)}, cfg)
    assert torch.allclose(cached, want, atol=1e-6)


def test_sample_is_sampler_over_vae_norm_and_size_sets_tokens():
    cfg = _cfg("tokenizer.vae_norm=0.25")
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    model.eval()
    st = eqar_sample_settings(cfg, model)
    assert st.num_tokens == 4 and st.column_width == 4 and st.sampler.num_steps == 2 and st.sampler.cfg == 2.0
    labels = torch.tensor([0, 1])
    out = eqar_sample(model, labels, row_generators(0, [0, 1]), st)
    ref = ar_sample(model, labels, row_generators(0, [0, 1]), st.sampler, num_tokens=4)
    assert torch.allclose(out, ref / 0.25)
    long = eqar_sample(model, labels, row_generators(0, [0, 1]), st, size=(16, 48))
    assert long.shape == (2, 12, 16)
    assert torch.allclose(long[:, :1], out[:, :1], atol=1e-5)  # token 0 does not depend on the length with cfg 1
    with pytest.raises(ValueError, match="multiple of the column width 4"):
        eqar_sample(model, labels, row_generators(0, [0, 1]), st, size=(16, 30))


def test_settings_refuse_temperature_and_bad_schedule():
    cfg = _cfg("sample.temperature=0.9")
    model, _ = build_model(cfg)
    with pytest.raises(ValueError, match="ignores the temperature"):
        eqar_sample_settings(cfg, model)
    with pytest.raises(ValueError, match="cfg_schedule"):
        eqar_sample_settings(_cfg("sample.cfg_schedule=cosine"), model)
    assert eqar_sample_settings(_cfg("sample.num_iter=64"), model).num_tokens == 64


def test_official_schedule_from_per_gpu_batch_blr_and_epochs():
    cfg = _cfg("train.batch_size_per_rank=64", "train.blr=1e-4", "train.epochs=1200", "train.warmup_epochs=100")
    apply_official_schedule(cfg, 1_281_167, 1)
    assert cfg.train.batch_size == 64 and cfg.train.lr == pytest.approx(1e-4 * 64 / 256)
    assert cfg.train.steps == 1200 * (1_281_167 // 64) and cfg.train.warmup_steps == 100 * (1_281_167 // 64)


def test_param_groups_and_flags():
    cfg = _cfg()
    model, fam = build_model(cfg)
    groups = fam.training.param_groups(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups[0]["params"]}
    decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == cfg.train.weight_decay == 0.02
    assert all(n.startswith("diffloss.") for n in decay | no_decay if "diffloss" in n) and not any(
        "diffloss" in n for n in decay)
    assert "z_proj.weight" in decay and "z_proj.bias" in no_decay and "encoder_norm.weight" in no_decay
    assert len(decay) + len(no_decay) == len(names)
    assert (cfg.train.betas, cfg.train.grad_clip, cfg.train.ema_decay) == ([0.9, 0.95], 3.0, 0.9999)
    # the bare official flag --grad_checkpointing sets true
    m2, _ = build_model(_cfg("model.grad_checkpointing=true"))
    assert m2.grad_checkpointing is True
    assert set(FAMILY.flavours) >= {"small_model", "base_model", "large_model", "huge_model", "debug"}


def test_cached_latent_training_through_engine(tmp_path, tok_file):
    import train
    tok = ColumnTokenizer(build_column_autoencoder("debug"))
    imgs = torch.rand(8, 3, 16, 16) * 2 - 1
    mean = torch.stack([tok.encode(imgs), tok.encode(imgs.flip(-1))], 1)
    torch.save({"mean": mean, "label": torch.arange(8) % 2}, tmp_path / "lat.pt")
    assert train.main(["--config", "configs/debug/eqar_debug.yaml", f"output_dir={tmp_path / 'o'}",
                       "data.kind=latents", f"data.path={tmp_path / 'lat.pt'}", f"tokenizer.ckpt={tok_file}"]) == 0
    assert (tmp_path / "o" / "checkpoints" / "step_0000002.pt").exists()


def test_on_the_fly_encoding_resumes_exactly(tmp_path, tok_file):
    """Building the tokenizer inside a step must not shift that step's random draws: a run stopped after step 1
    and resumed (tokenizer rebuilt at step 2) logs the losses of an uninterrupted run."""
    import train
    from tests.helpers import read_metrics
    common = ["--config", "configs/debug/eqar_debug.yaml", f"tokenizer.ckpt={tok_file}", "train.ckpt_every=1",
              "train.steps=3"]
    assert train.main([*common, f"output_dir={tmp_path / 'a'}"]) == 0
    assert train.main([*common, f"output_dir={tmp_path / 'b'}", "train.max_steps_this_run=1"]) == 0
    assert train.main([*common, f"output_dir={tmp_path / 'b'}"]) == 0
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in a]
