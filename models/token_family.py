"""What the two mask-predict families (NAT/AutoNAT and ENAT) share in their records: token datasets, the token
grid, the generation strategy from `cfg.sample`, and a sample function around samplers.mask_predict."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from samplers.strategy import Strategy

DATA_KINDS = ("tokens", "synthetic")

# flags both official NAT READMEs (AutoNAT, ENAT) share -> config keys
OFFICIAL_FLAGS = {
    "--gen_steps": ("sample.gen_steps", 1),
    "--searched_strategy": ("sample.strategy", 1),
    "--cfg_scale": ("sample.cfg_scale", 1),
    "--mask_temp": ("sample.mask_temp", 1),
    "--samp_temp": ("sample.samp_temp", 1),
    "--beta_alpha_beta": ("loss.beta_alpha_beta", 2),
    "--input_res": ("data.input_res", 1),
}
KNOBS = ("cfg_scale", "mask_temp", "samp_temp")
KNOB_DEFAULTS = {"cfg_scale": 0.0, "mask_temp": 1.0, "samp_temp": 1.0}  # the cosine schedule's when left null


def token_dataset(cfg, split: str = "train"):
    """data.kind tokens (an official-layout .npy token file) or synthetic (class-patterned random rows, tests)."""
    d = cfg.data
    if d.kind == "tokens":
        from datasets.tokens import TokenFile
        if not d.path:
            raise ValueError("data.path is empty: set it to a token .npy file (data.path=... on the command line)")
        return TokenFile(d.path)
    if d.kind == "synthetic":
        from datasets.tokens import SyntheticTokens
        return SyntheticTokens(int(d.synthetic_n), int(d.synthetic_seq_len), int(d.synthetic_vocab),
                               int(d.num_classes), seed=0)
    raise ValueError(f"family '{cfg.family}' trains on tokens: data.kind must be one of {', '.join(DATA_KINDS)}, "
                     f"got '{d.kind}'")


def token_grid(model: nn.Module) -> tuple[int, int]:
    net = getattr(model, "module", model)
    if hasattr(net, "grid"):
        return tuple(net.grid)
    s = int(math.isqrt(net.seq_len))
    return (s, s)


def null_label_classes(model: nn.Module, cfg) -> int:
    """Real classes = the null label's id (labels 0..null-1 are real)."""
    return int(getattr(model, "module", model).null_label)


def strategy_from_config(cfg) -> Strategy:
    """sample.strategy 'cosine' (ENAT/MaskGIT schedule from sample.cfg_scale/mask_temp/samp_temp) or a strategy YAML
    (AutoNAT format). A YAML fixes every per-step value, so the three knobs must then stay unset: a value given
    beside it would otherwise be silently ignored."""
    s = cfg.sample
    steps = int(s.gen_steps)
    if steps < 1:
        raise ValueError(f"sample.gen_steps must be >= 1, got {steps}")
    if str(s.strategy) == "cosine":
        knobs = {k: float(KNOB_DEFAULTS[k] if s[k] is None else s[k]) for k in KNOBS}
        return Strategy.enat_cosine(steps, knobs["cfg_scale"], knobs["mask_temp"], knobs["samp_temp"])
    given = [f"sample.{k}={s[k]}" for k in KNOBS if s[k] is not None]
    if given:
        raise ValueError(f"{', '.join(given)} has no effect with sample.strategy={s.strategy} (the strategy file "
                         f"sets every step's value): drop it, edit the strategy file, or use sample.strategy=cosine")
    return Strategy.from_yaml(s.strategy, gen_steps=steps)


def uses_guidance(strategy: Strategy) -> bool:
    return any(float(c) != 0.0 for c in strategy.cfg)


@dataclass(frozen=True)
class TokenSampling:
    """Settings of a mask-predict family's `sample`: the per-step strategy, (ENAT) temporal feature reuse, and the
    random stream. `stream` (sample.rng: official) replays the official single-process sampler (Sampling.replay): it
    carries on from call to call, so the samples depend on the order of the calls (`sequential`: one process, in
    order, no resume); with `stream_labels` the labels are drawn from it too, as the official AutoNAT eval does."""
    strategy: Strategy
    reuse: bool = False
    stream: object = None
    stream_labels: bool = False

    @property
    def sequential(self) -> bool:
        return self.stream is not None


def sampling_from_config(cfg, family: str, reuse: bool = False, stream_labels: bool = False) -> TokenSampling:
    from samplers.rng import sample_rng
    stream = None
    if sample_rng(cfg) == "official":
        from samplers.official_stream import OfficialStream
        stream = OfficialStream.for_family(family, int(cfg.seed))
    return TokenSampling(strategy_from_config(cfg), reuse=reuse, stream=stream, stream_labels=stream_labels)


