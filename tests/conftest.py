import os

import torch

# One intra-op thread per test process: tiny ops on 2 cores are faster (and steadier) without thread hand-offs.
torch.set_num_threads(int(os.environ.get("TEST_TORCH_THREADS", "1")))
