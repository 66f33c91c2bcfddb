"""`sample.compile`: torch.compile of the model functions a family's sampler calls at every step.

The targets are the family's (`Sampling.compile_targets`; None: the model's forward, which the mask-predict and NiT
samplers call once per step). Each one is replaced, on the module instance, by a switch between its eager function
and `torch.compile` of it:

  false  eager (the default: compiled kernels add up in another order, so samples are close to, not bit-identical
         with, eager ones, and a compile costs tens of seconds per input shape on a CPU)
  true   compiled. CUDA: mode "reduce-overhead" (CUDA graphs replay the per-step launches; outputs are copied out of
         the graph's buffers, since a sampler keeps a step's output across the next call); CPU: inductor's default.
  auto   per target and input signature (shapes, dtypes, autocast), the first call measures eager and compiled (one
         warm-up call each, then the best of a few timed calls; the compile time apart) and keeps the faster for the
         rest of the run, in one INFO line; compiled is kept only when it measured at least 5% faster. Where compiling cannot
         work (no C++ compiler for the CPU backend, no Triton for CUDA, or the compile itself fails) it stays eager
         and says why.

Where compiling cannot work, `true` is refused before anything is loaded (`check`).
"""
from __future__ import annotations

import os
import shutil
import time

import torch

from engine.logging import logger

TIMED_CALLS = 5  # per side, after the warm-up call; the best one counts (the least disturbed by other processes)
# auto keeps compiled only when it measured at least this much faster: a closer call is within what whole runs vary
# by, and eager then gives the images of a run without compile
AUTO_MARGIN = 0.95


def policy(cfg):
    """sample.compile as True, False or 'auto' (engine.config admits nothing else)."""
    return cfg.sample.get("compile", False)


def sample_key(cfg) -> dict | None:
    """cfg.sample as the keys of cached eval units and PNG folders see it: sample.compile only when set (eager runs
    keep the keys they had before the setting existed; compiled images are close to, not equal to, eager ones)."""
    from engine.config import to_container
    out = to_container(cfg.get("sample"))
    if isinstance(out, dict) and out.get("compile", False) is False:
        out.pop("compile", None)
    return out


def unavailable(device_type: str) -> str | None:
    """Why torch.compile cannot run on this device type here, or None."""
    if device_type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return "this torch has no torch.utils._triton"
        return None if has_triton() else "Triton is not installed (inductor's CUDA backend needs it)"
    try:
        from torch._inductor import cpp_builder
        cxx = cpp_builder.get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - any failure of the search means: no usable compiler
        return f"no C++ compiler for inductor's CPU backend (searched {_cxx_names()}: {type(e).__name__})"
    if shutil.which(cxx) is None and not os.path.isfile(cxx):
        return f"the C++ compiler {cxx!r} is not on PATH"
    return None


def _cxx_names() -> str:
    try:
        from torch._inductor import config as ic
        names = [c for c in ic.cpp.cxx if c] if isinstance(ic.cpp.cxx, (list, tuple)) else [ic.cpp.cxx]
        return ", ".join(map(str, names)) + " (set CXX)"
    except Exception:  # noqa: BLE001
        return "CXX"


def check(cfg, device_type: str) -> None:
    """Preflight: sample.compile=true where compiling cannot work is refused with the reason."""
    if policy(cfg) is True:
        why = unavailable(device_type)
        if why is not None:
            raise ValueError(f"sample.compile=true cannot work on this {device_type}: {why}; use sample.compile=false "
                             f"(or auto, which falls back to eager)")


def _signature(x):
    if torch.is_tensor(x):
        return (tuple(x.shape), str(x.dtype), x.device.type)
    if isinstance(x, (list, tuple)):
        return tuple(_signature(v) for v in x)
    if isinstance(x, dict):
        return tuple((k, _signature(v)) for k, v in x.items())
    if x is None or isinstance(x, (bool, str)):
        return x
    return type(x).__name__  # numbers may change every call (a time step): not part of the shape


def _describe(args) -> str:
    shapes = [list(a.shape) for a in args if torch.is_tensor(a)]
    return " ".join("x".join(map(str, s)) or "scalar" for s in shapes)


def _copy_out(out):
    if torch.is_tensor(out):
        return out.clone()
    if isinstance(out, (list, tuple)):
        return type(out)(_copy_out(v) for v in out)
    if isinstance(out, dict):
        return {k: _copy_out(v) for k, v in out.items()}
    return out


