"""Precision words: `auto` resolution against mocked hardware, fp16-on-CPU error, engine autocast/grad_scaler and the
FID Inception's dtype 'auto'."""
import pytest
import torch
from loguru import logger

import core.precision as cp
from core.precision import WORDS, cpu_flags, native_bf16, resolve_precision
from engine.precision import autocast, grad_scaler

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def fresh_cache():
    cp.clear_cache()
    yield
    cp.clear_cache()


def mock_cpu(monkeypatch, flags):
    monkeypatch.setattr(cp, "cpu_flags", lambda path=None: flags)


def mock_cuda(monkeypatch, ok):
    seen = {}

    def is_bf16_supported(**kw):
        seen.update(kw)
        return ok

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Mocked GPU")
    return seen


@pytest.mark.parametrize("flags, want", [
    (set(), "fp32"),
    ({"avx2", "avx512f", "avx512_vnni"}, "fp32"),  # AVX512 without its BF16 extension: emulated
    ({"amx_bf16", "amx_tile"}, "bf16"),
    ({"avx512f", "avx512_bf16"}, "bf16"),
])
def test_auto_on_cpu_follows_the_bf16_flags(monkeypatch, flags, want):
    mock_cpu(monkeypatch, flags)
    word, reason = resolve_precision("auto", CPU, "train")
    assert word == want
    assert ("neither amx_bf16 nor avx512_bf16" in reason) == (want == "fp32")
    for explicit in ("fp32", "bf16"):
        assert resolve_precision(explicit, CPU)[0] == explicit
    if want == "fp32":
        assert "not native" in resolve_precision("bf16", CPU)[1]


def test_cpu_fallbacks_without_proc_cpuinfo(monkeypatch):
    mock_cpu(monkeypatch, None)
    monkeypatch.setattr(cp, "_torch_cpu_probe", lambda: None)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert resolve_precision("auto", CPU) == ("fp32", "auto: no CPU flags readable; torch CPU capability AVX512 "
                                                      "does not imply native bf16")
    cp.clear_cache()
    monkeypatch.setattr(cp, "_torch_cpu_probe", lambda: (True, "torch CPUID probe reports AMX tiles"))
    assert resolve_precision("auto", CPU)[0] == "bf16"


def test_cuda_mocked(monkeypatch):
    seen = mock_cuda(monkeypatch, True)
    assert resolve_precision("auto", CUDA, "generator") == ("bf16", "auto: CUDA Mocked GPU: "
                                                                    "torch.cuda.is_bf16_supported() is True")
    assert seen == {"including_emulation": False}  # emulated bf16 (pre-Ampere) does not count
    assert resolve_precision("fp16", CUDA)[0] == "fp16"
    cp.clear_cache()
    mock_cuda(monkeypatch, False)
    assert resolve_precision("auto", CUDA)[0] == "fp32"


def test_fp16_on_cpu_and_unknown_words_are_errors():
    assert WORDS == ("auto", "fp32", "bf16", "fp16")
    with pytest.raises(ValueError, match=r"fp16 \(train\) needs CUDA; on cpu use bf16, fp32 or auto"):
        resolve_precision("fp16", CPU, "train")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", CPU)
    with pytest.raises(ValueError, match="needs CUDA"):
        autocast(CPU, "fp16")


def test_optional_measurement_can_veto(monkeypatch):
    assert cp.bf16_matmul_speedup(n=32, reps=1) > 0.0
    mock_cpu(monkeypatch, {"amx_bf16"})
    monkeypatch.setattr(cp, "bf16_matmul_speedup", lambda: 0.5)
    ok, reason = native_bf16(CPU, measure=True)
    assert not ok and "x0.50" in reason
    assert native_bf16(CPU)[0]  # without measuring, the flags decide


def test_cpu_flags_parser(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse avx512f amx_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(f) == {"fpu", "sse", "avx512f", "amx_bf16"}
    assert cpu_flags(tmp_path / "absent") is None
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(tmp_path / "arm") is None


def test_engine_autocast_and_scaler_accept_auto(monkeypatch):
    lines = []
    sink = logger.add(lines.append, format="{message}", level="INFO")
    try:
        mock_cpu(monkeypatch, {"amx_bf16"})
        with autocast(CPU, "auto"):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        with autocast(CPU, "auto"):  # resolved again, logged once
            pass
        assert grad_scaler(CPU, "auto") is None
        cp.clear_cache()
        mock_cpu(monkeypatch, set())
        with autocast(CPU, "auto"):
            assert not torch.is_autocast_enabled("cpu")
    finally:
        logger.remove(sink)
    mine = [ln for ln in lines if "precision for autocast on cpu" in ln]
    assert len(mine) == 2 and "bf16 (auto: CPU has amx_bf16" in mine[0] and "fp32 (auto:" in mine[1]


def test_fid_inception_dtype_auto(monkeypatch):
    from metrics.features import FeatureCollector
    from metrics.inception import FIDInception
    model = FIDInception().eval()
    try:
        mock_cpu(monkeypatch, set())
        c = FeatureCollector(model, "adm", ("pool3",), dtype="auto", size=75)
        assert (c.dtype, c.channels_last, c.dtype_requested) == ("fp32", True, "auto")
        assert "neither amx_bf16 nor avx512_bf16" in c.dtype_reason
        cp.clear_cache()
        mock_cpu(monkeypatch, {"avx512_bf16"})
        c = FeatureCollector(model, "adm", ("pool3",), dtype="auto", size=75)
        assert (c.dtype, c.channels_last) == ("bf16", True)
        assert FeatureCollector(model, "adm", ("pool3",), dtype="fp32", size=75).channels_last is False
        with pytest.raises(ValueError, match="needs CUDA"):
            FeatureCollector(model, "adm", ("pool3",), dtype="fp16", size=75)
    finally:
        model.to(memory_format=torch.contiguous_format)
