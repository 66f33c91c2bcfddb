import os

import pytest
import torch

# One intra-op thread per test process: tiny ops on 2 cores are faster (and steadier) without thread hand-offs.
torch.set_num_threads(int(os.environ.get("TEST_TORCH_THREADS", "1")))


@pytest.fixture(scope="session")
def fid_weights(tmp_path_factory):
    """Path of seeded random FID-Inception weights in the pytorch-fid .pth layout (pass as eval.inception_weights)."""
    from tests.helpers import write_random_fid_weights
    from metrics.inception_weights import PTH_NAME
    return write_random_fid_weights(tmp_path_factory.mktemp("fid_weights") / PTH_NAME, seed=0)