class CompiledSwitch:
    """Stands in for one model function: eager, compiled, or (auto) the faster of the two per input signature."""

    def __init__(self, name: str, eager, mode, device_type: str):
        self.name, self.eager, self.mode, self.device_type = name, eager, mode, device_type
        self.graphs = device_type == "cuda"
        self.compiled = torch.compile(eager, mode="reduce-overhead" if self.graphs else None)
        self.chosen: dict = {}    # signature -> True (compiled) / False (eager)
        self.broken: str | None = None  # why compiling failed (auto: eager from then on)

    def _sync(self) -> None:
        if self.device_type == "cuda":
            torch.cuda.synchronize()

    def run_compiled(self, *args, **kwargs):
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
            return _copy_out(self.compiled(*args, **kwargs))
        return self.compiled(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        if self.mode is False:  # switched off by a caller (e.g. to count the eager path's FLOPs)
            return self.eager(*args, **kwargs)
        if self.mode is True:
            return self.run_compiled(*args, **kwargs)
        if self.broken is not None:
            return self.eager(*args, **kwargs)
        key = (_signature(args), _signature(kwargs), torch.is_autocast_enabled(self.device_type))
        use = self.chosen.get(key)
        if use is None:
            return self._measure(key, args, kwargs)
        return self.run_compiled(*args, **kwargs) if use else self.eager(*args, **kwargs)

    def _best(self, fn) -> float:
        best = float("inf")
        for _ in range(TIMED_CALLS):
            self._sync()
            t0 = time.perf_counter()
            fn()
            self._sync()
            best = min(best, time.perf_counter() - t0)
        return best

    def _measure(self, key, args, kwargs):
        shape = _describe(args)
        eager = lambda: self.eager(*args, **kwargs)  # noqa: E731
        compiled = lambda: self.run_compiled(*args, **kwargs)  # noqa: E731
        out = eager()  # warm-up
        t_eager = self._best(eager)
        try:
            self._sync()
            t0 = time.perf_counter()
            compiled()  # the compile, then (CUDA graphs) the warm-up run
            self._sync()
            compile_s = time.perf_counter() - t0
            compiled()  # warm-up (CUDA graphs record on a later call)
            t_comp = self._best(compiled)
        except Exception as e:  # noqa: BLE001 - auto must still sample, eagerly, and say why
            self.broken = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            logger.info(f"sample.compile=auto: {self.name} stays eager: compiling failed ({self.broken})")
            return out
        use = t_comp < AUTO_MARGIN * t_eager
        self.chosen[key] = use
        logger.info(f"sample.compile=auto: {self.name} [{shape}]: {'compiled' if use else 'eager'} "
                    f"(eager {t_eager * 1e3:.2f} ms, compiled {t_comp * 1e3:.2f} ms per call; compile {compile_s:.1f} s)")
        return compiled() if use else out


def targets(model, fam) -> list[tuple[str, object, str]]:
    """(name, owner, method name) of every function the family's sampler calls per step."""
    if fam.sampling.compile_targets is not None:
        return list(fam.sampling.compile_targets(model))
    return [("model", getattr(model, "module", model), "forward")]


def put_switches(model, fam, mode, device_type: str) -> list[CompiledSwitch]:
    """A switch in place of every target (`mode` True, False or 'auto'; a caller may flip `.mode` later)."""
    switches = []
    for name, owner, attr in targets(model, fam):
        sw = CompiledSwitch(name, getattr(owner, attr), mode, device_type)
        setattr(owner, attr, sw)  # an instance attribute: nn.Module calls reach it through self.forward
        switches.append(sw)
    return switches


def install(model, fam, cfg, device) -> list[CompiledSwitch]:
    """Put the sample.compile switches in place on `model` (in eval); [] when sample.compile is false."""
    mode = policy(cfg)
    if mode is False:
        return []
    device_type = torch.device(device).type
    why = unavailable(device_type)
    if why is not None:
        if mode is True:  # preflight refuses it first; a caller that skipped the preflight is refused here
            check(cfg, device_type)
        logger.info(f"sample.compile=auto: eager sampling: {why}")
        return []
    switches = put_switches(model, fam, mode, device_type)
    logger.info(f"sample.compile={'auto' if mode == 'auto' else 'true'}: "
                f"{', '.join(s.name for s in switches)} on {device_type}")
    return switches
