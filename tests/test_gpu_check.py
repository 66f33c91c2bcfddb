"""scripts/gpu_check.py --cpu-smoke: every row of the GPU check runs on the CPU at debug sizes (the train.py rows
through torchrun with gloo), the JSON names every family, and a perturbed output makes the check fail, so that a
passing check is not vacuous."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
FAMILIES = ("nat", "enat", "nit", "eqar", "eqtok", "vqgan", "dcae", "inception")


def run(args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def tiny_dcae(tmp_path):
    try:
        from tokenizer.dcae import build_tiny_autoencoder_dc
        ae = build_tiny_autoencoder_dc()
    except ImportError:
        return None
    ae.save_pretrained(str(tmp_path / "dcae"))
    return tmp_path / "dcae"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    dcae = tiny_dcae(tmp)
    p = run(["--cpu-smoke", "--out", str(tmp / "out"), *(["--dcae", str(dcae)] if dcae else [])])
    report = json.loads((tmp / "out" / "gpu_check.json").read_text())
    return p, report, dcae


def test_smoke_passes_with_a_row_for_every_family(smoke):
    p, report, dcae = smoke
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    rows = {r["name"]: r for r in report["rows"]}
    for fam in FAMILIES:
        mine = [r for n, r in rows.items() if n.startswith(fam + " ")]
        assert mine, f"no row for {fam}"
        if fam != "dcae" or dcae is not None:
            assert any(r["status"] == "ok" for r in mine), (fam, mine)
    for fam in ("nat", "enat", "nit", "eqar", "eqtok"):
        for row in ("debug fp32", "debug bf16", "debug cpu-vs-device", "released train"):
            assert rows[f"{fam} {row}"]["status"] == "ok", rows[f"{fam} {row}"]
        assert rows[f"{fam} debug fp16"]["status"] == "skip"  # fp16 is CUDA only
    assert rows["nit released sample"]["figures"]["images_per_s"] > 0
    # the compared outputs are not all zero (adaLN-Zero / zero output layers are filled before comparing)
    for fam in ("nat", "enat", "nit", "eqtok"):
        assert rows[f"{fam} debug cpu-vs-device"]["figures"]["max_abs_forward"] > 1e-3, fam
    for fam in ("nit", "eqar", "eqtok"):
        assert rows[f"{fam} debug cpu-vs-device"]["figures"]["max_abs_sample"] > 1e-3, fam
    # the released recipes load, build on `meta` and make their per-GPU batch and sampler settings
    released = {f: rows[f"{f} released train"]["figures"] for f in ("nat", "enat", "nit", "eqar", "eqtok")}
    assert round(released["nat"]["released_params_M"], 1) == 193.7 and released["nat"]["released_batch"] == 256
    assert round(released["nit"]["released_params_M"]) == 684
    assert released["eqar"]["released_batch"] == 32 and released["eqtok"]["released_batch"] == 12
    assert rows["nit released sample"]["figures"]["released_settings"].startswith("sde 250 steps cfg 2.25")
    for name in ("attention varlen runs float32", "attention varlen dense float32", "attention dense sdpa",
                 "train.py pretrain + resume", "train.py eval vs cpu eval"):
        assert rows[name]["status"] == "ok", rows[name]
    assert rows["train.py pretrain + resume"]["figures"]["backend"] == "gloo"
    assert rows["train.py eval vs cpu eval"]["figures"]["images"] == 8
    # skipped rows say why
    assert all(r["reason"] for r in report["rows"] if r["status"] == "skip")
    assert "xformers" in report["packages"] and "flash_attn" in report["packages"]
    assert "row" in p.stdout and "ok" in p.stdout  # the table


def test_a_perturbed_output_fails_the_check(tmp_path):
    rows = ["nat debug cpu-vs-device", "eqar debug cpu-vs-device", "inception debug cpu-vs-device",
            "enat debug cpu-vs-device"]
    p = run(["--cpu-smoke", "--out", str(tmp_path), "--only", ",".join(rows), "--inject-fault", "nat,eqar,inception"])
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    got = {r["name"]: r for r in json.loads((tmp_path / "gpu_check.json").read_text())["rows"]}
    assert {n: r["status"] for n, r in got.items()} == {**{n: "FAIL" for n in rows[:3]}, rows[3]: "ok"}
    assert all("beyond" in got[n]["reason"] or "rel. error" in got[n]["reason"] for n in rows[:3])
    assert f"FAILED: {', '.join(rows[:3])}" in p.stdout
