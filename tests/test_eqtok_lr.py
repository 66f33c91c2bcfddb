"""The column tokenizer's LR schedules: the release's warm-up/step decay on the autoencoder group only (values at
chosen steps, and a re-statement of the released stateful scheduler), applied by the optimizer itself under the
engine, resumed with the optimizer state; the default leaves the demo's training unchanged."""
import json
from pathlib import Path

import pytest
import torch

from engine.config import load_config
from engine.optim import build_optimizer, lr_at
from models import build_model, get_family
from models.eqtok.family import eqtok_param_groups
from models.eqtok.lr import warmup_decay_factor

RECIPE = "configs/debug/eqtok_debug.yaml"


def test_release_values_at_chosen_steps():
    f = lambda n: warmup_decay_factor(n, 3000, 0.2, 30000)  # noqa: E731  configs/eqtok_stage1.yaml
    plateau = 2999 / 3000
    for n, want in ((0, 0.0), (1, 1 / 3000), (1500, 0.5), (2999, plateau), (3000, plateau), (32999, plateau),
                    (33000, 0.2 * plateau), (62999, 0.2 * plateau), (63000, 0.04 * plateau),
                    (303000, 0.2 ** 10 * plateau)):
        assert f(n) == pytest.approx(want, rel=1e-12, abs=1e-15), n
    assert warmup_decay_factor(93000, 3000, 0.2, 30000, minimum=0.01) == 0.01
    assert warmup_decay_factor(2, 4, 0.5, 10, start=0.5) == pytest.approx(0.75)
    assert warmup_decay_factor(7, 0, 0.5, 5, start=0.25) == pytest.approx(0.125)


class ReleasedScheduler:
    """The released LambdaWarmUpDecayScheduler as a state machine, called once per update in order."""

    def __init__(self, warm, lr_max, lr_min, lr_start, decay, interval):
        self.w, self.mx, self.mn, self.s, self.d, self.i = warm, lr_max, lr_min, lr_start, decay, interval
        self.last = lr_start

    def __call__(self, n):
        if n < self.w:
            self.last = (self.mx - self.s) / self.w * n + self.s
        elif (n - self.w) % self.i == 0 and n > self.w:
            self.last = max(self.last * self.d, self.mn)
        return self.last


@pytest.mark.parametrize("warm,start,minimum,decay,every", [(5, 0.0, 0.0, 0.2, 7), (3, 0.1, 0.05, 0.5, 2),
                                                            (0, 0.3, 0.0, 0.9, 4)])
def test_closed_form_equals_the_stateful_scheduler(warm, start, minimum, decay, every):
    ref = ReleasedScheduler(warm, 1.0, minimum, start, decay, every)
    for n in range(60):
        assert warmup_decay_factor(n, warm, decay, every, start, minimum) == pytest.approx(ref(n), rel=1e-12), n


def _grads(model):
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)


def _engine_sets_lrs(opt, step, cfg):
    """What the engine's trainer does before every update (engine/trainer.py)."""
    fam = get_family("eqtok")
    for g, lr in zip(opt.param_groups, fam.training.group_lrs(step, cfg, lr_at(step, cfg.train), opt.param_groups)):
        g["lr"] = lr


def test_groups_follow_their_schedules_under_the_engine(tmp_path):
    cfg = load_config(RECIPE, ["train.ae_lr_schedule=warmup_decay", "train.lr=0.01", "train.warmup_steps=2",
                               "train.lr_decay=0.5", "train.lr_decay_every=2", "loss.learn_logvar=false"])
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    groups = eqtok_param_groups(model, cfg)
    assert not model.loss.logvar.requires_grad  # the release optimises no logvar
    assert not any(p is model.loss.logvar for g in groups for p in g["params"])
    disc = {id(p) for n, p in model.named_parameters() if n.startswith("loss.discriminator.")}
    assert [all(id(p) in disc for p in g["params"]) for g in groups] == [False, True]
    opt = build_optimizer(model, cfg.train, groups)
    enc = model.encoder.conv_in.weight
    head = model.loss.discriminator.main[0].weight
    e0, h0 = enc.detach().clone(), head.detach().clone()
    want = [0.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125]  # f(n) for n = 0..6: warm-up 0, 1/2; plateau 1/2; x0.5 every 2
    for step, f in enumerate(want):
        _engine_sets_lrs(opt, step, cfg)
        _grads(model)
        opt.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * f) and opt.param_groups[1]["lr"] == 0.01
        if step == 0:  # the first update has LR 0 for the autoencoder (LambdaLR at n = 0), full LR for the heads
            assert torch.equal(enc, e0) and not torch.equal(head, h0)
        if step == 3:  # a resume continues from the engine's step count
            saved = opt.state_dict()
    torch.save(saved, tmp_path / "opt.pt")
    model2, _ = build_model(cfg)
    opt2 = build_optimizer(model2, cfg.train, eqtok_param_groups(model2, cfg))
    opt2.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for step, f in enumerate(want[4:], start=4):
        _engine_sets_lrs(opt2, step, cfg)
        _grads(model2)
        opt2.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(0.01 * f)


