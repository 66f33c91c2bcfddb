import pytest
import torch
from torch import nn

from engine import checkpoint as ck


def test_crash_during_write_keeps_previous(tmp_path, monkeypatch):
    p = tmp_path / "checkpoints" / "step_0000001.pt"
    ck.atomic_save({"step": 1, "w": torch.ones(3)}, p)
    real_save = torch.save

    def exploding_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError):
        ck.atomic_save({"step": 2}, p)
    monkeypatch.setattr(torch, "save", real_save)
    assert ck.load_file(p)["step"] == 1
    assert [x.name for x in (tmp_path / "checkpoints").iterdir()] == ["step_0000001.pt"]


def test_truncated_file_is_a_clear_error(tmp_path):
    p = tmp_path / "c.pt"
    ck.atomic_save({"w": torch.ones(100)}, p)
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(ck.CheckpointError, match="c.pt: cannot be read"):
        ck.load_file(p)


def test_missing_and_unexpected_keys_named():
    m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    sd = m.state_dict()
    sd.pop("1.bias")
    sd["2.weight"] = torch.zeros(1)
    with pytest.raises(ck.CheckpointError, match=r"missing key.*1\.bias.*unexpected key.*2\.weight"):
        ck.load_strict(m, sd, "x.pt")


def test_containers_unwrapped():
    m = nn.Linear(2, 2)
    sd = m.state_dict()
    assert ck.extract_state_dict(sd).keys() == sd.keys()
    assert ck.extract_state_dict({f"module.{k}": v for k, v in sd.items()}).keys() == sd.keys()
    assert ck.extract_state_dict({"state_dict": sd}).keys() == sd.keys()
    both = {"model": {k: v + 1 for k, v in sd.items()}, "model_ema": sd, "epoch": 3}
    assert torch.equal(ck.extract_state_dict(both)["weight"], sd["weight"])
    assert torch.equal(ck.extract_state_dict(both, prefer_ema=False)["weight"], sd["weight"] + 1)
    with pytest.raises(ck.CheckpointError, match="no state dict"):
        ck.extract_state_dict({"epoch": 1}, source="f.pth")


def test_family_mismatch():
    with pytest.raises(ck.CheckpointError, match="is a 'enat' checkpoint.*family 'nat'"):
        ck.check_family({"family": "enat", "flavour": "debug"}, "nat", "debug", "f.pt")
