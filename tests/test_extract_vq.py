import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import extract_imagenet_feature as extract
from datasets.imagefolder import list_image_folder, load_rgb
from datasets.transforms import center_crop_arr
from tokenizer.vqgan import VQGANTokenizer, build_vqmodel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RES = 32


def make_folder(root, per_class=10, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = os.path.join(root, "train", f"n{c:08d}")
        os.makedirs(d)
        for j in range(per_class):
            w, h = (int(v) for v in rng.integers(36, 80, 2))
            arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(d, f"img_{j:02d}.JPEG"), quality=90)
    with open(os.path.join(root, "train", "n00000001", "img_05b_broken.JPEG"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract_vq")
    make_folder(str(root / "data"))
    torch.manual_seed(0)
    torch.save({"state_dict": build_vqmodel("tiny").state_dict()}, root / "tiny.ckpt")
    return root


def _argv(root, out, *extra):
    return ["--path", str(root / "data"), "--split", "train", "--input_res", str(RES), "--vq_ckpt",
            str(root / "tiny.ckpt"), "--vq_config", "tiny", "--output", str(out), "--batch_size", "3",
            "--shard_size", "8", "--row_block", "4", "--num_workers", "0", "--no_progress", *extra]


def _torchrun(nproc, argv):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(REPO, "extract_imagenet_feature.py"), *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def test_one_vs_two_processes_and_resume(setup):
    root = setup
    out1 = root / "one" / "train.npy"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torchrun workers below run one thread each
    try:
        assert extract.main(_argv(root, out1)) == 0
    finally:
        torch.set_num_threads(threads)
    rows = np.load(out1)
    files, labels, _ = list_image_folder(str(root / "data" / "train"))
    good = [i for i, f in enumerate(files) if "broken" not in f]
    assert len(files) == 31 and len(good) == 30
    assert rows.dtype == np.int64 and rows.shape == (60, 1 + (RES // 4) ** 2)
    assert (root / "one" / "train_skipped.txt").read_text().split() == ["n00000001/img_05b_broken.JPEG"]
    assert not (root / "one" / ".train.npy.shards").exists()

    # row order: per block of 4 global indices, originals then flips; check against a direct encode
    tok = VQGANTokenizer.from_checkpoint(str(root / "tiny.ckpt"), "tiny")
    block = [i for i in good if i // 4 == 0]
    x = torch.stack([torch.from_numpy(center_crop_arr(load_rgb(str(root / "data" / "train" / files[i])), RES)
                                      .copy()).permute(2, 0, 1) for i in block]).float() / 255
    want = torch.cat([tok.encode_unit(x), tok.encode_unit(x.flip(-1))]).reshape(2 * len(block), -1).numpy()
    np.testing.assert_array_equal(rows[:2 * len(block), 1:], want)
    np.testing.assert_array_equal(rows[:2 * len(block), 0], [labels[i] for i in block] * 2)

    # two processes, stopped after one shard each, then resumed: same bytes as one process
    out2 = root / "two" / "train.npy"
    r = _torchrun(2, _argv(root, out2, "--max_shards", "1"))
    assert r.returncode != 0 and not out2.exists(), r.stderr[-2000:]
    shard_dir = root / "two" / ".train.npy.shards"
    assert sorted(p.name for p in shard_dir.glob("shard_*.npz")) == ["shard_000000.npz", "shard_000001.npz"]
    r = _torchrun(2, _argv(root, out2))
    assert r.returncode == 0, r.stderr[-3000:]
    assert out2.read_bytes() == out1.read_bytes()
    assert not shard_dir.exists()

    # a finished output is never rewritten
    mtime = os.stat(out1).st_mtime_ns
    assert extract.main(_argv(root, out1)) == 0
    assert os.stat(out1).st_mtime_ns == mtime


def _last_error(capsys) -> str:
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert lines and lines[-1].startswith("error: "), lines[-3:]
    return lines[-1]


def test_settings_change_is_refused(setup, capsys):
    root = setup
    out = root / "refuse" / "train.npy"
    assert extract.main(_argv(root, out, "--max_shards", "1")) == 3
    shards = sorted(p.name for p in (root / "refuse" / ".train.npy.shards").iterdir())
    argv = _argv(root, out)
    argv[argv.index("--input_res") + 1] = "64"
    assert extract.main(argv) == 2
    assert "differing: --input_res" in _last_error(capsys)
    assert sorted(p.name for p in (root / "refuse" / ".train.npy.shards").iterdir()) == shards  # kept for a re-run


def test_missing_checkpoint_is_a_clear_error(setup, tmp_path, capsys):
    argv = _argv(setup, tmp_path / "x.npy")
    argv[argv.index("--vq_ckpt") + 1] = str(tmp_path / "absent.ckpt")
    assert extract.main(argv) == 2
    assert "absent.ckpt" in _last_error(capsys) and not (tmp_path / "x.npy").exists()


def test_bad_checkpoint_leaves_no_shard_state(setup, tmp_path, capsys):
    """A run stopped by a bad checkpoint must not leave a manifest that blocks the next run with a good one."""
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes((setup / "tiny.ckpt").read_bytes()[:1000])
    argv = _argv(setup, tmp_path / "x.npy")
    argv[argv.index("--vq_ckpt") + 1] = str(bad)
    assert extract.main(argv) == 2
    msg = _last_error(capsys)
    assert "bad.ckpt" in msg and "truncated" in msg and "weights_only=False" not in msg
    assert not (tmp_path / ".x.npy.shards").exists()
    assert extract.main(_argv(setup, tmp_path / "x.npy")) == 0 and np.load(tmp_path / "x.npy").shape[0] == 60


def test_count_line_and_all_unreadable(tmp_path, setup, capsys):
    from loguru import logger
    seen = []
    sink = logger.add(seen.append, format="{message}", level="INFO")
    try:
        assert extract.main(_argv(setup, tmp_path / "ok.npy")) == 0
    finally:
        logger.remove(sink)
    assert any("encoded 30 images, skipped 1 unreadable: first n00000001/img_05b_broken.JPEG" in m for m in seen)
    for c in range(2):
        d = tmp_path / "junk" / "train" / f"n{c}"
        d.mkdir(parents=True)
        for j in range(3):
            (d / f"x{j}.JPEG").write_bytes(b"not an image")
    argv = _argv(setup, tmp_path / "junk.npy")
    argv[argv.index("--path") + 1] = str(tmp_path / "junk")
    assert extract.main(argv) == 2
    msg = _last_error(capsys)
    assert "junk/train" in msg and "none of the 6 image files" in msg and "n0/x0.JPEG" in msg
    assert not (tmp_path / "junk.npy").exists() and not (tmp_path / ".junk.npy.shards").exists()


def test_default_workers_fit_the_machine():
    assert 1 <= extract.default_workers() <= min(4, os.cpu_count())
    assert extract.parse_args([]).num_workers == extract.default_workers()
