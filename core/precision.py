"""Precision words (auto | fp32 | bf16 | fp16) resolved against the device at hand.

`auto` is bf16 where the hardware computes bf16 natively and fp32 elsewhere. On CPUs without AMX-BF16 or AVX512-BF16
instructions oneDNN emulates bf16 by converting to fp32 and back: slower than fp32 and less precise, so never worth it.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from loguru import logger

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WORDS = ("auto", *DTYPES)
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names of the x86 bf16 instruction sets
CPUINFO = Path("/proc/cpuinfo")

_native_cache: dict[tuple[str, bool], tuple[bool, str]] = {}
_logged: set[tuple] = set()


def clear_cache() -> None:
    """Forget cached hardware checks and logged choices (tests mock the hardware)."""
    _native_cache.clear()
    _logged.clear()


def cpu_flags(path: Path = CPUINFO) -> set[str] | None:
    """x86 feature flags of the first CPU in /proc/cpuinfo; None where there is no such file or `flags` line."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return None


def _torch_cpu_probe() -> tuple[bool, str] | None:
    """torch's own CPUID probes (private helpers, present in torch >= 2.3); None when absent."""
    probes = {"AMX tiles": "_is_amx_tile_supported", "AVX512-BF16": "_is_avx512_bf16_supported"}
    found = {name: getattr(torch.cpu, fn, None) for name, fn in probes.items()}
    if not all(callable(f) for f in found.values()):
        return None
    have = [name for name, f in found.items() if f()]
    if have:
        return True, f"torch CPUID probe reports {', '.join(have)}"
    return False, "torch CPUID probe reports neither AMX nor AVX512-BF16"


def _cpu_native_bf16() -> tuple[bool, str]:
    flags = cpu_flags()
    if flags is not None:
        have = [f for f in CPU_BF16_FLAGS if f in flags]
        if have:
            return True, f"CPU has {', '.join(have)} (/proc/cpuinfo)"
        return False, "CPU has neither amx_bf16 nor avx512_bf16 (/proc/cpuinfo): bf16 would be emulated"
    probe = _torch_cpu_probe()
    if probe is not None:
        return probe
    cap = torch.backends.cpu.get_cpu_capability()
    # The capability names the widest vector ISA only ("AVX512" does not imply its BF16 extension).
    if "AMX" in cap.upper() or "BF16" in cap.upper():
        return True, f"torch CPU capability {cap}"
    return False, f"no CPU flags readable; torch CPU capability {cap} does not imply native bf16"


def bf16_matmul_speedup(n: int = 256, reps: int = 3) -> float:
    """fp32 time / bf16 time of an n x n matmul, best of `reps` each (a few ms at n = 256)."""
    def best(dtype):
        a = torch.randn(n, n).to(dtype)
        torch.mm(a, a)  # warm-up (kernel selection)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, a)
            times.append(time.perf_counter() - t)
        return min(times)

    return best(torch.float32) / best(torch.bfloat16)


def native_bf16(device, measure: bool = False) -> tuple[bool, str]:
    """(whether `device` computes bf16 natively, why). CUDA: torch.cuda.is_bf16_supported without emulation;
    CPU: AMX-BF16 or AVX512-BF16; other devices: False. measure=True also times a small bf16 vs fp32 matmul on CPU
    and says no when bf16 is not faster (a sanity check against a misreported flag)."""
    device = torch.device(device)
    key = (str(device), bool(measure))
    if key in _native_cache:
        return _native_cache[key]
    if device.type == "cuda":
        try:
            ok = bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch without the emulation switch
            ok = bool(torch.cuda.is_bf16_supported())
        try:
            name = torch.cuda.get_device_name(device)
        except Exception:  # noqa: BLE001 - the name only decorates the message
            name = str(device)
        out = ok, f"CUDA {name}: torch.cuda.is_bf16_supported() is {ok}"
    elif device.type == "cpu":
        out = _cpu_native_bf16()
        if measure and out[0]:
            speedup = bf16_matmul_speedup()
            if speedup < 1.0:
                out = False, f"{out[1]}, but a bf16 matmul ran x{speedup:.2f} the speed of fp32"
            else:
                out = True, f"{out[1]}; bf16 matmul x{speedup:.2f} the speed of fp32"
    else:
        out = False, f"no native-bf16 check for device type {device.type!r}"
    _native_cache[key] = out
    return out


def resolve_precision(word: str, device, role: str = "train", measure: bool = False) -> tuple[str, str]:
    """(fp32 | bf16 | fp16, reason) for a config word in WORDS on `device`; `role` names the user in the log line
    (e.g. 'train', 'generator', 'inception'). auto -> bf16 where native_bf16(device), else fp32. fp16 needs CUDA.
    Logs the choice once per (role, device, word): at INFO for auto and for bf16 where it is not native."""
    if word not in WORDS:
        raise ValueError(f"precision must be one of {list(WORDS)}, got {word!r} ({role})")
    device = torch.device(device)
    if word == "fp16" and device.type != "cuda":
        raise ValueError(f"precision fp16 ({role}) needs CUDA; on {device.type} use bf16, fp32 or auto "
                         "(fp16 has no fast CPU kernels and its loss scaling is CUDA-only)")
    if word == "auto":
        ok, why = native_bf16(device, measure)
        chosen, reason = ("bf16" if ok else "fp32"), f"auto: {why}"
    elif word == "bf16":
        ok, why = native_bf16(device)
        chosen, reason = word, "requested" + ("" if ok else f"; not native here ({why}), expect it to be slow")
    else:
        chosen, reason = word, "requested"
    key = (role, str(device), word)
    if key not in _logged:
        _logged.add(key)
        # a choice made here (auto) or a doubtful request is news; a plain request is not
        level = "INFO" if reason != "requested" else "DEBUG"
        logger.log(level, f"precision for {role} on {device}: {chosen} ({reason})")
    return chosen, reason
