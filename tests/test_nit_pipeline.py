"""The pieces a NiT family record chains: packs -> loss -> optimiser step -> sampling, on CPU in seconds."""
import torch

from datasets.lpfhp import pack_lengths
from datasets.nit_meta import read_data_meta, token_lengths
from datasets.nit_packs import NiTPackDataset
from models.nit.model import FLAVOURS
from models.nit.loss import nit_loss, nit_optimizer
from models.nit.family import NiTSampling
from models.nit.sampling import sample_latents
from tests.nit_helpers import write_latent_dataset


def test_packs_train_and_sample(tmp_path):
    shapes = [(2, 2)] * 6 + [(4, 4)] * 2 + [(3, 5), (5, 3)]
    root, meta, _ = write_latent_dataset(tmp_path, shapes, list(range(10)), channels=4)
    packs = pack_lengths(token_lengths(read_data_meta(meta)), 32, verbose=False)
    ds = NiTPackDataset(meta, packs, root, max_seq_len=32, seed=1)
    torch.manual_seed(0)
    model = FLAVOURS["debug"](in_channels=4, num_classes=10).train()
    opt = nit_optimizer(model, lr=3e-3)
    g = torch.Generator().manual_seed(0)
    fixed = ds.batch_for(0)
    for step in range(30):
        batch = ds.batch_for(step)
        repa = torch.randn(batch["x"].shape[0], 48, generator=g)
        loss, logs = nit_loss(model, {**batch, "repa_target": repa}, generator=g)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    # on fixed draws (t, noise, no drop, no REPA) the trained model beats the fresh one (which predicts 0)
    noise = torch.randn(fixed["x"].shape, generator=torch.Generator().manual_seed(9))
    kw = dict(t=torch.full((len(fixed["label"]),), 0.5), noise=noise,
              drop=torch.zeros(len(fixed["label"]), dtype=torch.bool), repa_coeff=0.0)
    fresh = FLAVOURS["debug"](in_channels=4, num_classes=10)
    first, _ = nit_loss(fresh, fixed, **kw)
    last, _ = nit_loss(model, fixed, **kw)
    assert last.item() < first.item()
    model.eval()
    out = sample_latents(model, torch.tensor([1, 2]), [torch.Generator().manual_seed(s) for s in (0, 1)],
                         NiTSampling("sde", 4, 2.0, 0.0, 0.7, False, 64, 96, 32), (64, 96))
    assert out.shape == (2, 4, 2, 3) and torch.isfinite(out).all()
