"""torchrun worker for tests/test_metrics_dist.py: the evaluator on 2 processes with uneven per-rank counts.

argv: out_dir ref_npz. Writes out_dir/results.pt on rank 0 and out_dir/state.pt (Evaluator.save).
"""
import sys

import torch

from core import dist
from metrics.evaluator import Evaluator
from metrics.inception import FIDInception

N_IMAGES = 7
SIZE = 75  # smallest input the network accepts: the test stays fast with the full architecture


def make_images() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    scale = torch.rand(N_IMAGES, 1, 1, 1, generator=g) * 220 + 30
    return (torch.rand(N_IMAGES, 3, 32, 32, generator=g) * scale).clamp(0, 255).to(torch.uint8)


def main(out_dir: str, ref: str) -> None:
    dist.init_distributed("cpu")
    r, w = dist.rank(), dist.world_size()
    assert w == 2, w
    torch.manual_seed(0)
    model = FIDInception().eval()
    x = make_images()
    kw = dict(mode="adm", ref=ref, size=SIZE, batch_size=3, is_splits=3)

    # contiguous, uneven shares: rank 0 gets 4 images (in two updates), rank 1 gets 3; no index -> rank-major order
    contiguous = Evaluator(model, **kw)
    lo, hi = (0, 4) if r == 0 else (4, N_IMAGES)
    contiguous.update(x[lo:lo + 2])
    contiguous.update(x[lo + 2:hi])
    res_contiguous = contiguous.compute()

    # interleaved shares with global ids: rank 0 gets 0, 2, 4, 6; rank 1 gets 1, 3, 5
    ids = torch.arange(r, N_IMAGES, w)
    interleaved = Evaluator(model, **kw)
    interleaved.update(x[ids], index=ids)
    res_interleaved = interleaved.compute()
    gathered = interleaved.collector.gather()

    contiguous.save(f"{out_dir}/state.pt")
    resumed = Evaluator(model, **kw)
    n_loaded = resumed.load(f"{out_dir}/state.pt")
    local_after_load = len(resumed)
    res_resumed = resumed.compute()
    counts = dist.all_gather_cat(torch.tensor([local_after_load])).tolist()

    if dist.is_main():
        torch.save({"contiguous": res_contiguous, "interleaved": res_interleaved, "resumed": res_resumed,
                    "n_loaded": n_loaded, "counts_after_load": counts, "features": gathered},
                   f"{out_dir}/results.pt")
    dist.barrier()
    dist.destroy()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
