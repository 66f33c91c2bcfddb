"""2-process training, killed after a checkpoint and resumed, reproduces the uninterrupted losses exactly."""
import pytest

from tests.helpers import interrupt_after_checkpoint, read_metrics, run, torchrun_cmd

CFG = "configs/debug/nat_synthetic.yaml"
COMMON = ["train.steps=12", "train.ckpt_every=4", "train.log_every=1", "train.batch_size=16", "train.grad_accum=2"]


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(torchrun_cmd(2, "--config", CFG, "--mode", "pretrain", f"output_dir={a}", *COMMON))

    # real kill: SIGKILL the whole torchrun group as soon as the step-4 checkpoint exists
    interrupt_after_checkpoint(torchrun_cmd(2, "--config", CFG, "--mode", "pretrain", f"output_dir={b}", *COMMON), b)
    run(torchrun_cmd(2, "--config", CFG, "--mode", "pretrain", f"output_dir={b}", *COMMON))
    ma, mb = read_metrics(a), read_metrics(b)
    assert sorted(ma) == list(range(1, 13)) and sorted(mb) == list(range(1, 13))
    for s in range(1, 13):
        assert ma[s]["loss"] == mb[s]["loss"], (s, ma[s]["loss"], mb[s]["loss"])
        assert ma[s]["acc"] == mb[s]["acc"]


def test_resume_in_process_equals_uninterrupted(tmp_path):
    import train
    a, b = tmp_path / "a", tmp_path / "b"
    assert train.main(["--config", CFG, f"output_dir={a}", *COMMON]) == 0
    assert train.main(["--config", CFG, f"output_dir={b}", *COMMON, "train.max_steps_this_run=6"]) == 0
    assert max(read_metrics(b)) == 6
    assert train.main(["--config", CFG, f"output_dir={b}", *COMMON]) == 0
    ma, mb = read_metrics(a), read_metrics(b)
    assert [ma[s]["loss"] for s in range(1, 13)] == [mb[s]["loss"] for s in range(1, 13)]


def test_checkpoint_of_other_family_is_rejected(tmp_path, capsys):
    import train
    from engine.checkpoint import atomic_save
    atomic_save({"model": {}, "ema": {}, "optimizer": {}, "step": 3, "family": "enat", "flavour": "debug",
                 "config": {}}, tmp_path / "checkpoints" / "step_0000003.pt")
    rc = train.main(["--config", CFG, f"output_dir={tmp_path}", *COMMON])
    err = capsys.readouterr().err
    assert rc == 2 and "step_0000003.pt is a 'enat' checkpoint" in err


def test_checkpoint_with_missing_keys_is_rejected(tmp_path, capsys):
    import train
    from engine.checkpoint import load_file, atomic_save
    assert train.main(["--config", CFG, f"output_dir={tmp_path}", *COMMON, "train.max_steps_this_run=4"]) == 0
    p = tmp_path / "checkpoints" / "step_0000004.pt"
    state = load_file(p)
    state["model"].pop("mid_block.attn.qkv.weight")
    atomic_save(state, p)
    rc = train.main(["--config", CFG, f"output_dir={tmp_path}", *COMMON])
    err = capsys.readouterr().err
    assert rc == 2 and "missing key" in err and "mid_block.attn.qkv.weight" in err


def test_missing_data_path_is_one_line(tmp_path, capsys):
    import train
    rc = train.main(["--config", CFG, f"output_dir={tmp_path}", "data.kind=tokens", f"data.path={tmp_path}/x.npy"])
    errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and "token file not found" in errors[0] and "x.npy" in errors[0]
