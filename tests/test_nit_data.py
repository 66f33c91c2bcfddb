import json
import os

import pytest
import torch

from datasets.latent_writer import meta_line
from datasets.lpfhp import assign_indices, lpfhp, pack_lengths
from datasets.nit_meta import (read_data_meta, read_sampler_meta, sampler_meta_name, token_lengths,
                               write_data_meta, write_sampler_meta)
from datasets.nit_packs import NiTPackDataset, PackOrder, pack_for
from models.nit.model import pack_latents
from tests.nit_helpers import write_latent_dataset


def _hist(lengths, L):
    h = [0] * L
    for n in lengths:
        h[n - 1] += 1
    return h


# Worked by hand from the algorithm text (L = 8):
# A) 8 | 5,5 open with 3 free | the 3s close both (count 2 of 2) | last 3 opens [3] (5 free) | the 2 joins it
#    (offset 3 -> repeat min(1 + 3//2, 7) = 2, lowered to 1: one image left) | the 1 joins [3,2] (2 free).
# B) four 6s -> (4,[6]) 2 free; two 2s take 2 of them, (2,[6]) pushed back; three 1s: repeat 2 on one [6]
#    ((1,[6]) pushed back), the last 1 goes into the remaining [6] which stays open with 1 free.
# C) five 3s, nothing open: repeat min(8//3, 8) = 2 twice, then the remainder alone.
# D) max 2 per pack: five 1s -> (2,[1,1]) closed by the limit, then [1].
@pytest.mark.parametrize("lengths,max_per_pack,shapes,packs", [
    ([5, 5, 3, 3, 3, 2, 8, 1], None, [([8], 1), ([3, 5], 2), ([1, 2, 3], 1)], [[6], [4, 1], [3, 0], [7, 5, 2]]),
    ([6, 6, 6, 6, 2, 2, 1, 1, 1], None, [([2, 6], 2), ([1, 1, 6], 1), ([1, 6], 1)],
     [[5, 3], [4, 2], [8, 7, 1], [6, 0]]),
    ([3] * 5, None, [([3, 3], 2), ([3], 1)], [[4, 3], [2, 1], [0]]),
    ([1] * 5, 2, [([1, 1], 2), ([1], 1)], [[4, 3], [2, 1], [0]]),
])
def test_lpfhp_hand_worked(lengths, max_per_pack, shapes, packs):
    assert lpfhp(_hist(lengths, 8), 8, max_per_pack) == shapes
    assert assign_indices(lengths, shapes) == packs
    assert pack_lengths(lengths, 8, max_per_pack, verbose=False) == packs


def test_packing_is_a_partition_within_budget_and_prints_efficiency(capsys):
    g = torch.Generator().manual_seed(0)
    lengths = [int(v) for v in torch.randint(1, 65, (500,), generator=g)] + [64] * 50 + [256] * 20
    packs = pack_lengths(lengths, 512)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in p) <= 512 for p in packs)
    out = capsys.readouterr().out
    eff = sum(lengths) / (len(packs) * 512)
    assert f"packing efficiency {100 * eff:.2f}%" in out and eff > 0.95
    # split: chunks packed independently, indices never cross a chunk boundary
    packs = pack_lengths(lengths, 512, split=3, verbose=False)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    bounds = [0, 190, 380, 570]
    assert all(len({next(k for k in range(3) if bounds[k] <= i < bounds[k + 1]) for i in p}) == 1 for p in packs)


def test_too_long_image_is_named():
    with pytest.raises(ValueError, match="n01/big.safetensors has 20 tokens"):
        pack_lengths([4, 20], 16, names=["n01/a.safetensors", "n01/big.safetensors"])


README_LINES = [
    '{"image_file": "n01601694/n01601694_11629.JPEG", "latent_file": "n01601694/n01601694_11629.safetensors", '
    '"ori_w": 580, "ori_h": 403, "latent_h": 12, "latent_w": 18, "image_h": 384, "image_w": 576, '
    '"type": "native-resolution"}',
    '{"image_file": "n01601694/n01601694_11799.JPEG", "latent_file": "n01601694/n01601694_11799.safetensors", '
    '"ori_w": 500, "ori_h": 350, "latent_h": 10, "latent_w": 15, "image_h": 320, "image_w": 480, '
    '"type": "native-resolution"}']


