"""The record through which the engine drives a model family without knowing its internals.

A family module (`models/<name>/family.py`) defines `FAMILY = Family(...)`; `models.get_family(name)` finds it through a
fixed table of lazy imports (or a dotted module path, for families that live outside this repository). The engine
reads nothing else of a family.

`Family` is a small core that every family has (its name, flavours, config file and official flags with their config
hooks, and what pretraining needs: dataset, batches, loss) plus two capability objects: `Training` (how the engine's
loop treats the family, every field with the engine's default) and `Sampling` (absent for a family that only
trains, e.g. a tokenizer). The run modes follow from them:

  pretrain  always
  eval      needs `sampling` (its `sample`)
  search    needs `sampling.search_space`
  edit      needs `sampling.edit`

A new capability field goes at the end of the object it concerns, with a default that keeps the old behaviour, so
that existing family records stay valid. README.md ("Adding a family") lists every field; tests/test_add_family.py
holds the list to the dataclasses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn


@dataclass
class TrainContext:
    """What a family's loss may need besides the model and the batch."""
    cfg: Any                      # the resolved OmegaConf config
    step: int = 0
    ema: nn.Module | None = None  # EMA copy (ENAT reuse training runs it to make previous-step features)


class SearchSpace(Protocol):
    """Sampler settings as a real vector, for the engine's generic "optimise settings against FID" loop.

    Coordinates have their own probe step and learning rate; the space clamps points and probes back into its valid
    set, turns a vector into the settings `Sampling.sample` takes, and writes a vector in its own file format.
    """
    names: list[str]        # one per coordinate (history columns)
    fd_step: np.ndarray     # float64[d]: finite-difference / SPSA probe size per coordinate
    lr: np.ndarray          # float64[d]: learning rate per coordinate
    suffix: str             # file suffix of `save`

    def initial(self) -> tuple[np.ndarray, str]: ...            # starting point and where it came from
    def clamp_point(self, x: np.ndarray) -> np.ndarray: ...     # after an optimiser step
    def clamp_probe(self, x: np.ndarray) -> np.ndarray: ...     # a probed point: still valid settings
    def settings(self, x: np.ndarray, source: str) -> Any: ...  # what Sampling.sample takes
    def save(self, x: np.ndarray, path) -> None: ...            # atomic write in the space's own format
    def identity(self) -> dict: ...                             # what a resumed search must agree on


