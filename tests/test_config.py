import pytest

from engine.config import ConfigError, load_config, split_official_flags


def test_official_flags_map_to_keys():
    flags, rest = split_official_flags(
        ["--gen_steps=8", "--enc_dec", "22", "2", "--cfg_scale", "2.5", "--pretrained_path", "a.pth",
         "--beta_alpha_beta", "12", "3", "--eval_n", "50000", "train.lr=1e-3"])
    assert rest == ["train.lr=1e-3"]
    cfg = load_config(None, rest, flags)
    assert cfg.sample.gen_steps == 8 and list(cfg.model.enc_dec) == [22, 2]
    assert cfg.sample.cfg_scale == 2.5 and cfg.eval.pretrained_path == "a.pth"
    assert list(cfg.loss.beta_alpha_beta) == [12, 3] and cfg.eval.n == 50000
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)


def test_flag_with_too_few_values():
    with pytest.raises(ConfigError, match="--enc_dec takes 2"):
        split_official_flags(["--enc_dec", "22", "--gen_steps", "8"])


def test_typo_suggests_nearest_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr'.*did you mean 'train\.lr'"):
        load_config(None, ["train.lrr=3"])


def test_typo_in_recipe_names_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  batch_sise: 8\n")
    with pytest.raises(ConfigError, match=r"train\.batch_sise.*r\.yaml.*train\.batch_size"):
        load_config(p)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_model_keys_are_open():
    cfg = load_config(None, ["model.depth=3"])
    assert cfg.model.depth == 3


def test_train_py_reports_typo(capsys):
    import train
    rc = train.main(["--config", "configs/base.yaml", "--mode", "pretrain", "sample.cfg_scal=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "sample.cfg_scale" in err and len(err.strip().splitlines()) == 1