def test_a_warmup_that_leaves_lr_zero_is_refused():
    cfg = load_config(RECIPE, ["train.ae_lr_schedule=warmup_decay", "train.warmup_steps=1"])
    model, _ = build_model(cfg)
    with pytest.raises(ValueError, match="keeps the autoencoder LR at 0"):
        eqtok_param_groups(model, cfg)


def test_engine_schedule_is_the_default_and_untouched():
    cfg = load_config(RECIPE)
    model, _ = build_model(cfg)
    opt = build_optimizer(model, cfg.train, eqtok_param_groups(model, cfg))
    assert model.loss.logvar.requires_grad
    assert get_family("eqtok").training.group_lrs(7, cfg, 0.123, opt.param_groups) == [0.123] * len(opt.param_groups)


def test_release_schedule_through_train_py(tmp_path):
    import train
    out = tmp_path / "run"
    assert train.main(["--config", RECIPE, f"output_dir={out}", "train.ae_lr_schedule=warmup_decay",
                       "train.warmup_steps=2", "train.lr_decay_every=1", "train.lr_decay=0.5"]) == 0
    logs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr_ae"] for r in logs] == pytest.approx([0.0, 5e-4, 5e-4])
    assert [r["lr_disc"] for r in logs] == pytest.approx([1e-3] * 3)
    opt = torch.load(out / "checkpoints" / "step_0000003.pt", weights_only=True)["optimizer"]
    assert [g["lr"] for g in opt["param_groups"]] == pytest.approx([5e-4, 1e-3])  # the last update's LRs


# the demo recipe's first logged values before the discriminator, teacher and schedule options existed
# (configs/demo/eqtok_fmnist.yaml, fp32, seed 0): options off by default must leave them unchanged
# recorded when the semantic decoder started building num_res_blocks + 1 blocks per level (run: the first
# num_res_blocks, as released): the idle blocks draw initial values, so every layer built after them starts elsewhere
DEMO_BEFORE = [
    {"step": 1, "lr": 2e-05, "nll": 1026.22265625, "rec": 1.0021705627441406, "kl": 0.9309046268463135,
     "ae_loss": 1026.23193359375, "logits_real": 0.4358724355697632, "logits_fake": 0.1396859735250473},
    {"step": 2, "lr": 4e-05, "nll": 967.94287109375, "rec": 0.9452556371688843, "kl": 0.9699708223342896,
     "ae_loss": 967.9525756835938, "logits_real": 0.427232027053833, "logits_fake": 0.14576232433319092},
    {"step": 3, "lr": 6e-05, "nll": 1004.585205078125, "rec": 0.9810405373573303, "kl": 0.9839271306991577,
     "ae_loss": 1004.5950317382812, "logits_real": 0.4327661693096161, "logits_fake": 0.15760210156440735},
]


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
def test_demo_recipe_trains_unchanged(tmp_path):
    import train
    out = tmp_path / "demo"
    # loss.kl_weight as the demo had it when these values were recorded (it is 0.002 now)
    assert train.main(["--config", "configs/demo/eqtok_fmnist.yaml", f"output_dir={out}", "train.steps=3",
                       "train.log_every=1", "train.ckpt_every=1000", "train.sample_every=0",
                       "loss.kl_weight=0.01"]) == 0
    logs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    for got, want in zip(logs, DEMO_BEFORE, strict=True):
        assert "lr_ae" not in got
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-6), (want["step"], k)


def test_release_recipes():
    """Both stages: DINO discriminator, the release schedule per group, logvar not optimised; stage 1 aligns to
    DINOv2, stage 2 does not; without the weight files building stops with one line naming the file."""
    s1, s2 = load_config("configs/eqtok_stage1.yaml"), load_config("configs/eqtok_stage2.yaml")
    for c in (s1, s2):
        assert (c.model.discriminator, c.train.ae_lr_schedule, c.train.warmup_steps, c.train.lr_decay,
                c.train.lr_decay_every, c.train.lr_start_factor, c.train.lr_min_factor, c.loss.learn_logvar) == \
            ("dino", "warmup_decay", 3000, 0.2, 30000, 0.0, 0.0, False)
        assert list(c.model.dino_key_depths) == [2, 5, 8, 11] and c.model.diffaug_cutout == 0.2
    assert (s1.loss.semantic_weight, s1.loss.semantic_start, s1.loss.semantic_teacher) == (5.0, 20001, "dinov2")
    assert s2.loss.semantic_weight == 0.0 and s2.model.stage2
    missing = load_config("configs/eqtok_stage1.yaml", ["model.dino_path=/nonexistent/dino_deitsmall16_pretrain.pth"])
    with pytest.raises(FileNotFoundError) as e:
        build_model(missing)
    assert "\n" not in str(e.value) and "/nonexistent/dino_deitsmall16_pretrain.pth" in str(e.value)
