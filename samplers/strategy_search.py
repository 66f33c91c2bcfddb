"""AutoNAT's generation strategy as a search space (models.family.SearchSpace) for the engine's FID search.

The 4T−2 scalars in Strategy.to_vector order (ratios, mask_temp, samp_temp, cfg). Ratios have their own probe step
and learning rate (the official `--grad_estimate_step_size` / `--sche_lr`), every other scalar the "other" ones
(`--unb_grad_estimate_step_size` / `--unb_lr`). After a step ratios are clamped into [0, 0.99] and everything else
to >= 1e-4, as the official search does; a probed ratio may go up to just below 1, which samples exactly as the
official clamp to 1 does.
"""
from __future__ import annotations

import numpy as np

from samplers.strategy import SEARCH_MIN, SEARCH_RATIO_MAX, YAML_KEYS, Strategy

PROBE_RATIO_MAX = 1.0 - 1e-6  # floor(L·r) = L − 1 for any L < 1e6: the sampler then behaves as with r = 1


def vector_names(steps: int) -> list[str]:
    sizes = {"ratios": steps - 1, "mask_temp": steps - 1, "samp_temp": steps, "cfg": steps}
    return [f"{YAML_KEYS[k]}_{i}" for k, n in sizes.items() for i in range(n)]


def ratio_mask(steps: int) -> np.ndarray:
    return np.arange(4 * steps - 2) < steps - 1


def clamp_point(x: np.ndarray, is_ratio: np.ndarray) -> np.ndarray:
    return np.where(is_ratio, np.clip(x, 0.0, SEARCH_RATIO_MAX), np.maximum(x, SEARCH_MIN))


def clamp_probe(x: np.ndarray, is_ratio: np.ndarray) -> np.ndarray:
    """A probed point kept a valid strategy: ratios in [0, 1), the rest >= SEARCH_MIN."""
    return np.where(is_ratio, np.clip(x, 0.0, PROBE_RATIO_MAX), np.maximum(x, SEARCH_MIN))


class StrategySpace:
    suffix = ".yaml"

    def __init__(self, init: Strategy, *, fd_step_ratio: float, fd_step_other: float, lr_ratio: float,
                 lr_other: float):
        self.steps = init.steps
        self.init = init.clipped()
        self.is_ratio = ratio_mask(self.steps)
        self._hyper = {"fd_step_ratio": float(fd_step_ratio), "fd_step_other": float(fd_step_other),
                       "lr_ratio": float(lr_ratio), "lr_other": float(lr_other)}
        for key, v in self._hyper.items():
            if not v > 0:
                raise ValueError(f"search.{key} must be > 0, got {v}")
        self.fd_step = np.where(self.is_ratio, float(fd_step_ratio), float(fd_step_other))
        self.lr = np.where(self.is_ratio, float(lr_ratio), float(lr_other))
        self.names = vector_names(self.steps)

    def initial(self) -> tuple[np.ndarray, str]:
        return np.array(self.init.to_vector(), np.float64), self.init.source

    def clamp_point(self, x: np.ndarray) -> np.ndarray:
        return clamp_point(x, self.is_ratio)

    def clamp_probe(self, x: np.ndarray) -> np.ndarray:
        return clamp_probe(x, self.is_ratio)

    def settings(self, x: np.ndarray, source: str = "vector") -> Strategy:
        return Strategy.from_vector(x, self.steps, clip=False, source=source)

    def save(self, x: np.ndarray, path) -> None:
        self.settings(x).to_yaml(path)

    def identity(self) -> dict:
        return {"steps": self.steps, **self._hyper}
