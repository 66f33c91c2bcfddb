"""--mode search: sampler settings optimised against FID (forward finite differences + SGD with momentum), as
AutoNAT's generation-strategy search does. The family says what is searched (Sampling.search_space: a vector with a
probe step and learning rate per coordinate, its clamps, its file format); this loop knows only vectors.

For AutoNAT (samplers/strategy_search.py) the vector is the 4T−2 strategy scalars. Update k:
  1. base: FID of the current point x_k;
  2. for every coordinate j: FID at x_k + h_j·e_j (the space's probe step, clamped by the space into valid settings),
     g_j = (FID_j − base) / (x'_j − x_j);
  3. g (or the SPSA estimate, below) clamped elementwise to ±clip_grad (if > 0); SGD with momentum as
     torch.optim.SGD does it (v = m·v + g, x −= lr·v with the space's learning rates); the point clamped by the
     space.
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

Outputs in output_dir: searched_strategies/stp_{k}.yaml (the space's format; AutoNAT's official one) and best.yaml,
search_history.csv (one row per update: update, fid, best_fid, best_update, images, seconds, then the vector),
search_state.json.

Objective protocol (injectable for tests): `objective(settings, seed) -> fid`, a collective call on every rank that
returns the same float everywhere. The default, FIDObjective, lets every rank generate its share of images.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from core import dist
from core.io import atomic_write_text
from engine.config import to_yaml
from engine.logging import logger, setup_logging
from models import get_family

FORMAT = "autonat-search-v1"
STATE_FILE, HISTORY_FILE, STRATEGY_DIR = "search_state.json", "search_history.csv", "searched_strategies"
SEED_BITS = 40                # core.seeding.row_seed multiplies the seed by ~2^20
GRADIENTS = ("fd", "spsa")


# ------------------------------------------------------------------------------------------------- the optimiser
@dataclass(frozen=True)
class Hyper:
    space: object         # models.family.SearchSpace: clamps of points and probes
    fd_step: np.ndarray   # float64[d]
    lr: np.ndarray        # float64[d]
    momentum: float
    clip_grad: float

    @classmethod
    def from_space(cls, space, sc) -> "Hyper":
        if not 0.0 <= float(sc.momentum) < 1.0 or float(sc.clip_grad) < 0:
            raise ValueError(f"search.momentum must be in [0, 1) and search.clip_grad >= 0, got "
                             f"{sc.momentum}, {sc.clip_grad}")
        return cls(space, np.asarray(space.fd_step, np.float64), np.asarray(space.lr, np.float64),
                   float(sc.momentum), float(sc.clip_grad))


def probe_point(x: np.ndarray, j: int, hp: Hyper) -> np.ndarray:
    xp = x.copy()
    xp[j] += hp.fd_step[j]
    return hp.space.clamp_probe(xp)


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
        xp, xm = (hp.space.clamp_probe(x + s * hp.fd_step * delta[p]) for s in (1.0, -1.0))
        df = _finite(f(xp, 2 * p), f"pair {p} (+)") - _finite(f(xm, 2 * p + 1), f"pair {p} (-)")
        dx = xp - xm
        moved = np.abs(dx) > 0
        g[moved] += df / dx[moved]
    return g / delta.shape[0]


def momentum_step(x: np.ndarray, v: np.ndarray, g: np.ndarray, hp: Hyper) -> tuple[np.ndarray, np.ndarray]:
    if hp.clip_grad > 0:
        g = np.clip(g, -hp.clip_grad, hp.clip_grad)
    v = hp.momentum * v + g
    return hp.space.clamp_point(x - hp.lr * v), v


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


# ------------------------------------------------------------------------------------------------ the objective
class FIDObjective:
    """FID of `n` generated images against eval.ref_stats (collective: each rank generates its eval.batch_size units).

    Sample i of an evaluation with seed s has its label and noise from (s, i) only, so the value does not depend on
    the number of processes.
    """

    def __init__(self, cfg, device, n: int):
        from engine import evaluate as ev_mod
        # the settings come from the search; the config's own only have to build (the family's defaults do)
        self.cfg = OmegaConf.merge(cfg, {"eval": {"source": "samples", "precision": cfg.search.precision}})
        ref = ev_mod.ensure_ref_stats(self.cfg, device)
        self.src = ev_mod.ImageSource(self.cfg, device, ev_mod.eval_sizes(self.cfg, get_family(cfg.family)))
        self.ev = ev_mod.build_evaluator(self.cfg, device, ref)
        self.device, self.n, self.bs = device, n, int(cfg.eval.batch_size)
        self.units = ev_mod.my_units(n, self.bs)
        self.weights = self.src.weights

    def __call__(self, settings, seed: int) -> float:
        self.ev.reset()
        for u in self.units:
            idx = list(range(u * self.bs, min(self.n, (u + 1) * self.bs)))
            self.ev.update(self.src(idx, settings, seed)[0], index=idx)
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
    for key in settings:
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
    atomic_write_text(path, buf.getvalue())


def _on_main(fn, *args):
    """fn(*args) on rank 0, its result (or its ValueError) on every rank: no rank is left waiting in a collective."""
    res, err = None, None
    if dist.is_main():
        try:
            res = fn(*args)
        except ValueError as e:
            err = str(e)
    res, err = dist.broadcast_object((res, err))
    if err is not None:
        raise ValueError(err)
    return res


# ----------------------------------------------------------------------------------------------------- the loop
class _Probe:
    """f(x, j) of the gradient estimators: the objective at point x, probe j of update k."""

    def __init__(self, run: "SearchRun", update: int):
        self.run, self.update = run, update

    def __call__(self, x: np.ndarray, probe: int) -> float:
        return self.run.evaluate(x, self.update, probe)


class SearchRun:
    """One search: its settings, the state that makes it resumable, and the files it writes."""

    def __init__(self, cfg, space, objective, n: int):
        sc = cfg.search
        self.cfg, self.space, self.objective, self.n = cfg, space, objective, n
        self.out = Path(cfg.output_dir)
        self.sdir = self.out / STRATEGY_DIR
        self.hp = Hyper.from_space(space, sc)
        self.d, self.max_upd, self.budget = len(space.names), int(sc.max_upd), int(sc.budget_images)
        self.crn, self.seed = bool(sc.common_random_numbers), int(cfg.seed)
        self.kind, self.pairs = str(sc.gradient), int(sc.spsa_pairs)
        if self.kind not in GRADIENTS or self.pairs < 1:
            raise ValueError(f"search.gradient must be one of {GRADIENTS} (got {self.kind!r}) and search.spsa_pairs "
                             f">= 1 (got {self.pairs})")
        self.grad_evals = self.d if self.kind == "fd" else 2 * self.pairs
        self.settings = {**space.identity(), "eval_n": n, "seed": self.seed, "common_random_numbers": self.crn,
                         "labels": str(cfg.eval.labels), "precision": str(sc.precision), "gradient": self.kind,
                         "spsa_pairs": self.pairs if self.kind == "spsa" else None,
                         "momentum": float(sc.momentum), "clip_grad": float(sc.clip_grad)}
        if self.budget and self.budget < n:
            raise ValueError(f"search.budget_images {self.budget} is smaller than one evaluation (search.eval_n {n})")
        self.state: SearchState | None = None
        self.rows: list[dict] = []
        self.t0 = 0.0

    # -------------------------------------------------------------------------------------------------- pieces
    def evaluate(self, x: np.ndarray, update: int, probe: int) -> float:
        settings = self.space.settings(x, f"search update {update} probe {probe}")
        return self.objective(settings, evaluation_seed(self.seed, update, None if self.crn else probe))

    def save(self) -> None:
        self.state.seconds = time.time() - self.t0
        if dist.is_main():
            atomic_write_text(self.out / STATE_FILE, json.dumps(asdict(self.state), indent=1))

    def start(self) -> None:
        state = _on_main(load_state, self.out / STATE_FILE, self.settings)
        if state is None:
            x0, source = self.space.initial()
            state = SearchState(0, x0.tolist(), [0.0] * self.d, None, None, None, 0, 0.0, self.settings)
            logger.info(f"search: new, {self.d} scalars from {source}, {self.n} images per evaluation, "
                        f"{'common' if self.crn else 'independent'} random numbers, gradient "
                        f"{'by finite differences' if self.kind == 'fd' else f'by SPSA with {self.pairs} pairs'} "
                        f"({self.grad_evals} evaluations per update)")
        else:
            logger.info(f"search: resuming at update {state.update} ({state.images} images generated so far)")
        self.state = state
        if dist.is_main():
            self.rows = _read_history(self.out / HISTORY_FILE, self._kept_row)
        self.t0 = time.time() - state.seconds

    def _kept_row(self, update: int) -> bool:
        return update < self.state.update or (update == self.state.update and self.state.fid is not None)

    def base_evaluation(self, k: int, x: np.ndarray) -> None:
        st = self.state
        st.fid = _finite(self.evaluate(x, k, -1), f"update {k} (base)")
        st.images += self.n
        if st.best_fid is None or st.fid < st.best_fid:
            st.best_fid, st.best_update = st.fid, k
            if dist.is_main():
                self.space.save(x, self.sdir / f"best{self.space.suffix}")
        self.save()
        if dist.is_main():
            self.space.save(x, self.sdir / f"stp_{k}{self.space.suffix}")
            self.rows.append({"update": k, "fid": st.fid, "best_fid": st.best_fid, "best_update": st.best_update,
                              "images": st.images, "seconds": round(st.seconds, 3),
                              **dict(zip(self.space.names, x.tolist()))})
            _write_history(self.out / HISTORY_FILE, self.rows, self.space.names)

    def gradient(self, k: int, x: np.ndarray) -> np.ndarray:
        f = _Probe(self, k)
        if self.kind == "fd":
            return fd_gradient(f, x, self.state.fid, self.hp, progress=dist.is_main())
        return spsa_gradient(f, x, spsa_directions(self.seed, k, self.pairs, self.d), self.hp,
                             progress=dist.is_main())

    # ---------------------------------------------------------------------------------------------------- loop
    def run(self) -> str:
        """Updates until max_upd or the budget (after start()); returns why it stopped."""
        n, budget = self.n, self.budget
        while True:
            st = self.state
            k, x, v = st.update, np.array(st.x, np.float64), np.array(st.momentum, np.float64)
            t_upd = time.time()
            if st.fid is None:
                if budget and st.images + n > budget:
                    return "budget"
                self.base_evaluation(k, x)
            summary = (f"search upd {k}/{self.max_upd}: fid {st.fid:.4f} | best {st.best_fid:.4f} (upd "
                       f"{st.best_update}) | images {st.images}{f'/{budget}' if budget else ''}")
            stopped = "max_upd" if k >= self.max_upd else (
                "budget" if budget and st.images + (self.grad_evals + 1) * n > budget else None)
            if stopped is not None:
                logger.info(summary)
                return stopped
            g = self.gradient(k, x)
            x, v = momentum_step(x, v, g, self.hp)
            self.state = SearchState(k + 1, x.tolist(), v.tolist(), None, st.best_fid, st.best_update,
                                     st.images + self.grad_evals * n, st.seconds, self.settings)
            self.save()
            logger.info(f"{summary} | |grad| {float(np.linalg.norm(g)):.4g} | {time.time() - t_upd:.1f} s")


def search(cfg, objective=None) -> dict:
    device = dist.init_distributed(cfg.device)
    setup_logging(str(cfg.output_dir))
    logger.info("config:\n" + to_yaml(cfg))
    fam = get_family(cfg.family)
    if "search" not in fam.modes:
        raise ValueError(f"family '{fam.name}' has no search space: --mode search is not available")
    n = search_eval_n(cfg)
    run = SearchRun(cfg, fam.sampling.search_space(cfg), objective, n)
    run.start()  # a resume with other settings stops here, before the generator is loaded
    if objective is None:
        run.objective = FIDObjective(cfg, device, n)
        logger.info(f"search objective: FID-{n} against {cfg.eval.ref_stats}, generator {run.objective.weights}")
    stopped = run.run()
    dist.barrier()
    st, best = run.state, run.sdir / f"best{run.space.suffix}"
    why = {"max_upd": f"search.max_upd {run.max_upd} reached",
           "budget": f"the next update would pass search.budget_images {run.budget}"}[stopped]
    logger.info(f"search stopped: {why}; best FID {st.best_fid:.4f} at update {st.best_update} ({best}), "
                f"{st.images} images, {st.seconds:.0f} s")
    return {"best_fid": st.best_fid, "best_update": st.best_update, "update": st.update,
            "images": st.images, "stopped": stopped, "best_strategy": str(best)}
