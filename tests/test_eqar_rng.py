"""sample.rng of family eqar: `official` replays the release's single-process eval (noise stream after
torch.manual_seed(seed), labels i // (n / classes), full batches), checked against a re-statement of the release's
loop written here from its description; `per_row` keeps row i a function of generator i alone."""
import pytest
import torch

from core import dist
from core.seeding import row_generators
from engine.config import load_config
from models import build_model
from models.eqar.family import eqar_replay, eqar_sample, eqar_sample_settings


def _cfg(*over):
    return load_config("configs/debug/eqar_debug.yaml", list(over))


def _model(cfg):
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    with torch.no_grad():  # the head's output layers start at zero: give them weights so the noise matters
        for p in model.diffloss.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _release_batch(net, labels, bsz, num_iter, cfg, schedule, n_steps, randn=torch.randn):
    """One `sample_tokens` call of the release on the global generator: the whole zero-padded sequence every token,
    CFG by doubling with fake_latent, noise randn(bsz, C) shared by both halves, Euler z <- z + v * (-1/N) at
    t = i/N for i = N..1 with the guided half copied to both halves."""
    c = net.token_embed_dim
    tokens = torch.zeros(bsz, num_iter, c)
    for step in range(num_iter):
        emb = net.class_emb(labels)
        seq = tokens
        if cfg != 1.0:
            seq = torch.cat([tokens, tokens])
            emb = torch.cat([emb, net.fake_latent.repeat(bsz, 1)])
        z = net.features(seq, emb[:, None] + net.encoder_pos_embed_learned)[:, step]
        w = 1 + (cfg - 1) * (step + 1.0) / num_iter if schedule == "linear" else cfg
        noise = randn(bsz, c)
        x = torch.cat([noise, noise]) if cfg != 1.0 else noise
        for i in reversed(range(1, n_steps + 1)):
            t = torch.ones(x.shape[0]) * i / n_steps
            if cfg != 1.0:
                half = x[:bsz]
                out = net.diffloss.net(torch.cat([half, half]), t, z)
                cond, uncond = out.split(bsz)
                g = uncond + w * (cond - uncond)
                v = torch.cat([g, g])
            else:
                v = net.diffloss.net(x, t, z)
            x = x + v * (-1.0 / n_steps)
        tokens = tokens.clone()
        tokens[:, step] = x[:bsz]
    return tokens


def _release_eval(net, seed, n, bsz, class_num, **kw):
    torch.manual_seed(seed)
    labels_all = torch.cat([torch.arange(class_num).repeat_interleave(n // class_num), torch.zeros(n + bsz).long()])
    out = []
    for i in range(n // bsz + 1):
        lab = labels_all[i * bsz:(i + 1) * bsz]
        out.append((_release_batch(net, lab, bsz, **kw), lab))
    return out


@pytest.mark.parametrize("cfg_scale,schedule,cache", [(3.0, "linear", True), (1.0, "linear", True),
                                                      (2.0, "constant", False)])
def test_official_rng_replays_release_eval_loop(cfg_scale, schedule, cache):
    n, bsz = 20, 8  # batches 0-7, 8-15 and 16-19 (the release samples 16-23, rows 20-23 with class 0)
    cfg = _cfg("sample.rng=official", "seed=3", f"eval.n={n}", f"eval.batch_size={bsz}", f"sample.cfg={cfg_scale}",
               f"sample.cfg_schedule={schedule}", f"sample.use_cache={str(cache).lower()}", "tokenizer.vae_norm=0.5")
    model = _model(cfg)
    st = eqar_sample_settings(cfg, model)
    assert st.sequential and st.stream is not None
    with torch.random.fork_rng(devices=[]):
        want = _release_eval(model, 3, n, bsz, int(model.class_num), num_iter=st.num_tokens, cfg=cfg_scale,
                             schedule=schedule, n_steps=st.sampler.num_steps)
    torch.manual_seed(12345)  # the replay must not depend on (or read) the global generator
    for u, (ref_tokens, ref_labels) in enumerate(want):
        rows = min(bsz, n - u * bsz)
        balanced = torch.arange(u * bsz, u * bsz + rows) % 10  # what the engine hands in; replaced by the release's
        out, labels = eqar_replay(model, balanced, st)
        assert torch.equal(labels, ref_labels[:rows])
        assert torch.allclose(out * 0.5, ref_tokens[:rows], atol=1e-5), (u, (out * 0.5 - ref_tokens[:rows]).abs().max())
    assert st.stream.rows_done == n


def test_per_row_unchanged_by_the_option():
    """Default per_row: row i draws one randn(C) per token from generator i; the labels are the given ones."""
    cfg = _cfg("sample.cfg=3.0", "tokenizer.vae_norm=0.5")
    model = _model(cfg)
    st = eqar_sample_settings(cfg, model)
    assert not st.sequential and st.stream is None
    labels = torch.tensor([3, 1, 4])
    out = eqar_sample(model, labels, row_generators(5, [7, 8, 9]), st)
    assert torch.is_tensor(out)
    # row 1 alone, with the same generator, gives the same row (no cross-row randomness)
    one = eqar_sample(model, labels[1:2], row_generators(5, [8]), st)
    assert torch.allclose(one[0], out[1], atol=1e-5)
    # and the row is the release's loop with its noise taken from that row's generator
    gens = row_generators(5, [7, 8, 9])
    net, c = model, model.token_embed_dim
    noises = [[torch.randn(c, generator=g) for _ in range(st.num_tokens)] for g in gens]
    calls = iter(range(st.num_tokens))

    def per_row_randn(b, c):
        k = next(calls)
        return torch.stack([noises[r][k] for r in range(b)])
    ref = _release_batch(net, labels, 3, st.num_tokens, 3.0, "linear", st.sampler.num_steps, randn=per_row_randn)
    assert torch.allclose(out * 0.5, ref, atol=1e-5)


def test_official_rng_refuses_several_processes_and_bad_values(monkeypatch):
    cfg = _cfg("sample.rng=official", "eval.n=20")
    model = _model(cfg)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="run with 1 process, not 2"):
        eqar_sample_settings(cfg, model)
    monkeypatch.setattr(dist, "world_size", lambda: 1)
    with pytest.raises(ValueError, match="sample.rng must be one of per_row, official"):
        eqar_sample_settings(_cfg("sample.rng=global"), model)
    with pytest.raises(ValueError, match="divisible by class_num"):
        eqar_sample_settings(_cfg("sample.rng=official", "eval.n=15"), model)