def tensors_to(batch: dict, device: torch.device) -> dict:
    """The default `to_device`: every tensor of a flat dict, non-blocking."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def first_dim(batch: dict) -> int:
    """The default `batch_rows`: rows of the first tensor (images or sequences in a batch)."""
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            return int(v.shape[0])
    return 0



def never(*_) -> bool:
    """The default of the yes/no hooks (`Training.ddp_find_unused`, `Sampling.replays`)."""
    return False


def always(*_) -> bool:
    return True


def no_settings(cfg, model) -> None:
    """The default `Sampling.settings`: a sampler that takes no settings gets None."""
    return None


@dataclass(frozen=True)
class Training:
    """How the engine's training loop treats a family; every field has the engine's own behaviour as its default, so
    a family gives only what differs (`Family(training=Training(param_groups=...))`)."""
    # (batch, device) -> the batch on the device; default: every tensor of a flat dict
    to_device: Callable[[Any, torch.device], Any] = tensors_to
    # (batch) -> images in the batch (logged images/s); default: rows of its first tensor
    batch_rows: Callable[[Any], int] = first_dim
    # (model, cfg) -> AdamW parameter groups (e.g. no weight decay on biases and norms, frozen parts left out);
    # None: every parameter that requires grad, with train.weight_decay
    param_groups: Callable[[nn.Module, Any], list[dict]] | None = None
    # (step, cfg, engine_lr, param_groups) -> the LR of each optimizer group for the update that makes step + 1
    # (e.g. one group on its own decay while another stays constant); None: engine_lr (train.lr_schedule) for all
    group_lrs: Callable[[int, Any, float, list[dict]], list[float]] | None = None
    # (step, cfg) -> EMA decay of the update that makes step + 1; None: train.ema_decay at every step
    ema_decay: Callable[[int, Any], float] | None = None
    # (cfg) -> bool: DDP must tolerate parameters without a gradient in a step (`always` for a constant yes)
    ddp_find_unused: Callable[[Any], bool] = never
    # (ema, cfg, device, path) -> None: the periodic preview PNG (rank 0, train.sample_every). None: a grid of
    # `Sampling.sample` outputs decoded by the tokenizer (a family without sampling then makes no preview)
    preview: Callable[[nn.Module, Any, torch.device, Any], None] | None = None


@dataclass(frozen=True)
class Sampling:
    """How a family samples: what `--mode eval` (eval.source=samples), `--mode search` and the default training
    preview need. Two paths, each with one return type: `sample` (per-row randomness, the engine's labels) and
    `replay` (an official sampler's own single-process random stream, which may draw the labels itself)."""
    # (model, labels Long[B], generators (one CPU torch.Generator per row), settings, size=None) -> what the
    # tokenizer decodes, for these labels, row i a function of generators[i] alone. It owns its model-function
    # wrappers (guidance, feature reuse, KV cache). `size`: None (the model's own) or one (H, W) in pixels -> one
    # batch tensor; a list of one (H, W) per row (a family with `sizes`: several sizes in one batch) -> a list of
    # per-row samples, row i still a function of generators[i] (and its size) alone
    sample: Callable[..., Any]
    # (cfg, model) -> the settings object `sample` takes, built and checked once per run before any weights are
    # read: `model` is then built on the meta device (read its attributes, never its values). Raises ValueError
    # naming the key
    settings: Callable[[Any, nn.Module], Any] = no_settings
    # (settings) -> True when these settings replay an official sampler's single-process random stream: the engine
    # then calls `replay` instead of `sample` (one process, batches in order, no unit resumed, one size)
    replays: Callable[[Any], bool] = never
    # (model, labels Long[B], settings, size=None) -> (samples, labels) of the stream's next batch of B rows; the
    # labels are the given ones unless the official sampler draws them from its stream (then those). Given with
    # `replays`
    replay: Callable[..., tuple[Any, torch.Tensor]] | None = None
    # (cfg) -> the image sizes [(H, W), ...] one eval samples, each with its own reference statistics (real images
    # brought to that size) and metrics, checked against the model (ValueError naming the key); computed once per
    # run. None: the family samples the one size its model has (or eval.size)
    sizes: Callable[[Any], list] | None = None
    # (model) -> the shape of one sample as `sample` returns it, e.g. the token grid (h, w) (eval.source=random_tokens)
    shape: Callable[[nn.Module], tuple] | None = None
    # (model, cfg) -> number of real classes that eval labels are drawn from; None: data.num_classes
    num_classes: Callable[[nn.Module, Any], int] | None = None
    # (cfg) -> SearchSpace over the settings of `sample`; None: no --mode search
    search_space: Callable[[Any], SearchSpace] | None = None
    # (path, prefer_ema) -> the weights file inside a folder the family's official trainer writes (e.g. an
    # accelerate save_state folder), for eval.pretrained_path and train.init_from; None: they must name a file
    weights_file: Callable[[str, bool], str] | None = None
    # (cfg, (H, W) or None, weights path) -> the name of the folder, inside eval.png_dir, that the family's official
    # sampler writes one run's PNGs into (named by its settings, so runs with other settings keep theirs); None: PNGs
    # go into eval.png_dir itself (a folder that holds another run's images is refused either way)
    sample_folder: Callable[[Any, Any, str], str] | None = None
    # where the family's README gets the reference statistics of its metrics (named when they are missing)
    ref_stats_hint: str = ""
    # (model, known, keep, labels, generators, settings, size=None, tokenizer=None) -> the same type `sample`
    # returns for these arguments: images edited in the tokenizer's space (`tokenizer`: the one that made `known`,
    # for a family that must re-encode, e.g. the column AR's mirrored extension to the left). `known`: the tokenizer's encoding of the input images on
    # the output canvas (the layout `sample` returns); `keep`: Bool on the token/latent grid (known's shape without
    # channel dims; True = keep known exactly, False = regenerate). keep all False == `sample` with the same
    # generators, bit for bit; keep all True returns known exactly. None: no --mode edit
    edit: Callable[..., Any] | None = None
    # (model) -> [(name, owner, method name)]: the functions `sample` calls at every step, which sample.compile
    # replaces on the owner by their compiled versions (engine/compile_sampling.py); None: the model's forward
    compile_targets: Callable[[nn.Module], list] | None = None

    def __post_init__(self):
        if (self.replay is None) != (self.replays is never):
            raise TypeError("Sampling: `replays` and `replay` go together (settings that replay a stream need the "
                            "call that replays it)")


@dataclass(frozen=True)
class Family:
    """The core every family has, and its capabilities. `check_config` and `derive_config` belong to the core, beside
    the config file and the official flags whose values they check and complete: they run in every mode, while the
    config loads or before anything is read, whatever the family can do."""
    name: str
    # flavour name -> builder(**kwargs) -> nn.Module; kwargs are cfg.model minus 'flavour'
    flavours: dict[str, Callable[..., nn.Module]]
    # the family's own config sections and defaults (model/data/loss/sample/...), merged over configs/base.yaml;
    # relative to the repository root, or absolute
    config: str
    # (cfg, split) -> the training dataset; it validates cfg.data (kind, path) and says what is wrong
    dataset: Callable[[Any, str], Any]
    # (dataset, cfg, step, rank, world) -> this rank's micro-batches of global step `step`, a pure function of
    # (cfg.seed, step, rank) so that a resumed run sees the batches of an uninterrupted one. Rows of tokens, images,
    # packs of variable-length sequences: whatever `loss` takes.
    batches: Callable[[Any, Any, int, int, int], Sequence[Any]]
    # (model, batch, ctx) -> (scalar loss, {name: float}); model may be DDP-wrapped: call it, read attributes of
    # `model.module`. The engine seeds the global torch RNG per (seed, rank, step, micro-batch) before the call.
    loss: Callable[[nn.Module, Any, TrainContext], tuple[torch.Tensor, dict]]
    # official command-line flags of this family's README -> (config key, number of values[, value of a bare flag])
    official_flags: dict = field(default_factory=dict)
    # official flag -> the run mode it selects when the command names no run mode: flags that only the family's
    # official eval (or training) script has, so that its README commands run as written; a command whose flags
    # select two modes is an error that asks for --mode
    mode_flags: dict = field(default_factory=dict)
    # (cfg, mode) -> None: the family's own value checks (ranges of its keys and official flags, the files it will
    # read), run before any weights, data or process group are touched; raises ValueError naming the key or flag
    check_config: Callable[[Any, str], None] | None = None
    # (cfg, mode) -> None: keys the family derives from others (an official per-GPU batch x WORLD_SIZE, epochs ->
    # steps), set while the config loads: after the merge and the type checks, before the range checks run again
    # and the config is printed, so that the printed and checkpointed config is the one that runs. It may list a
    # data set, never read weights; raises ValueError naming the key or flag
    derive_config: Callable[[Any, str], None] | None = None
    training: Training = field(default_factory=Training)
    sampling: Sampling | None = None

    @property
    def modes(self) -> tuple[str, ...]:
        out = ["pretrain"]
        if self.sampling is not None:
            out.append("eval")
            if self.sampling.search_space is not None:
                out.append("search")
            if self.sampling.edit is not None:
                out.append("edit")
        return tuple(out)
