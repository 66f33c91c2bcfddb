"""--mode search: AutoNAT's generation-strategy search (forward finite differences + SGD with momentum on FID).

The 4T-2 strategy scalars (samplers.Strategy.to_vector order: ratios, mask_temp, samp_temp, cfg) are optimised for
a fixed generator. Update k:
  1. base: FID of the current point x_k;
  2. for every coordinate j: FID at x_k + h_j·e_j (h = fd_step_ratio for ratios, fd_step_other otherwise; a perturbed
     ratio stays below 1, which samples exactly as the official clamp to 1 does), g_j = (FID_j − base) / (x'_j − x_j);
  3. g (or the SPSA estimate, below) clamped elementwise to ±clip_grad (if > 0); SGD with momentum as
     torch.optim.SGD does it (v = m·v + g, x −= lr·v; lr_ratio for ratios, lr_other otherwise); ratios clamped
     into [0, 0.99], everything else to >= 1e-4.
Updates k = 0 .. max_upd; the last one only evaluates, so stp_{max_upd} has an FID as in the official code:
(1 + d)·max_upd + 1 evaluations of search.eval_n images (null = eval.n, i.e. --eval_n).

Beyond the official code:
  - search.gradient=spsa: simultaneous-perturbation estimate instead of one probe per coordinate. Each of
    search.spsa_pairs pairs evaluates x ± h⊙Δ with Δ a Rademacher (±1) vector drawn from (seed, update, pair), and
    g_j = mean over pairs of (FID(x+) − FID(x−)) / (x+_j − x−_j). Every evaluation informs every coordinate, which
    matters when each FID carries noise of the size of a one-coordinate difference (small eval_n, few tokens): one
    update costs 2·pairs evaluations instead of 4T−2, and E[g] is the central-difference gradient;
  - common random numbers: all evaluations of update k share labels and per-sample noise, derived from (seed, k);
    update k+1 draws new ones, so the differences measure the strategy and not the noise
    (search.common_random_numbers=false: fresh noise for every evaluation, as the official search does);
  - search.budget_images: update k computes its gradient only if the gradient and the next base evaluation fit in
    the budget; otherwise the search stops after the base evaluation;
  - resume: after every base evaluation and every step the state (point, momentum buffer, FIDs, image count) is
    written atomically to search_state.json; a re-run continues from it and produces the same numbers.

Outputs in output_dir: searched_strategies/stp_{k}.yaml (official format) and best.yaml, search_history.csv (one row
per update: update, fid, best_fid, best_update, images, seconds, then the vector), search_state.json.

Objective protocol (injectable for tests): `objective(strategy, seed) -> fid`, a collective call on every rank that
returns the same float everywhere. The default, FIDObjective, lets every rank generate its share of images.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from engine import dist
from engine.config import to_yaml
from engine.generate import build_strategy
from engine.logging import logger, setup_logging
from samplers.strategy import SEARCH_MIN, SEARCH_RATIO_MAX, YAML_KEYS, Strategy

FORMAT = "autonat-search-v1"
STATE_FILE, HISTORY_FILE, STRATEGY_DIR = "search_state.json", "search_history.csv", "searched_strategies"
PROBE_RATIO_MAX = 1.0 - 1e-6  # floor(L·r) = L − 1 for any L < 1e6: the sampler then behaves as with r = 1
SEED_BITS = 40                # engine.generate.sample_generators multiplies the seed by ~2^20
FLOAT_SETTINGS = ("fd_step_ratio", "fd_step_other", "lr_ratio", "lr_other", "momentum", "clip_grad")
SETTINGS = ("steps", "eval_n", "seed", "common_random_numbers", "labels", "precision", "gradient", "spsa_pairs",
            *FLOAT_SETTINGS)
GRADIENTS = ("fd", "spsa")


# ------------------------------------------------------------------------------------------------- the optimiser
@dataclass(frozen=True)
class Hyper:
    is_ratio: np.ndarray  # bool[d]
    fd_step: np.ndarray   # float64[d]
    lr: np.ndarray        # float64[d]
    momentum: float
    clip_grad: float

    @classmethod
    def from_config(cls, sc, steps: int) -> "Hyper":
        is_ratio = np.arange(4 * steps - 2) < steps - 1
        pick = lambda r, o: np.where(is_ratio, float(r), float(o))  # noqa: E731
        for key in ("fd_step_ratio", "fd_step_other", "lr_ratio", "lr_other"):
            if not float(sc[key]) > 0:
                raise ValueError(f"search.{key} must be > 0, got {sc[key]}")
        if not 0.0 <= float(sc.momentum) < 1.0 or float(sc.clip_grad) < 0:
            raise ValueError(f"search.momentum must be in [0, 1) and search.clip_grad >= 0, got "
                             f"{sc.momentum}, {sc.clip_grad}")
        return cls(is_ratio, pick(sc.fd_step_ratio, sc.fd_step_other), pick(sc.lr_ratio, sc.lr_other),
                   float(sc.momentum), float(sc.clip_grad))


def clamp_point(x: np.ndarray, is_ratio: np.ndarray) -> np.ndarray:
    return np.where(is_ratio, np.clip(x, 0.0, SEARCH_RATIO_MAX), np.maximum(x, SEARCH_MIN))


def clamp_probe(x: np.ndarray, is_ratio: np.ndarray) -> np.ndarray:
    """A probed point kept a valid strategy: ratios in [0, 1), the rest >= SEARCH_MIN."""
    return np.where(is_ratio, np.clip(x, 0.0, PROBE_RATIO_MAX), np.maximum(x, SEARCH_MIN))


def probe_point(x: np.ndarray, j: int, hp: Hyper) -> np.ndarray:
    xp = x.copy()
    xp[j] += hp.fd_step[j]
    return clamp_probe(xp, hp.is_ratio)


def fd_gradient(f, x: np.ndarray, base: float, hp: Hyper, progress: bool = False) -> np.ndarray:
    """Forward differences (f(x + h_j e_j) − base) / (actual step), one evaluation of f per coordinate."""
    g = np.zeros_like(x)
    for j in tqdm(range(x.shape[0]), disable=not progress, leave=False, desc="gradient"):
        xp = probe_point(x, j, hp)
        g[j] = (_finite(f(xp, j), f"probe {j}") - base) / (xp[j] - x[j])
    return g


def spsa_directions(seed: int, update: int, pairs: int, d: int) -> np.ndarray:
    """Rademacher directions [pairs, d] of one update, a function of (seed, update) only (so a resume redraws them)."""
    key = f"autonat-search-spsa:{int(seed)}:{int(update)}".encode()
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
    return rng.integers(0, 2, size=(pairs, d)).astype(np.float64) * 2.0 - 1.0


def spsa_gradient(f, x: np.ndarray, delta: np.ndarray, hp: Hyper, progress: bool = False) -> np.ndarray:
    """mean_p (f(x+_p) − f(x−_p)) / (x+_p − x−_p), elementwise; a coordinate that the clamps left unmoved in a pair
    contributes 0 for that pair (its difference carries no information about it)."""
    g = np.zeros_like(x)
    for p in tqdm(range(delta.shape[0]), disable=not progress, leave=False, desc="spsa"):
        xp, xm = (clamp_probe(x + s * hp.fd_step * delta[p], hp.is_ratio) for s in (1.0, -1.0))
        df = _finite(f(xp, 2 * p), f"pair {p} (+)") - _finite(f(xm, 2 * p + 1), f"pair {p} (-)")
        dx = xp - xm
        moved = np.abs(dx) > 0
        g[moved] += df / dx[moved]
    return g / delta.shape[0]


def momentum_step(x: np.ndarray, v: np.ndarray, g: np.ndarray, hp: Hyper) -> tuple[np.ndarray, np.ndarray]:
    if hp.clip_grad > 0:
        g = np.clip(g, -hp.clip_grad, hp.clip_grad)
    v = hp.momentum * v + g
    return clamp_point(x - hp.lr * v, hp.is_ratio), v


def evaluation_seed(seed: int, update: int, probe: int | None = None) -> int:
    """Noise/label seed of one evaluation: (seed, update) with common random numbers, else (seed, update, probe)."""
    key = f"autonat-search:{int(seed)}:{int(update)}" + ("" if probe is None else f":{int(probe)}")
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & ((1 << SEED_BITS) - 1)


def _finite(v, what: str) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise FloatingPointError(f"search objective returned {v} at {what}")
    return v


# ----------------------------------------------------------------------------------------------- configuration
def search_eval_n(cfg) -> int:
    n = cfg.search.eval_n if cfg.search.eval_n is not None else cfg.eval.n
    if int(n) < 2:
        raise ValueError(f"search.eval_n (or eval.n / --eval_n when it is null) must be >= 2 for an FID, got {n}")
    return int(n)


def initial_strategy(cfg) -> Strategy:
    """search.init: auto (sample.strategy when it is a YAML file, else maskgit) | maskgit | sample | <file.yaml>."""
    init, steps = str(cfg.search.init), int(cfg.sample.gen_steps)
    if init == "auto":
        init = "maskgit" if str(cfg.sample.strategy) == "cosine" else "sample"
    if init == "maskgit":
        return Strategy.maskgit_init(steps)
    if init == "sample":
        return build_strategy(cfg, cfg.family).validate(steps)
    return Strategy.from_yaml(init, gen_steps=steps)


def vector_names(steps: int) -> list[str]:
    sizes = {"ratios": steps - 1, "mask_temp": steps - 1, "samp_temp": steps, "cfg": steps}
    return [f"{YAML_KEYS[k]}_{i}" for k, n in sizes.items() for i in range(n)]


# ------------------------------------------------------------------------------------------------ the objective
class FIDObjective:
    """FID of `n` generated images against eval.ref_stats (collective: each rank generates its eval.batch_size units).

    Sample i of an evaluation with seed s has its label and noise from (s, i) only, so the value does not depend on
    the number of processes.
    """

    def __init__(self, cfg, device, n: int):
        from engine import evaluate as ev_mod
        # the strategies come from the search; sample.strategy only has to build (cosine always does)
        self.cfg = OmegaConf.merge(cfg, {"eval": {"source": "samples", "precision": cfg.search.precision},
                                         "sample": {"strategy": "cosine"}})
        ref = ev_mod.ensure_ref_stats(self.cfg, device)
        self.src = ev_mod.ImageSource(self.cfg, device)
        self.ev = ev_mod.build_evaluator(self.cfg, device, ref)
        self.device, self.n, self.bs = device, n, int(cfg.eval.batch_size)
        self.units = ev_mod.my_units(n, self.bs)
        self.weights = self.src.weights

    def __call__(self, strategy: Strategy, seed: int) -> float:
        self.ev.reset()
        for u in self.units:
            idx = list(range(u * self.bs, min(self.n, (u + 1) * self.bs)))
            self.ev.update(self.src(idx, strategy, seed)[0], index=idx)
        return float(self.ev.compute()["fid"])


# ---------------------------------------------------------------------------------------------- state and files
@dataclass
class SearchState:
    update: int
    x: list
    momentum: list
    fid: float | None  # FID of x at `update`; None until that base evaluation is done
    best_fid: float | None
    best_update: int | None
    images: int
    seconds: float
    settings: dict
    format: str = FORMAT


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_state(path: Path, settings: dict) -> SearchState | None:
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        state = SearchState(**raw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a search state file ({e}); delete it to restart the search") from None
    if state.format != FORMAT:
        raise ValueError(f"{path}: format {state.format!r}, expected {FORMAT!r}")
    for key in SETTINGS:
        if state.settings.get(key) != settings[key]:
            raise ValueError(f"{path}: this search was started with {key}={state.settings.get(key)!r} but the config "
                             f"now gives {settings[key]!r}; resume with the same settings or use another output_dir")
    return state


def _read_history(path: Path, keep) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if keep(int(r["update"]))]


def _write_history(path: Path, rows: list[dict], names: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["update", "fid", "best_fid", "best_update", "images", "seconds", *names])
    w.writeheader()
    w.writerows(rows)
    _atomic_write(path, buf.getvalue())


def _on_main(fn):
    """fn() on rank 0, its result (or its ValueError) on every rank: no rank is left waiting in a collective."""
    res, err = None, None
    if dist.is_main():
        try:
            res = fn()
        except ValueError as e:
            err = str(e)
    res, err = dist.broadcast_object((res, err))
    if err is not None:
        raise ValueError(err)
    return res


# ----------------------------------------------------------------------------------------------------- the loop
def search(cfg, objective=None) -> dict:
    device = dist.init_distributed(cfg.device)
    out = Path(cfg.output_dir)
    setup_logging(str(out))
    logger.info("config:\n" + to_yaml(cfg))
    sc, steps, n = cfg.search, int(cfg.sample.gen_steps), search_eval_n(cfg)
    hp = Hyper.from_config(sc, steps)
    d, max_upd, budget = 4 * steps - 2, int(sc.max_upd), int(sc.budget_images)
    crn, seed = bool(sc.common_random_numbers), int(cfg.seed)
    kind, pairs = str(sc.gradient), int(sc.spsa_pairs)
    if kind not in GRADIENTS or pairs < 1:
        raise ValueError(f"search.gradient must be one of {GRADIENTS} (got {kind!r}) and search.spsa_pairs >= 1 "
                         f"(got {pairs})")
    grad_evals = d if kind == "fd" else 2 * pairs
    settings = {"steps": steps, "eval_n": n, "seed": seed, "common_random_numbers": crn,
                "labels": str(cfg.eval.labels), "precision": str(sc.precision), "gradient": kind,
                "spsa_pairs": pairs if kind == "spsa" else None, **{k: float(sc[k]) for k in FLOAT_SETTINGS}}
    if budget and budget < n:
        raise ValueError(f"search.budget_images {budget} is smaller than one evaluation (search.eval_n {n})")
    state = _on_main(lambda: load_state(out / STATE_FILE, settings))
    if state is None:
        init = initial_strategy(cfg).clipped()
        state = SearchState(0, init.to_vector(), [0.0] * d, None, None, None, 0, 0.0, settings)
        logger.info(f"search: new, {d} scalars from {init.source}, {n} images per evaluation, "
                    f"{'common' if crn else 'independent'} random numbers, gradient "
                    f"{'by finite differences' if kind == 'fd' else f'by SPSA with {pairs} pairs'} "
                    f"({grad_evals} evaluations per update)")
    else:
        logger.info(f"search: resuming at update {state.update} ({state.images} images generated so far)")
    if objective is None:
        objective = FIDObjective(cfg, device, n)
        logger.info(f"search objective: FID-{n} against {cfg.eval.ref_stats}, generator {objective.weights}")
    names, sdir = vector_names(steps), out / STRATEGY_DIR
    rows = []
    if dist.is_main():
        rows = _read_history(out / HISTORY_FILE, lambda u: u < state.update or (u == state.update and state.fid
                                                                                 is not None))

    def evaluate(x: np.ndarray, update: int, probe: int) -> float:
        strategy = Strategy.from_vector(x, steps, clip=False, source=f"search update {update} probe {probe}")
        return objective(strategy, evaluation_seed(seed, update, None if crn else probe))

    def save() -> None:
        state.seconds = time.time() - t0
        if dist.is_main():
            _atomic_write(out / STATE_FILE, json.dumps(asdict(state), indent=1))

    t0, stopped = time.time() - state.seconds, None
    while stopped is None:
        k, x, v = state.update, np.array(state.x, np.float64), np.array(state.momentum, np.float64)
        t_upd = time.time()
        if state.fid is None:
            if budget and state.images + n > budget:
                stopped = "budget"
                break
            state.fid = _finite(evaluate(x, k, -1), f"update {k} (base)")
            state.images += n
            if state.best_fid is None or state.fid < state.best_fid:
                state.best_fid, state.best_update = state.fid, k
                if dist.is_main():
                    Strategy.from_vector(x, steps, clip=False).to_yaml(sdir / "best.yaml")
            save()
            if dist.is_main():
                Strategy.from_vector(x, steps, clip=False).to_yaml(sdir / f"stp_{k}.yaml")
                rows.append({"update": k, "fid": state.fid, "best_fid": state.best_fid,
                             "best_update": state.best_update, "images": state.images,
                             "seconds": round(state.seconds, 3), **dict(zip(names, x.tolist()))})
                _write_history(out / HISTORY_FILE, rows, names)
        summary = (f"search upd {k}/{max_upd}: fid {state.fid:.4f} | best {state.best_fid:.4f} (upd "
                   f"{state.best_update}) | images {state.images}{f'/{budget}' if budget else ''}")
        if k >= max_upd:
            stopped = "max_upd"
        elif budget and state.images + (grad_evals + 1) * n > budget:
            stopped = "budget"
        if stopped is not None:
            logger.info(summary)
            break
        base = state.fid
        if kind == "fd":
            g = fd_gradient(lambda xp, j: evaluate(xp, k, j), x, base, hp, progress=dist.is_main())
        else:
            g = spsa_gradient(lambda xp, j: evaluate(xp, k, j), x, spsa_directions(seed, k, pairs, d), hp,
                              progress=dist.is_main())
        x, v = momentum_step(x, v, g, hp)
        state = SearchState(k + 1, x.tolist(), v.tolist(), None, state.best_fid, state.best_update,
                            state.images + grad_evals * n, state.seconds, settings)
        save()
        logger.info(f"{summary} | |grad| {float(np.linalg.norm(g)):.4g} | {time.time() - t_upd:.1f} s")
    dist.barrier()
    why = {"max_upd": f"search.max_upd {max_upd} reached",
           "budget": f"the next update would pass search.budget_images {budget}"}[stopped]
    logger.info(f"search stopped: {why}; best FID {state.best_fid:.4f} at update {state.best_update} "
                f"({sdir / 'best.yaml'}), {state.images} images, {state.seconds:.0f} s")
    return {"best_fid": state.best_fid, "best_update": state.best_update, "update": state.update,
            "images": state.images, "stopped": stopped, "best_strategy": str(sdir / "best.yaml")}
