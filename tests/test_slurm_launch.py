"""scripts/slurm_launch.sh --dry-run: the srun/torchrun commands it would run for a SLURM allocation."""
import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "slurm_launch.sh"


def _dry(env_extra: dict, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(env_extra)
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=30)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_two_nodes_of_eight_gpus():
    env = {"SLURM_JOB_ID": "424242", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[007-008]",
           "SLURM_GPUS_ON_NODE": "8", "SLURM_JOB_NAME": "autonat", "SLURM_SUBMIT_DIR": str(ROOT),
           "SLURM_RESTART_COUNT": "1"}
    p = _dry(env, "--config", "configs/AutoNAT_L.yaml", "--mode", "pretrain", "--beta_alpha_beta", "12", "3",
             "output_dir=runs/a b")
    assert p.returncode == 0, p.stderr
    lines = [l for l in p.stdout.splitlines() if not l.startswith("#")]
    assert len(lines) == 1
    argv = shlex.split(lines[0])
    srun_end = argv.index("-m")  # python -m torch.distributed.run
    srun, torchrun = argv[:srun_end - 1], argv[srun_end - 1:]
    assert srun[0] == "srun" and _flag(srun, "--nodes") == "2" and _flag(srun, "--ntasks-per-node") == "1"
    assert torchrun[1:3] == ["-m", "torch.distributed.run"]
    assert _flag(torchrun, "--nnodes") == "2" and _flag(torchrun, "--nproc_per_node") == "8"
    assert _flag(torchrun, "--rdzv_backend") == "c10d" and _flag(torchrun, "--rdzv_id") == "424242"
    host, port = _flag(torchrun, "--rdzv_endpoint").split(":")
    assert host == "gpu007" and 1024 < int(port) < 65536
    assert _flag(torchrun, "--log-dir").endswith("logs/autonat-424242/torchrun-restart1")
    # the train.py command line passes through unchanged, a value with a space included
    i = torchrun.index(str(ROOT / "train.py"))
    assert torchrun[i + 1:] == ["--config", "configs/AutoNAT_L.yaml", "--mode", "pretrain", "--beta_alpha_beta",
                                "12", "3", "output_dir=runs/a b"]
    assert "2 node(s) x 8 GPU(s), rendezvous gpu007:" in p.stdout


def test_gpu_count_forms_and_plain_node_list():
    base = {"SLURM_JOB_ID": "7", "SLURM_NNODES": "3", "SLURM_JOB_NODELIST": "n1,n2,n3"}
    for extra, want in (({"SLURM_GPUS_PER_NODE": "h100:4"}, "4"), ({"SLURM_GPUS_PER_NODE": "2"}, "2")):
        argv = shlex.split(_dry({**base, **extra}, "--config", "x.yaml").stdout.splitlines()[-1])
        assert _flag(argv, "--nproc_per_node") == want and _flag(argv, "--nnodes") == "3"
        assert _flag(argv, "--rdzv_endpoint").startswith("n1:")


def test_refusals_are_one_line():
    p = _dry({"SLURM_JOB_ID": "7"})
    assert p.returncode == 2 and p.stderr.startswith("error: no train.py arguments")
    p = _dry({}, "--config", "x.yaml")
    assert p.returncode == 2 and "SLURM_JOB_ID is not set" in p.stderr
    p = _dry({"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "0"}, "--config", "x.yaml")
    assert p.returncode == 2 and "GPUs per node '0'" in p.stderr and len(p.stderr.splitlines()) == 1
