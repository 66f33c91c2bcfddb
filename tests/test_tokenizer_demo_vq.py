import multiprocessing as mp
import os
import socket

import pytest

from core.loading import CheckpointError
import torch

from tokenizer import build_tokenizer
from tokenizer.demo_vq import DemoVQTokenizer, build_demo_vq, demo_vq_loss, demo_vq_training_loss


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth blobs, like padded Fashion-MNIST items: background -1 around a 28x28 centre
    x = torch.rand(n, 1, 7, 7, generator=g).repeat_interleave(4, 2).repeat_interleave(4, 3) * 2 - 1
    return torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)


def test_forward_backward_encode_decode_shapes():
    torch.manual_seed(0)
    m = build_demo_vq("debug")
    x = _images(4)
    recon, vq_loss, codes = m(x)
    assert recon.shape == x.shape and codes.shape == (4, 8, 8) and codes.dtype == torch.long
    loss, logs = demo_vq_training_loss(m, {"image": x, "label": torch.zeros(4, dtype=torch.long)})
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    assert {"mse", "vq", "psnr", "usage", "perplexity"} <= set(logs)
    # codebook buffers moved by the EMA update, and stay unit vectors
    assert torch.allclose(m.quantize.embed.norm(dim=1), torch.ones(32), atol=1e-5)
    tok = DemoVQTokenizer(m)
    c = tok.encode(x)
    assert c.shape == (4, 8, 8) and int(c.max()) < 32
    y = tok.decode(c)
    assert y.shape == (4, 1, 32, 32) and y.min() >= -1 and y.max() <= 1
    assert tok.kind == "discrete" and tok.codebook_size == 32 and tok.downsample == 4 and tok.in_channels == 1


def test_short_overfit_lowers_error_and_uses_codes():
    torch.manual_seed(0)
    m = build_demo_vq("debug")
    x = _images(16)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss, logs = demo_vq_loss(m, x)
        first = first if first is not None else logs["mse"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        tok = DemoVQTokenizer(m)
        mse = ((tok.decode(tok.encode(x)) - x) ** 2).mean().item()
        used = tok.encode(x).unique().numel()
    assert mse < 0.1 * first, (first, mse)
    assert used >= 8


def test_checkpoint_to_tokenizer(tmp_path):
    torch.manual_seed(0)
    m = build_demo_vq("debug")
    demo_vq_loss(m, _images(4))[0].backward()  # one EMA step so the buffers differ from init
    sd = {f"module.{k}": v for k, v in m.state_dict().items()}  # a DDP-prefixed save is accepted too
    path = tmp_path / "ckpt.pt"
    other = build_demo_vq("debug").state_dict()
    torch.save({"model": other, "ema": sd, "step": 1, "flavour": "debug",
                "config": {"model": {"flavour": "debug"}}}, path)
    tok = build_tokenizer("demo_vq", ckpt=str(path))  # prefers the EMA weights
    assert torch.equal(tok.model.quantize.embed, m.quantize.embed)
    live = DemoVQTokenizer.from_checkpoint(str(path), key="model")
    assert torch.equal(live.model.quantize.embed, other["quantize.embed"])
    x = _images(2)
    m.eval()
    with torch.no_grad():
        assert torch.equal(tok.encode(x), m.encode_codes(x))
    tok2 = build_tokenizer("demo_vq", state_dict=m.state_dict(), flavour="debug")
    assert torch.equal(tok2.encode(x), tok.encode(x))
    bad = dict(m.state_dict())
    bad.pop("quantize.cluster_size")
    with pytest.raises(CheckpointError, match="quantize.cluster_size"):
        DemoVQTokenizer.from_state_dict(bad, flavour="debug")


def _ddp_worker(rank, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from core import dist
    dist.init_distributed("cpu")
    torch.manual_seed(0)  # same init on both ranks; different data per rank below
    model = torch.nn.parallel.DistributedDataParallel(build_demo_vq("debug"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(3):
        loss, _ = demo_vq_loss(model, _images(4, seed=10 * rank + step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.module.state_dict(), os.path.join(out_dir, f"r{rank}.pt"))
    dist.destroy()


def test_ema_codebook_identical_across_ddp_ranks(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_ddp_worker, args=(r, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    a, b = (torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in range(2))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the statistics are a cross-rank average, so they are not rank 0's alone
    assert float(a["quantize.cluster_size"].sum()) > 0
