"""Two-process (torchrun, gloo) evaluation equals one process on the same images, with uneven per-rank counts."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metrics.evaluator import Evaluator
from metrics.files import write_sample_batch
from metrics.inception import FIDInception
from tests._dist_metrics_worker import N_IMAGES, SIZE, make_images

ROOT = Path(__file__).resolve().parents[1]


def close(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        # batch composition differs between the runs, so convolutions may round differently in the last bits
        assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k


@pytest.mark.slow
def test_two_process_evaluation_matches_single_process(tmp_path):
    g = torch.Generator().manual_seed(12)
    ref_imgs = (torch.rand(9, 32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
    ref = write_sample_batch(tmp_path / "ref.npz", ref_imgs)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "_dist_metrics_worker.py"), str(tmp_path), str(ref)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = torch.load(tmp_path / "results.pt", weights_only=True)

    torch.manual_seed(0)
    model = FIDInception().eval()
    single = Evaluator(model, mode="adm", ref=str(ref), size=SIZE, batch_size=3, is_splits=3)
    single.update(make_images())
    want = single.compute()
    assert want["n"] == N_IMAGES and set(want) == {"n", "fid", "is", "is_std", "is_splits", "sfid", "precision",
                                                     "recall"}
    close(got["contiguous"], want)
    close(got["interleaved"], want)
    close(got["resumed"], want)
    assert got["n_loaded"] == N_IMAGES and got["counts_after_load"] == [3, 4]
    assert got["features"]["index"].tolist() == list(range(N_IMAGES))
    torch.testing.assert_close(got["features"]["pool3"], single.collector.gather()["pool3"], rtol=1e-4, atol=1e-5)

    # the 2-process state file resumes in 1 process
    again = Evaluator(model, mode="adm", ref=str(ref), size=SIZE, batch_size=3, is_splits=3)
    assert again.load(tmp_path / "state.pt") == N_IMAGES
    close(again.compute(), want)
    assert np.isfinite(want["fid"]) and want["fid"] > 0
