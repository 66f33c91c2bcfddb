"""The column families (eqar, eqtok) get their micro-batches from datasets.sampling.row_batches: the crops and flips
of every (step, rank, micro-batch) are pinned, so a change of the batching cannot move the training runs (the
digests are those of the batches the families were trained on before they shared row_batches)."""
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import load_config
from models import get_family

# sha256 (first 16 hex digits) of each rank's micro-batches (uint8 pixels, labels) of steps 0-2, world 2, grad_accum 2
# (the two families read an image folder the same way and always used the same seeds: the same batches)
DIGEST = ['98d5ab95c2922e5c', '941a4df9c694c4b0', '9fba48c93de90ec6', '466c0d785a3fc922', 'aec4f5bbf7a2b0e2',
          '1d911fa83a1c54b2']


def _folder(root):
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(5):  # 16 px high (no resize), 40 px wide: random crops of width 16 and random flips
            Image.fromarray(rng.integers(0, 256, (16, 40, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def _digest(batches) -> str:
    h = hashlib.sha256()
    for b in batches:
        h.update(((b["image"] + 1) * 127.5).round().to(torch.uint8).numpy().tobytes())
        h.update(b["label"].numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("family,config", [("eqar", "configs/debug/eqar_debug.yaml"),
                                           ("eqtok", "configs/debug/eqtok_debug.yaml")])
def test_column_family_batches_are_pinned(tmp_path, family, config):
    cfg = load_config(config, ["data.kind=imagefolder", f"data.path={_folder(tmp_path / 'images')}",
                               "data.image_size=16", "train.batch_size=4", "train.grad_accum=2", "seed=3"])
    fam = get_family(family)
    ds = fam.dataset(cfg, "train")
    got = [_digest(fam.batches(ds, cfg, step, rank, 2)) for step in range(3) for rank in range(2)]
    assert got == DIGEST
