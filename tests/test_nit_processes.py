"""NiT eval gives byte-identical PNGs on 1 and 2 processes in the precision its recipes sample in (bf16) and in
fp32, given what the README states the promise needs: the same eval.batch_size (the batch a sample is made in) and
the same threads per process (here one, as torchrun sets). Holds where bf16 is native and where it is emulated: each
unit is computed with the same shapes and threads whichever process makes it."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run, torchrun_cmd, write_random_fid_weights
from tests.nit_helpers import write_eval_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("nit_processes")
    a = write_eval_assets(d)
    a["inception"] = write_random_fid_weights(d / "inception.pth")
    return a


def _pngs(out) -> dict:
    (tag,) = (out / "eval").iterdir()
    folder = Path(json.loads((tag / "result.json").read_text())["png_dir"])  # the recipe sets eval.png_dir
    return {f.name: np.asarray(Image.open(f)) for f in sorted(folder.glob("*.png"))}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_one_and_two_processes_same_pngs(assets, tmp_path, precision):
    cmd = ["--config", "configs/debug/nit_debug.yaml", "--mode", "eval", f"eval.pretrained_path={assets['weights']}",
           f"tokenizer.ckpt={assets['dcae']}", f"eval.inception_weights={assets['inception']}",
           f"eval.ref_stats={assets['ref']}", "eval.n=6", "eval.batch_size=2", "eval.save_png=-1", "device=cpu",
           f"eval.precision={precision}", "sample.height=64", "sample.width=64"]
    pngs = {}
    for nproc in (1, 2):
        out = tmp_path / f"p{nproc}"
        run(torchrun_cmd(nproc, *cmd, f"output_dir={out}"))  # tests.helpers.env: OMP_NUM_THREADS=1
        pngs[nproc] = _pngs(out)
    assert sorted(pngs[1]) == sorted(pngs[2]) == [f"{i:06d}.png" for i in range(6)]
    for name, a in pngs[1].items():
        assert np.array_equal(a, pngs[2][name]), (precision, name)