def test_meta_files_round_trip(tmp_path):
    src = tmp_path / "dc-ae-f32c32-sana-1.1-diffusers_nr_meta.jsonl"
    src.write_text(README_LINES[0] + "\n\n" + README_LINES[1] + "\n")  # blank-separated as in the README
    entries = read_data_meta(str(src))
    assert token_lengths(entries) == [216, 150]
    out = tmp_path / "copy.jsonl"
    write_data_meta(str(out), entries)
    assert [json.loads(l) for l in out.read_text().splitlines()] == [json.loads(l) for l in README_LINES]
    # the project's own extractor writes the same fields
    mine = json.loads(meta_line("n0/x.JPEG", "fixed-256x256", 300, 200, 256, 256, 8, 8))
    assert list(mine) == list(json.loads(README_LINES[0]))
    assert sampler_meta_name(str(src), 16384) == "dc-ae-f32c32-sana-1.1-diffusers_nr_LPFHP_16384.json"
    write_sampler_meta(str(tmp_path / "s.json"), [[2, 0], [1]])
    assert read_sampler_meta(str(tmp_path / "s.json")) == [[2, 0], [1]]
    with pytest.raises(FileNotFoundError, match="pack_dataset.py"):
        read_sampler_meta(str(tmp_path / "missing.json"))


def test_pack_order_is_a_pure_strided_permutation():
    order = PackOrder(12, world=3, seed=5)
    assert order.steps_per_epoch == 4
    for epoch in range(2):
        perm = torch.randperm(12, generator=torch.Generator().manual_seed(5 + epoch)).tolist()
        for rank in range(3):
            got = [order(epoch * 4 + i, rank) for i in range(4)]
            assert got == perm[rank::3]
    assert pack_for(7, 2, 3, 5, 12) == order(7, 2)  # a fresh object (a resumed run) gives the same
    # not divisible: padded by wrapping, every pack seen in every epoch
    order = PackOrder(10, world=4, seed=0)
    seen = [order(s, r) for s in range(order.steps_per_epoch) for r in range(4)]
    assert set(seen) == set(range(10)) and len(seen) == 12


def test_dataset_reads_packs_and_flips_deterministically(tmp_path):
    shapes = [(2, 3), (4, 4), (2, 2), (3, 1)]
    root, meta, lats = write_latent_dataset(tmp_path, shapes, [3, 1, 4, 1])
    ds = NiTPackDataset(meta, [[1, 3], [0, 2]], root, max_seq_len=20, seed=7)
    b = ds.batch_for(step=3, rank=1, world=2)
    j = pack_for(3, 1, 2, 7, 2)
    pack = [[1, 3], [0, 2]][j]
    assert b["indices"].tolist() == pack
    x, hw = pack_latents([lats[i][int(f)] for i, f in zip(pack, b["flip"].tolist())])
    assert torch.equal(b["x"], x) and torch.equal(b["hw_list"], hw)
    assert b["label"].tolist() == [[3, 1, 4, 1][i] for i in pack]
    again = NiTPackDataset(meta, [[1, 3], [0, 2]], root, max_seq_len=20, seed=7).batch_for(3, 1, 2)
    assert torch.equal(again["x"], b["x"]) and torch.equal(again["flip"], b["flip"])
    flips = torch.stack([ds.batch_for(s, 0, 1)["flip"] for s in range(16)])
    assert 0 < flips.float().mean() < 1  # both the image and its flip get used
    # latent_dirs as a per-type mapping reads the same files
    dirs = {t: os.path.join(root, t) for t in ("native-resolution", "fixed-64x64", "fixed-128x128")}
    ds2 = NiTPackDataset(meta, [[1, 3], [0, 2]], dirs, max_seq_len=20, seed=7)
    assert torch.equal(ds2.batch_for(3, 1, 2)["x"], b["x"])


def test_dataset_errors_name_the_image(tmp_path):
    root, meta, _ = write_latent_dataset(tmp_path, [(2, 3), (4, 4)], [0, 1])
    with pytest.raises(ValueError, match=r"n01/img1.safetensors \(16 tokens"):
        NiTPackDataset(meta, [[0, 1]], root, max_seq_len=20)
    ds = NiTPackDataset(meta, [[0], [1]], root, max_seq_len=20)
    os.remove(ds.latent_path(1))
    with pytest.raises(FileNotFoundError, match="img1.safetensors"):
        ds.load_pack(1, torch.Generator())


def test_pack_dataset_cli(tmp_path, capsys):
    from scripts.pack_dataset import main
    shapes = [(2, 2)] * 5 + [(4, 4)] * 2 + [(3, 5)]
    root, meta, _ = write_latent_dataset(tmp_path, shapes, list(range(8)))
    assert main(["--data-meta", meta, "--max-seq-len", "32"]) == 0
    out = os.path.join(os.path.dirname(meta), "x_merge_LPFHP_32.json")
    packs = read_sampler_meta(out)
    assert packs == pack_lengths([4] * 5 + [16] * 2 + [15], 32, verbose=False)
    assert "packing efficiency" in capsys.readouterr().out
    ds = NiTPackDataset(meta, out, root, max_seq_len=32)
    assert sum(ds.batch_for(s)["x"].shape[0] for s in range(len(ds))) == 20 + 32 + 15
