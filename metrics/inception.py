"""The FID InceptionV3 (TF 2015-12-05 graph) as an eager module with torchvision `Inception3` parameter names.

Names follow torchvision (num_classes=1008, aux_logits=False) so `pt_inception-2015-12-05-6726825d.pth` loads by key.
The forward differs from torchvision's in the places where the 2015 TF graph differs:
  * every 3x3/s1 average pool inside a Mixed block ignores the zero padding (count_include_pad=False, TF semantics);
  * the pool branch of Mixed_7c uses a 3x3/s1 max pool instead of an average pool.
The module takes already preprocessed images (see metrics/preprocess.py) and returns, in one pass, the features named in
FEATURES (a dict, see FIDInception.forward):
  block64, block192, block768  [B, 64 | 192 | 768]  outputs of pytorch-fid's blocks 0, 1, 2 (`--dims 64/192/768`),
                               spatially averaged as pytorch-fid's get_activations does (adaptive average pool to 1x1);
  pool3           [B, 2048]  global average pool after Mixed_7c (TF `pool_3:0`, pytorch-fid's block 3 / `--dims 2048`),
                             for FID and precision/recall;
  logits_unbiased [B, 1008]  pool3 @ fc.weight.T without the bias (TF `softmax/logits/MatMul`, torch-fidelity's
                             `logits_unbiased`), what the Inception Score uses (ADM, torch-fidelity, torchmetrics);
  logits          the same tensor as logits_unbiased (this project's historical name; note that torch-fidelity's
                  `logits` carry the bias, which is our logits_biased);
  logits_biased   [B, 1008]  fc(pool3) with the bias (torch-fidelity's `logits`);
  spatial         [B, 7*h*w] first 7 channels of Mixed_6d.branch1x1 (TF `mixed_6/conv:0`) flattened in H, W, C order,
                             2023-d at 299 px, for sFID.
Every sub-module runs through its `__call__`, so forward hooks on any of them fire.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

N_CLASSES = 1008  # 1000 ImageNet classes + 8 unused outputs of the 2015 TF graph
POOL3_DIM = 2048
SPATIAL_CHANNELS = 7
FEATURES = ("block64", "block192", "block768", "pool3", "logits_unbiased", "logits", "logits_biased", "spatial")
LOGIT_FEATURES = ("logits_unbiased", "logits", "logits_biased")
# pytorch-fid's `--dims` choices and the feature each one selects.
PYTORCH_FID_DIMS = {64: "block64", 192: "block192", 768: "block768", 2048: "pool3"}
# Last stage (pytorch-fid block index) a feature needs; the forward stops after the last one requested.
_STAGE = {"block64": 0, "block192": 1, "block768": 2, "spatial": 2, "pool3": 3, "logits_unbiased": 3, "logits": 3,
          "logits_biased": 3}


def feature_dims(size: int = 299) -> dict[str, int]:
    """Length of every feature for square inputs of `size` pixels."""
    dims = {"block64": 64, "block192": 192, "block768": 768, "pool3": POOL3_DIM, "spatial": spatial_dim(size)}
    dims.update({f: N_CLASSES for f in LOGIT_FEATURES})
    return dims


def spatial_dim(size: int) -> int:
    """Length of the sFID feature for square inputs of `size` pixels (2023 at 299): 7 channels x side^2 of Mixed_6d."""
    side = size
    for k, s in ((3, 2), (3, 1), (3, 2), (3, 1), (3, 2), (3, 2)):  # 1a, 2a, pool, 4a, pool, Mixed_6a (valid convs)
        side = (side - k) // s + 1
    return SPATIAL_CHANNELS * side * side


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3 as in TF) -> ReLU; sub-module names match torchvision's checkpoint keys."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TF averages over the valid pixels only; torchvision's default would count the zero padding at the borders.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35x35 block (Mixed_5b/5c/5d)."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class FIDInceptionB(nn.Module):
    """35x35 -> 17x17 reduction (Mixed_6a)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        c = F.max_pool2d(x, 3, stride=2)
        return torch.cat([a, b, c], 1)


class FIDInceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e)."""

    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # branch1x1 comes first in the concatenation: FIDInception reads the sFID tap off this block's output.
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        c = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(c))))
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class FIDInceptionD(nn.Module):
    """17x17 -> 8x8 reduction (Mixed_7a)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        c = F.max_pool2d(x, 3, stride=2)
        return torch.cat([a, b, c], 1)


class FIDInceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 heads (Mixed_7b with an avg-pool branch, Mixed_7c with a max-pool branch)."""

    def __init__(self, cin: int, max_pool_branch: bool):
        super().__init__()
        self.max_pool_branch = max_pool_branch
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        # The 2015 graph max-pools in its last block (a quirk of the released model, kept for comparable numbers).
        p = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool_branch else _tf_avg_pool(x)
        d = self.branch_pool(p)
        return torch.cat([a, b, c, d], 1)


class FIDInception(nn.Module):
    """FID InceptionV3. `has_fc` is False when the loaded weights carry no classifier (then no IS logits)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = FIDInceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = FIDInceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool_branch=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool_branch=True)
        self.fc = nn.Linear(POOL3_DIM, N_CLASSES)
        self.has_fc = True
        # He init keeps random-weight activations O(1) through the 94 layers (torch's default init shrinks them to
        # ~1e-8), so tests with random weights exercise realistic magnitudes. Real weights overwrite all of it.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        # Where the weights came from; set by the loaders in metrics/inception_weights.py.
        self.weights_source = "random init"

    def requested(self, logits: bool = True, spatial: bool = True, features=None) -> tuple[str, ...]:
        """The feature names a forward call returns (see forward)."""
        if features is None:
            return ("pool3",) + (("logits",) if logits and self.has_fc else ()) + (("spatial",) if spatial else ())
        features = (features,) if isinstance(features, str) else tuple(features)
        unknown = [f for f in features if f not in FEATURES]
        if unknown or not features:
            raise ValueError(f"features must be a non-empty subset of {FEATURES}, got {features}")
        if not self.has_fc and any(f in LOGIT_FEATURES for f in features):
            raise ValueError(f"logits are unavailable: the weights ({self.weights_source}) have no fc layer")
        return tuple(dict.fromkeys(features))

    def forward(self, x: torch.Tensor, logits: bool = True, spatial: bool = True,
                features=None) -> dict[str, torch.Tensor]:
        """x: preprocessed float images [B, 3, S, S] (S = 299 for comparable numbers; S >= 75 runs).

        features: names from FEATURES, e.g. ("pool3", "logits_unbiased"); returns float32 tensors under exactly those
            names, computed in one pass that stops after the last stage any of them needs. Without `features` the
            historical outputs: {'pool3', 'logits' (if `logits` and has_fc), 'spatial' (if `spatial`)}.
        """
        want = self.requested(logits, spatial, features)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"FIDInception expects preprocessed images [B, 3, S, S], got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < 75:
            raise ValueError(f"FIDInception needs inputs of at least 75x75 pixels, got {tuple(x.shape[-2:])}")
        last = max(_STAGE[f] for f in want)
        out = {}
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        if "block64" in want:
            out["block64"] = _spatial_mean(x)
        if last > 0:
            x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
            x = F.max_pool2d(x, 3, stride=2)
            if "block192" in want:
                out["block192"] = _spatial_mean(x)
        if last > 1:
            x = self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))
            x = self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x)))
            if "spatial" in want:
                # Channels 0..191 of Mixed_6d's output are its branch1x1 (TF mixed_6/conv); H, W, C flatten order is
                # what ADM's reference mu_s/sigma_s were computed with.
                tap = x[:, :SPATIAL_CHANNELS]
                out["spatial"] = tap.permute(0, 2, 3, 1).reshape(tap.shape[0], -1).float()
            x = self.Mixed_6e(x)
            if "block768" in want:
                out["block768"] = _spatial_mean(x)
        if last > 2:
            x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
            pool3 = x.mean(dim=(2, 3), dtype=torch.float32)
            out["pool3"] = pool3
            if any(f in LOGIT_FEATURES for f in want):
                # Outside autocast: the IS softmax is sensitive to the logits' precision, and this matmul is cheap.
                with torch.autocast(device_type=pool3.device.type, enabled=False):
                    out["logits_biased"] = self.fc(pool3.to(self.fc.weight.dtype)).float()
                    out["logits"] = out["logits_unbiased"] = pool3 @ self.fc.weight.float().t()
        return {f: out[f] for f in want}


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C] float32 mean over H, W (pytorch-fid: adaptive average pool to 1x1, then squeeze)."""
    return x.mean(dim=(2, 3), dtype=torch.float32)
