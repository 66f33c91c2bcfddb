"""--mode eval end to end on tiny models: the same images and metrics with 1 and 2 processes, and resume."""
import numpy as np
import pytest
import torch

from tests.helpers import run, torchrun_cmd
from tests.test_data import write_idx


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """Fake Fashion-MNIST files, a debug demo_vq tokenizer, a NAT matching its 8x8 codes, random Inception."""
    import train
    from metrics.inception import FIDInception
    root = tmp_path_factory.mktemp("world")
    data = root / "fmnist"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 12)):
        write_idx(data / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(data / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    vq = root / "vq"
    assert train.main(["--config", "configs/demo/vq_fmnist.yaml", f"output_dir={vq}", f"data.path={data}",
                       "model.flavour=debug", "train.steps=2", "train.batch_size=8", "train.log_every=1",
                       "train.ckpt_every=2"]) == 0
    nat = root / "nat"
    assert train.main(["--config", "configs/debug/nat_synthetic.yaml", f"output_dir={nat}", "model.img_size=8",
                       "model.codebook_size=32", "data.synthetic_seq_len=64", "data.synthetic_vocab=32",
                       "train.steps=2", "train.ckpt_every=2"]) == 0
    torch.manual_seed(0)
    weights = root / "inception.pth"
    torch.save(FIDInception().state_dict(), weights)
    common = ["--config", "configs/debug/nat_fmnist_debug.yaml", f"tokenizer.ckpt={vq}/checkpoints/step_0000002.pt",
              f"eval.inception_weights={weights}", "eval.inception_dtype=fp32", f"eval.ref_images_path={data}",
              f"eval.ref_stats={root}/ref.npz"]
    return root, nat, common


def _eval(nproc, out, common, *extra):
    from engine.checkpoint import load_file
    run(torchrun_cmd(nproc, *common, "--mode", "eval", f"output_dir={out}", *extra))
    (tag,) = [p for p in (out / "eval").iterdir()]
    import json
    res = json.loads((tag / "result.json").read_text())
    units = [load_file(tag / f"unit_{u:06d}.pt") for u in range(3)]
    return res, units, tag


@pytest.mark.slow
def test_eval_world_size_invariant_and_resumable(tiny_world, tmp_path):
    import shutil
    root, nat, common = tiny_world
    outs = []
    for nproc in (1, 2):
        out = tmp_path / f"w{nproc}"
        shutil.copytree(nat / "checkpoints", out / "checkpoints")
        outs.append((out, *_eval(nproc, out, common, "eval.save_png=6", f"eval.save_npz={nproc == 2}")))
    (o1, r1, u1, t1), (o2, r2, u2, t2) = outs
    assert r1["n"] == r2["n"] == 6
    assert r1["fid"] == pytest.approx(r2["fid"], rel=1e-4)
    for a, b in zip(u1, u2):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
        assert torch.allclose(a["feats"]["pool3"], b["feats"]["pool3"], atol=1e-4)
    assert u1[0]["labels"].tolist() == [0, 1]
    with np.load(t2 / "samples.npz") as z:  # ADM-style sample batch: uint8 NHWC RGB + labels
        assert z["arr_0"].shape == (6, 32, 32, 3) and z["arr_0"].dtype == np.uint8
        assert z["arr_1"].tolist() == [0, 1, 2, 3, 4, 5]
        assert (z["arr_0"][:2, ..., 0] == u1[0]["images"][:, 0].numpy()).all()
    assert len(list((t1 / "png").glob("*.png"))) == 6
    # resume: drop one finished unit, re-run with 2 processes: it is recomputed, the others are read back
    (t2 / "unit_000001.pt").unlink()
    p = run(torchrun_cmd(2, *common, "--mode", "eval", f"output_dir={o2}"))
    assert "resumed" in p.stderr
    import json
    assert json.loads((t2 / "result.json").read_text())["fid"] == pytest.approx(r2["fid"], rel=1e-6)


def test_random_token_and_reconstruction_sources(tiny_world, tmp_path):
    import json

    import train
    root, nat, common = tiny_world
    for src in ("reconstructions", "random_tokens"):
        assert train.main([*common, "--mode", "eval", f"output_dir={tmp_path}", f"eval.source={src}"]) == 0
    results = sorted((tmp_path / "eval").glob("*/result.json"))
    assert len(results) == 2 and all(json.loads(r.read_text())["fid"] > 0 for r in results)


def test_eval_without_checkpoint_is_clear(tiny_world, tmp_path, capsys):
    import train
    root, nat, common = tiny_world
    rc = train.main([*common, "--mode", "eval", f"output_dir={tmp_path}"])
    errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert rc == 2 and "no checkpoint" in errors[0]
