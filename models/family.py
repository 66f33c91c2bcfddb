"""The record through which the engine drives a model family without knowing its internals.

A family module (`models/<name>/family.py`) defines `FAMILY = Family(...)`; `models.get_family(name)` finds it through a
fixed table of lazy imports (or a dotted module path, for families that live outside this repository). The engine
reads nothing else of a family: which modes it supports follows from the fields it fills in.

  pretrain  always: `dataset` + `batches` + `loss`
  eval      needs `sample` (and `sample_settings`)
  search    needs `sample` and `search_space`
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
    set, turns a vector into the settings `Family.sample` takes, and writes a vector in its own file format.
    """
    names: list[str]        # one per coordinate (history columns)
    fd_step: np.ndarray     # float64[d]: finite-difference / SPSA probe size per coordinate
    lr: np.ndarray          # float64[d]: learning rate per coordinate
    suffix: str             # file suffix of `save`

    def initial(self) -> tuple[np.ndarray, str]: ...            # starting point and where it came from
    def clamp_point(self, x: np.ndarray) -> np.ndarray: ...     # after an optimiser step
    def clamp_probe(self, x: np.ndarray) -> np.ndarray: ...     # a probed point: still valid settings
    def settings(self, x: np.ndarray, source: str) -> Any: ...  # what Family.sample takes
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


@dataclass(frozen=True)
class Family:
    name: str
    # flavour name -> builder(**kwargs) -> nn.Module; kwargs are cfg.model minus 'flavour'
    flavours: dict[str, Callable[..., nn.Module]]
    # (cfg, split) -> the training dataset; it validates cfg.data (kind, path) and says what is wrong
    dataset: Callable[[Any, str], Any]
    # (dataset, cfg, step, rank, world) -> this rank's micro-batches of global step `step`, a pure function of
    # (cfg.seed, step, rank) so that a resumed run sees the batches of an uninterrupted one. Rows of tokens, images,
    # packs of variable-length sequences: whatever `loss` takes.
    batches: Callable[[Any, Any, int, int, int], Sequence[Any]]
    # (model, batch, ctx) -> (scalar loss, {name: float}); model may be DDP-wrapped: call it, read attributes of
    # `model.module`. The engine seeds the global torch RNG per (seed, rank, step, micro-batch) before the call.
    loss: Callable[[nn.Module, Any, TrainContext], tuple[torch.Tensor, dict]]
    # the family's own config sections and defaults (model/data/loss/sample/...), merged over configs/base.yaml
    config: str | None = None
    # official command-line flags of this family's README -> (config key, number of values)
    official_flags: dict = field(default_factory=dict)
    to_device: Callable[[Any, torch.device], Any] = tensors_to
    batch_rows: Callable[[Any], int] = first_dim
    # (model, labels Long[B], generators (one CPU torch.Generator per row), settings, size=None) -> what the
    # tokenizer decodes, row i a function of generators[i] alone. It owns its model-function wrappers (guidance,
    # feature reuse, KV cache). `size`: the requested image size (H, W) in pixels, None = the model's own; a family
    # with `sample_sizes` also takes a list of one (H, W) per row (several sizes in one batch) and then returns a
    # list of per-row samples, row i still a function of generators[i] (and its size) alone.
    # Settings that replay an official sampler's own random stream may draw the labels too: `sample` then returns
    # (samples, labels), and `settings.sequential` is True (one process, batches in order, no resumed units).
    sample: Callable[..., torch.Tensor] | None = None
    # (cfg, model) -> the settings object `sample` takes, validated once per run
    sample_settings: Callable[[Any, nn.Module], Any] | None = None
    # (cfg) -> the image sizes [(H, W), ...] one eval run samples, each with its own reference statistics (real
    # images brought to that size) and metrics; None: the family samples the one size its model has
    sample_sizes: Callable[[Any], list] | None = None
    # (model) -> the shape of one sample as `sample` returns it, e.g. the token grid (h, w)
    sample_shape: Callable[[nn.Module], tuple] | None = None
    # (model, cfg) -> number of real classes that eval labels are drawn from
    num_classes: Callable[[nn.Module, Any], int] | None = None
    # (ema, cfg, device, path) -> None: the periodic preview PNG (rank 0). None: a grid of `sample` outputs
    preview: Callable[..., None] | None = None
    # (cfg) -> SearchSpace over the settings of `sample`
    search_space: Callable[[Any], SearchSpace] | None = None
    # (model, cfg) -> AdamW parameter groups (e.g. no weight decay on biases and norms, frozen parts left out);
    # None: every parameter that requires grad, with train.weight_decay
    param_groups: Callable[[nn.Module, Any], list[dict]] | None = None
    # (step, cfg, engine_lr, param_groups) -> the LR of each optimizer group for the update that makes step + 1
    # (e.g. one group on its own decay while another stays constant); None: engine_lr (train.lr_schedule) for all
    group_lrs: Callable[[int, Any, float, list[dict]], list[float]] | None = None
    # (step, cfg) -> EMA decay of the update that makes step + 1; None: train.ema_decay at every step
    ema_decay: Callable[[int, Any], float] | None = None
    # (path, prefer_ema) -> the weights file inside a folder the family's official trainer writes (e.g. an
    # accelerate save_state folder); None: eval.pretrained_path must be a file
    weights_file: Callable[[str, bool], str] | None = None
    # bool, or (cfg) -> bool: DDP must tolerate parameters without a gradient in a step
    ddp_find_unused: bool | Callable[[Any], bool] = False
    # official flag -> the run mode it selects when the command names no run mode: flags that only the family's
    # official eval (or training) script has, so that its README commands run as written; a command whose flags
    # select two modes is an error that asks for --mode
    mode_flags: dict = field(default_factory=dict)
    # (cfg, (H, W), weights path) -> the name of the folder, inside eval.png_dir, that the family's official sampler writes one
    # run's PNGs into (named by its settings, so runs with other settings keep theirs); None: PNGs go into
    # eval.png_dir itself (a folder that holds another run's images is refused either way)
    sample_folder: Callable[[Any, tuple, str], str] | None = None
    # where the family's README gets the reference statistics of its metrics (named when they are missing)
    ref_stats_hint: str = ""
    # (cfg, mode) -> None: the family's own value checks (ranges of its keys and official flags, the files it will
    # read), run before any weights, data or process group are touched; raises ValueError naming the key or flag
    check_config: Callable[[Any, str], None] | None = None
    # (cfg, mode) -> None: keys the family derives from others (an official per-GPU batch x WORLD_SIZE, epochs ->
    # steps), set while the config loads: after the merge and the type checks, before the range checks run again
    # and the config is printed, so that the printed and checkpointed config is the one that runs. It may list a
    # data set, never read weights; raises ValueError naming the key or flag
    derive_config: Callable[[Any, str], None] | None = None
    # (model) -> [(name, owner, method name)]: the functions `sample` calls at every step, which sample.compile
    # replaces on the owner by their compiled versions (engine/compile_sampling.py); None: the model's forward
    compile_targets: Callable[[nn.Module], list] | None = None

    @property
    def modes(self) -> tuple[str, ...]:
        out = ["pretrain"]
        if self.sample is not None:
            out.append("eval")
            if self.search_space is not None:
                out.append("search")
        return tuple(out)

    def settings(self, cfg, model):
        return self.sample_settings(cfg, model) if self.sample_settings is not None else None
