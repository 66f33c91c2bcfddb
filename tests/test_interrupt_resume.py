"""Nothing is lost on interrupt: Ctrl-C is one line with where to go on, a time-boxed run keeps its steps, a broken
latest checkpoint names the previous one, and a resume with other settings says so."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from tests.helpers import ROOT, read_metrics

NAT = "configs/debug/nat_synthetic.yaml"


def test_max_steps_this_run_keeps_a_checkpoint(tmp_path):
    assert train.main(["--config", NAT, f"output_dir={tmp_path}", "train.steps=10", "train.ckpt_every=4",
                       "train.max_steps_this_run=6"]) == 0
    assert (tmp_path / "checkpoints" / "step_0000006.pt").exists()
    assert train.main(["--config", NAT, f"output_dir={tmp_path}", "train.steps=10", "train.ckpt_every=4"]) == 0
    assert sorted(read_metrics(tmp_path)) == list(range(1, 11))


def test_broken_latest_checkpoint_names_the_previous_one(tmp_path, capsys):
    assert train.main(["--config", NAT, f"output_dir={tmp_path}", "train.steps=4", "train.ckpt_every=2",
                       "train.keep_ckpts=5"]) == 0
    latest = tmp_path / "checkpoints" / "step_0000004.pt"
    latest.write_bytes(latest.read_bytes()[:100])  # truncated, as by a full disk
    before = (tmp_path / "checkpoints" / "step_0000002.pt").read_bytes()
    capsys.readouterr()
    assert train.main(["--config", NAT, f"output_dir={tmp_path}", "train.steps=6", "train.ckpt_every=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the latest checkpoint cannot be resumed") and "step_0000004.pt" in err
    assert "step_0000002.pt" in err and "Traceback" not in err
    assert (tmp_path / "checkpoints" / "step_0000002.pt").read_bytes() == before


def test_resume_with_other_settings_is_reported(tmp_path):
    assert train.main(["--config", NAT, f"output_dir={tmp_path}", "train.steps=2", "train.ckpt_every=2"]) == 0
    assert train.main(["--config", NAT, f"output_dir={tmp_path}", "train.steps=4", "train.ckpt_every=2",
                       "train.lr=5e-4", "train.batch_size=8"]) == 0
    log = (tmp_path / "log.txt").read_text()
    assert "settings that differ from the checkpoint's" in log
    assert "train.lr 0.001 -> 0.0005" in log and "train.batch_size 16 -> 8" in log


def test_scaler_state_round_trips_through_the_checkpoint(tmp_path):
    """fp16 resumes exactly only if the GradScaler's scale comes back; the container carries it when there is one."""
    from engine import trainer
    from engine.config import load_config
    from engine.optim import build_optimizer, make_ema
    from models import build_model
    cfg = load_config(NAT, [f"output_dir={tmp_path}"])
    model, fam = build_model(cfg)
    ema, opt = make_ema(model), build_optimizer(model, cfg.train)

    class Scaler:  # the two methods of torch.amp.GradScaler that checkpointing uses
        def __init__(self, scale):
            self.scale = scale

        def state_dict(self):
            return {"scale": self.scale}

        def load_state_dict(self, sd):
            self.scale = sd["scale"]

    ck = tmp_path / "checkpoints"
    trainer.save_checkpoint(ck / "step_0000003.pt", model, ema, opt, 3, fam.name, cfg, Scaler(1024.0))
    back = Scaler(65536.0)
    assert trainer._resume(cfg, fam, model, ema, opt, back, ck, tmp_path) == 3 and back.scale == 1024.0


@pytest.mark.slow
def test_ctrl_c_is_one_line_with_the_way_on(tmp_path):
    p = subprocess.Popen([sys.executable, "train.py", "--config", NAT, f"output_dir={tmp_path}", "train.steps=100000",
                          "train.ckpt_every=5", "train.log_every=5"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while not (tmp_path / "checkpoints" / "step_0000005.pt").exists():
        assert p.poll() is None and time.time() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    last = err.strip().splitlines()[-1]
    assert p.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err
    assert last.startswith("error: interrupted at step") and "re-run the same command to resume" in last
    step = int(last.split("last checkpoint step ")[1].split()[0])
    assert step >= 5 and (tmp_path / "checkpoints" / f"step_{step:07d}.pt").exists()
    assert torch.load(tmp_path / "checkpoints" / f"step_{step:07d}.pt", weights_only=True)["step"] == step
