import pytest

from engine.config import ConfigError, family_schema, load_config, parse_command_line, split_official_flags


def test_official_flags_map_to_keys():
    argv = ["--gen_steps=8", "--enc_dec", "22", "2", "--cfg_scale", "2.5", "--pretrained_path", "a.pth",
            "--beta_alpha_beta", "12", "3", "--eval_n", "50000", "train.lr=1e-3", "family=enat"]
    flags, rest = split_official_flags(argv, family_schema("enat")[1])
    assert rest == ["train.lr=1e-3", "family=enat"]
    cfg, found = parse_command_line(None, argv, environ={})
    assert found == flags
    assert cfg.sample.gen_steps == 8 and list(cfg.model.enc_dec) == [22, 2]
    assert cfg.sample.cfg_scale == 2.5 and cfg.eval.pretrained_path == "a.pth"
    assert list(cfg.loss.beta_alpha_beta) == [12, 3] and cfg.eval.n == 50000
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)


def test_flag_with_too_few_values():
    with pytest.raises(ConfigError, match="--enc_dec takes 2"):
        split_official_flags(["--enc_dec", "22", "--gen_steps", "8"], family_schema("enat")[1])


def test_flags_are_per_family():
    # ENAT's architecture flags are not NAT's: with the NAT family they are unknown, with a hint
    with pytest.raises(ConfigError, match=r"unknown flag --enc_dec for family 'nat'.*official flags"):
        parse_command_line(None, ["--enc_dec", "22", "2"], environ={})
    cfg, _ = parse_command_line("configs/enat_L_256.yaml", ["--enc_dec", "22", "2"], environ={})
    assert list(cfg.model.enc_dec) == [22, 2]
    with pytest.raises(ConfigError, match=r"unknown config key 'loss.reuse_prob'.*family 'nat'"):
        load_config(None, ["loss.reuse_prob=0.5"])


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


def test_every_official_flag_targets_a_key_of_its_family():
    from omegaconf import OmegaConf

    from models import FAMILY_NAMES
    for name in FAMILY_NAMES:
        schema, table = family_schema(name)
        for flag, (key, n, *_) in table.items():
            if key.startswith("model."):  # flavour kwargs, checked by the model builder
                continue
            assert OmegaConf.select(schema, key, default="<missing>") != "<missing>", f"{name}: {flag} -> {key}"


def test_search_and_enat_training_flags():
    cfg, _ = parse_command_line(None, ["--sche_lr", "2e-3", "--unb_lr=0.2", "--grad_estimate_step_size", "0.02",
                                       "--unb_grad_estimate_step_size", "0.3", "--sche_moment", "0.7"], environ={})
    s = cfg.search
    assert (s.lr_ratio, s.lr_other, s.fd_step_ratio, s.fd_step_other, s.momentum) == (2e-3, 0.2, 0.02, 0.3, 0.7)
    cfg, _ = parse_command_line(None, ["family=enat", "--reuse_prob", "0.25", "--wd", "0.05", "--ema_rate", "0.999",
                                       "--warmup_steps", "10", "--save_interval", "7", "--log_interval", "3"],
                                environ={})
    t = cfg.train
    assert (cfg.loss.reuse_prob, t.weight_decay, t.ema_decay, t.warmup_steps, t.ckpt_every, t.log_every) == (
        0.25, 0.05, 0.999, 10, 7, 3)


def test_accelerate_mixed_precision_env_sets_precision(monkeypatch):
    import train
    from engine import runner
    from engine.config import env_flags
    assert env_flags({}) == {} and env_flags({"ACCELERATE_MIXED_PRECISION": "no"})["eval.precision"] == "fp32"
    with pytest.raises(ConfigError, match="ACCELERATE_MIXED_PRECISION='fp8'"):
        env_flags({"ACCELERATE_MIXED_PRECISION": "fp8"})
    seen = {}
    monkeypatch.setattr(runner, "run", lambda cfg, mode, **kw: seen.update(cfg=cfg) or 0)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert train.main(["--config", "configs/AutoNAT_L.yaml", "--mode", "eval", "train.precision=fp32"]) == 0
    c = seen["cfg"]  # the environment sets all three; an explicit key=value still wins
    assert (c.train.precision, c.eval.precision, c.search.precision) == ("fp32", "bf16", "bf16")
