"""Two torchrun launchers on this machine as two nodes (c10d rendezvous, one process each, gloo): training, a
checkpoint and a resume give the losses of one launcher with two processes, and eval writes the same images as one
process."""
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, env, read_metrics, run, torchrun_cmd
from tests.test_eval_pipeline import tiny_world  # noqa: F401  (the fixture)

CFG = "configs/debug/nat_synthetic.yaml"
COMMON = ["train.steps=8", "train.ckpt_every=4", "train.log_every=1", "train.batch_size=16"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(*args: str, timeout: int = 300) -> None:
    """Start node 0 and node 1 as separate launchers meeting at one c10d endpoint, wait for both."""
    port = _free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
               "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
               "--rdzv_id", f"mn{port}", str(ROOT / "train.py"), *args]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=timeout) for p in procs]
    for node, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"node {node} failed ({p.returncode}):\n{out[-2000:]}\n{err[-4000:]}"


@pytest.mark.slow
def test_two_launchers_train_resume_like_one_launcher(tmp_path):
    a, b = tmp_path / "one_launcher", tmp_path / "two_nodes"
    run(torchrun_cmd(2, "--config", CFG, "--mode", "pretrain", f"output_dir={a}", *COMMON))
    two_nodes("--config", CFG, "--mode", "pretrain", f"output_dir={b}", *COMMON, "train.max_steps_this_run=4")
    assert sorted(p.name for p in (b / "checkpoints").glob("step_*.pt")) == ["step_0000004.pt"]
    two_nodes("--config", CFG, "--mode", "pretrain", f"output_dir={b}", *COMMON)  # resumes from step 4
    ma, mb = read_metrics(a), read_metrics(b)
    assert sorted(ma) == sorted(mb) == list(range(1, 9))
    assert [ma[s]["loss"] for s in ma] == [mb[s]["loss"] for s in ma]
    wa = torch.load(a / "checkpoints" / "step_0000008.pt", weights_only=True)["model"]
    wb = torch.load(b / "checkpoints" / "step_0000008.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_two_launchers_eval_equals_one_process(tiny_world, tmp_path):  # noqa: F811
    from engine.checkpoint import load_file
    root, nat, common = tiny_world
    units = []
    for name, launch in (("one", lambda *x: run(torchrun_cmd(1, *x))), ("two", two_nodes)):
        out = tmp_path / name
        shutil.copytree(nat / "checkpoints", out / "checkpoints")
        launch(*common, "--mode", "eval", f"output_dir={out}", "eval.save_png=6")
        (tag,) = list((out / "eval").iterdir())
        units.append([load_file(u) for u in sorted(tag.glob("unit_*.pt"))])
        assert len(list((tag / "png").glob("*.png"))) == 6
    assert len(units[0]) == len(units[1]) == 3
    for u1, u2 in zip(*units):
        assert torch.equal(u1["images"], u2["images"]) and torch.equal(u1["labels"], u2["labels"])