def replays(settings) -> bool:
    """Sampling.replays: settings with an official stream (a bare Strategy, from the search, has none)."""
    return isinstance(settings, TokenSampling) and settings.stream is not None


@torch.no_grad()
def _codes(model_fn, model: nn.Module, labels: torch.Tensor, generators, strategy: Strategy, stream, rule: str,
           size) -> torch.Tensor:
    from samplers.mask_predict import sample
    if size is not None:
        raise ValueError(f"family of {type(model).__name__} samples its fixed token grid {token_grid(model)}; an "
                         f"image size ({size}) cannot be requested")
    tokens = sample(model_fn, labels, generators, seq_len=model.seq_len, codebook_size=model.codebook_size,
                    strategy=strategy, null_label=model.null_label if uses_guidance(strategy) else None, rule=rule,
                    rng=stream)
    return tokens.reshape(tokens.shape[0], *token_grid(model))


def mask_predict_grid(model_fn, model: nn.Module, labels: torch.Tensor, generators, settings, rule: str,
                      size=None) -> torch.Tensor:
    """Long[B, h, w] codes for the tokenizer, from samplers.mask_predict on the model's token grid, row i from
    generators[i] (Sampling.sample). `settings`: TokenSampling, or a bare Strategy (the search's)."""
    if isinstance(settings, Strategy):
        settings = TokenSampling(settings)
    if settings.stream is not None:
        raise ValueError("these settings replay the official sampler's stream (sample.rng=official): they go to the "
                         "family's replay, not to its per-row sample")
    return _codes(model_fn, model, labels, generators, settings.strategy, None, rule, size)


def mask_predict_replay(model_fn, model: nn.Module, labels: torch.Tensor, settings: TokenSampling, rule: str,
                        size=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, labels) of the official stream's next batch (Sampling.replay); with `stream_labels` the labels are
    drawn from the stream first, as the official AutoNAT eval does, else the given ones are kept."""
    stream = settings.stream
    if settings.stream_labels:
        labels = stream.labels(labels.shape[0], int(model.null_label), labels.device)
    return _codes(model_fn, model, labels, None, settings.strategy, stream, rule, size), labels


@torch.no_grad()
def mask_predict_edit(model_fn, model: nn.Module, known: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor,
                      generators, settings, rule: str, size=None) -> torch.Tensor:
    """Family.edit of the mask-predict families: MaskGIT editing on the model's fixed token grid. `known` Long[B, h, w]
    (the tokenizer's codes of the input on the model's canvas), `keep` Bool[B, h, w]: kept codes stay fixed from the
    first step, the others are predicted with the schedule counting only them (samplers.mask_predict). The grid is
    the model's, so outpainting means an image placed on a canvas of the model's size, never a larger grid."""
    from samplers.mask_predict import sample
    grid = token_grid(model)
    if size is not None:
        raise ValueError(f"family of {type(model).__name__} edits its fixed token grid {grid}; an image size "
                         f"({size}) cannot be requested: place the image on a canvas of the model's size")
    if isinstance(settings, Strategy):
        settings = TokenSampling(settings)
    if settings.stream is not None:
        raise ValueError("editing draws from per-row generators: sample.rng=official (the official sampler's "
                         "stream) cannot edit; use sample.rng=rows")
    b = labels.shape[0]
    if tuple(known.shape) != (b, *grid) or tuple(keep.shape) != (b, *grid):
        raise ValueError(f"known codes and keep mask must be [{b}, {grid[0]}, {grid[1]}] (the model's token grid), "
                         f"got {list(known.shape)} and {list(keep.shape)}")
    strategy = settings.strategy
    tokens = sample(model_fn, labels, generators, seq_len=model.seq_len, codebook_size=model.codebook_size,
                    strategy=strategy, null_label=model.null_label if uses_guidance(strategy) else None, rule=rule,
                    known=known.reshape(b, -1).long(), keep=keep.reshape(b, -1))
    return tokens.reshape(b, *grid)


def record_fields() -> dict:
    """The core Family fields the mask-predict families fill in alike."""
    from datasets.sampling import row_batches
    return dict(dataset=token_dataset, batches=row_batches)


def sampling_fields() -> dict:
    """The Sampling fields the mask-predict families fill in alike."""
    return dict(shape=token_grid, num_classes=null_label_classes, replays=replays)
