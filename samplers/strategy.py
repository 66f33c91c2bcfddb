"""Per-step generation strategy of mask-predict sampling (AutoNAT's searched strategy, ENAT's cosine schedule).

For T steps:
  ratios    (T-1) fraction of ALL tokens still masked after steps 0..T-2 (after the last step: 0, implied)
  mask_temp (T-1) scale of the Gumbel noise added to the confidence at steps 0..T-2 (last step: none needed)
  samp_temp (T)   token-sampling temperature per step
  cfg       (T)   guidance scale s per step: logits = c + s·(c − u)  (s = 0: no guidance)

The YAML form is the official AutoNAT one: keys `manual_ratios`, `manual_temp`, `manual_samp_temp`, `manual_cfg`.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass

import yaml

YAML_KEYS = {"ratios": "manual_ratios", "mask_temp": "manual_temp", "samp_temp": "manual_samp_temp",
             "cfg": "manual_cfg"}
# AutoNAT's search keeps ratios in [0, 0.99] and every other value >= 1e-4
SEARCH_RATIO_MAX = 0.99
SEARCH_MIN = 1e-4


def _floats(values, name: str, source: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {name} must be a list of numbers, got {values!r}") from None
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{source}: {name} must be finite numbers, got {list(out)}")
    return out


@dataclass(frozen=True)
class Strategy:
    ratios: tuple[float, ...]
    mask_temp: tuple[float, ...]
    samp_temp: tuple[float, ...]
    cfg: tuple[float, ...]
    source: str = "Strategy"  # where the values came from, for error messages

    def __post_init__(self):
        for name in YAML_KEYS:
            object.__setattr__(self, name, _floats(getattr(self, name), name, self.source))
        t = len(self.samp_temp)
        if t < 1:
            raise ValueError(f"{self.source}: samp_temp ({YAML_KEYS['samp_temp']}) must have one value per step, "
                             "got none")
        expected = {"ratios": t - 1, "mask_temp": t - 1, "samp_temp": t, "cfg": t}
        for name, n in expected.items():
            if len(getattr(self, name)) != n:
                raise ValueError(f"{self.source}: {YAML_KEYS[name]} has {len(getattr(self, name))} values, expected "
                                 f"{n} for {t} steps (ratios/temp: T-1, samp_temp/cfg: T)")
        bad = [r for r in self.ratios if not 0.0 <= r < 1.0]
        if bad:
            raise ValueError(f"{self.source}: {YAML_KEYS['ratios']} must lie in [0, 1), got {bad}")
        for name in ("mask_temp", "samp_temp"):
            if any(v < 0 for v in getattr(self, name)):
                raise ValueError(f"{self.source}: {YAML_KEYS[name]} must be >= 0, got {list(getattr(self, name))}")

    # ------------------------------------------------------------------------------------------------- queries
    @property
    def steps(self) -> int:
        return len(self.samp_temp)

    def validate(self, gen_steps: int) -> "Strategy":
        if gen_steps != self.steps:
            raise ValueError(f"{self.source}: strategy has {self.steps} steps but gen_steps is {gen_steps}")
        return self

    def masked_after(self, seq_len: int) -> list[int]:
        """Target number of masked tokens after each step (floor(L·r); 0 after the last step), before the
        sampler's clamp max(1, min(#masked − 1, ·))."""
        return [math.floor(seq_len * r) for r in self.ratios] + [0]

    # -------------------------------------------------------------------------------------------- constructors
    @classmethod
    def from_dict(cls, d, source: str = "strategy") -> "Strategy":
        if not hasattr(d, "keys"):
            raise ValueError(f"{source}: expected a mapping with keys {sorted(YAML_KEYS.values())}, got {type(d)}")
        missing = [k for k in YAML_KEYS.values() if k not in d]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}; a strategy needs {list(YAML_KEYS.values())}")
        unknown = [k for k in d.keys() if k not in YAML_KEYS.values()]
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; a strategy has {list(YAML_KEYS.values())}")
        return cls(**{name: d[key] for name, key in YAML_KEYS.items()}, source=source)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, gen_steps: int | None = None) -> "Strategy":
        path = os.fspath(path)
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except OSError as e:
            raise ValueError(f"{path}: cannot read strategy file ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from None
        strategy = cls.from_dict(data if data is not None else {}, source=path)
        return strategy.validate(gen_steps) if gen_steps is not None else strategy

    def to_dict(self) -> dict:
        return {key: [float(v) for v in getattr(self, name)] for name, key in YAML_KEYS.items()}

    def to_yaml(self, path: str | os.PathLike) -> None:
        """Write the official-format YAML atomically (temp file in the same folder, then rename)."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".strategy-", suffix=".yaml.tmp")
        try:
            with os.fdopen(fd, "w") as f:
                yaml.safe_dump(self.to_dict(), f, default_flow_style=None, sort_keys=False)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def maskgit_init(cls, steps: int) -> "Strategy":
        """AutoNAT's search initialisation: cosine ratios, linearly decaying Gumbel temperature, sampling
        temperature 1, guidance ramping linearly to 1."""
        if steps < 1:
            raise ValueError(f"maskgit_init needs steps >= 1, got {steps}")
        grid = [i / steps for i in range(steps + 1)]  # linspace(0, 1, T+1)
        return cls(ratios=[math.cos(math.pi / 2 * g) for g in grid[1:-1]],
                   mask_temp=[1.0 - g for g in grid[:-2]],
                   samp_temp=[1.0] * steps,
                   cfg=grid[1:],
                   source=f"maskgit_init({steps})")

    @classmethod
    def enat_cosine(cls, steps: int, cfg_scale: float, mask_temp: float, samp_temp: float) -> "Strategy":
        """ENAT's schedule with rho = (s+1)/T: masked fraction cos(pi·rho/2), Gumbel temperature
        mask_temp·(1 − rho), sampling temperature max(samp_temp·(1 − rho), 1e-3), guidance (s/T)·cfg_scale."""
        if steps < 1:
            raise ValueError(f"enat_cosine needs steps >= 1, got {steps}")
        rho = [(s + 1) / steps for s in range(steps)]
        return cls(ratios=[math.cos(math.pi / 2 * r) for r in rho[:-1]],
                   mask_temp=[mask_temp * (1.0 - r) for r in rho[:-1]],
                   samp_temp=[max(samp_temp * (1.0 - r), 1e-3) for r in rho],
                   cfg=[s / steps * cfg_scale for s in range(steps)],
                   source=f"enat_cosine({steps}, cfg_scale={cfg_scale}, mask_temp={mask_temp}, "
                          f"samp_temp={samp_temp})")

    # ------------------------------------------------------------------------------------------------- search
    def to_vector(self) -> list[float]:
        """The 4T−2 searched scalars in a fixed order: ratios, mask_temp, samp_temp, cfg."""
        return [*self.ratios, *self.mask_temp, *self.samp_temp, *self.cfg]

    @classmethod
    def from_vector(cls, values, steps: int, clip: bool = True, source: str = "vector") -> "Strategy":
        values = [float(v) for v in values]
        if len(values) != 4 * steps - 2:
            raise ValueError(f"{source}: expected {4 * steps - 2} values for {steps} steps, got {len(values)}")
        k = steps - 1
        parts = values[:k], values[k:2 * k], values[2 * k:2 * k + steps], values[2 * k + steps:]
        if clip:
            parts = ([min(max(v, 0.0), SEARCH_RATIO_MAX) for v in parts[0]],
                     *[[max(v, SEARCH_MIN) for v in p] for p in parts[1:]])
        return cls(*parts, source=source)

    def clipped(self) -> "Strategy":
        """AutoNAT's search clamps: ratios into [0, 0.99], every other value >= 1e-4."""
        return Strategy.from_vector(self.to_vector(), self.steps, clip=True, source=self.source)
