import pytest
import torch
import torch.nn.functional as F

import models.nit.varlen_attention as va
from models.nit.model import FLAVOURS, pack_latents
from models.nit.varlen_attention import Segments, get_varlen_backend, varlen_attention, varlen_backend
from tests.nit_helpers import randomized

TORCH_PATHS = ["runs", "loop", "grouped", "dense"]


def _alone(q, k, v, lengths):
    """Each segment through plain softmax attention on its own (the definition)."""
    outs, s = [], 0
    for n in lengths:
        qs, ks, vs = (t[s:s + n].transpose(0, 1) for t in (q, k, v))  # (H, n, D)
        w = (qs @ ks.transpose(-1, -2) / qs.shape[-1] ** 0.5).softmax(-1)
        outs.append((w @ vs).transpose(0, 1))
        s += n
    return torch.cat(outs)


@pytest.mark.parametrize("backend", TORCH_PATHS + ["auto"])
def test_every_torch_path_is_block_diagonal_attention(backend):
    g = torch.Generator().manual_seed(0)
    lengths = [5, 5, 12, 1, 5, 12, 12, 3]
    n = sum(lengths)
    q, k, v = (torch.randn(n, 3, 8, generator=g) for _ in range(3))
    seg = Segments(lengths, torch.device("cpu"))
    out = varlen_attention(q, k, v, seg, backend=backend)
    torch.testing.assert_close(out, _alone(q, k, v, lengths), rtol=0, atol=1e-5)
    # one segment of the whole pack is ordinary attention
    whole = Segments([n], torch.device("cpu"))
    ref = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)).transpose(0, 1)
    torch.testing.assert_close(varlen_attention(q, k, v, whole, backend=backend), ref, rtol=0, atol=1e-5)


def test_gradients_agree_across_paths():
    g = torch.Generator().manual_seed(1)
    lengths = [4, 9, 4, 4]
    base = [torch.randn(21, 2, 8, generator=g) for _ in range(3)]
    grads = {}
    for name in ("runs", "loop", "dense"):
        qkv = [t.clone().requires_grad_() for t in base]
        varlen_attention(*qkv, Segments(lengths, torch.device("cpu")), backend=name).sin().sum().backward()
        grads[name] = [t.grad for t in qkv]
    for name in ("loop", "dense"):
        for a, b in zip(grads["runs"], grads[name]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_runs_batch_consecutive_equal_lengths():
    seg = Segments([4, 4, 9, 4, 1, 1, 1], torch.device("cpu"))
    assert seg.runs() == [(0, 4, 2), (8, 9, 1), (17, 4, 1), (21, 1, 3)]
    assert seg.cu_seqlens.dtype == torch.int32 and seg.cu_seqlens.tolist() == [0, 4, 8, 17, 21, 22, 23, 24]
    assert seg.max_seqlen == 9


def test_flash_is_not_used_for_cpu_or_fp32_and_switches_work(monkeypatch):
    calls = []
    monkeypatch.setattr(va, "_flash_fn", lambda *a: calls.append(a))
    q = torch.randn(6, 2, 8)
    assert not va.flash_usable(q)  # CPU fp32: the torch path, even with flash-attn importable
    varlen_attention(q, q, q, Segments([2, 4], torch.device("cpu")))
    assert calls == []
    before = get_varlen_backend()
    with varlen_backend("dense"):
        assert get_varlen_backend() == "dense"
    assert get_varlen_backend() == before
    with pytest.raises(ValueError, match="backend"):
        va.set_varlen_backend("xformers")
    with pytest.raises(ValueError, match="segments sum"):
        varlen_attention(q, q, q, Segments([2, 3], torch.device("cpu")))


@pytest.mark.parametrize("backend", ["runs", "loop", "grouped"])
def test_debug_network_pack_equals_alone_on_every_path(backend):
    torch.manual_seed(4)
    model = randomized(FLAVOURS["debug"]())
    lats = [torch.randn(32, 2, 5), torch.randn(32, 2, 5), torch.randn(32, 3, 3), torch.randn(32, 5, 2)]
    t, y = torch.tensor([0.3, 0.6, 0.2, 0.9]), torch.tensor([0, 1, 2, 1000])
    x, hw = pack_latents(lats)
    with torch.no_grad():
        with varlen_backend("dense"):
            ref = model(x, t, y, hw)
        with varlen_backend(backend):
            out = model(x, t, y, hw)
            alone = torch.cat([model(*pack_latents([lat])[:1], t[i:i + 1], y[i:i + 1], pack_latents([lat])[1])
                               for i, lat in enumerate(lats)])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out, alone, rtol=0, atol=1e-5)


def test_flash_call_contract(monkeypatch):
    """When flash-attn is usable it gets (q, k, v, cu_seqlens int32 x2, max_seqlen x2), as the official model calls it."""
    seen = {}

    def fake_flash(q, k, v, cu_q, cu_k, max_q, max_k):
        seen.update(cu_q=cu_q, cu_k=cu_k, max_q=max_q, max_k=max_k)
        return varlen_attention(q, k, v, Segments((cu_q[1:] - cu_q[:-1]).tolist(), q.device), backend="dense")

    monkeypatch.setattr(va, "_flash_fn", fake_flash)
    monkeypatch.setattr(va, "flash_usable", lambda q: True)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(9, 2, 8, generator=g) for _ in range(3))
    seg = Segments([2, 3, 4], torch.device("cpu"))
    out = varlen_attention(q, k, v, seg, backend="auto")
    assert seen["cu_q"].dtype == torch.int32 and seen["cu_q"].tolist() == [0, 2, 5, 9]
    assert seen["cu_k"] is seen["cu_q"] and seen["max_q"] == seen["max_k"] == 4
    torch.testing.assert_close(out, varlen_attention(q, k, v, seg, backend="loop"), rtol=0, atol=1e-5)
    seen.clear()
    varlen_attention(q, k, v, seg, backend="runs")  # an explicit torch path never goes to flash
    assert not seen
