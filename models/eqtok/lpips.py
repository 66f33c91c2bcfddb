"""LPIPS (VGG-16 variant) from local files only: a perceptual distance per image for the column tokenizer's loss.

`load_lpips(path)` takes one torch file holding both the VGG-16 `features.*` tensors (torchvision layout, e.g.
vgg16-397923af.pth) and the five `lin{0..4}.model.1.weight` 1x1 layers of the LPIPS release (lpips/weights/v0.1/
vgg.pth), merged into one state dict. Inputs in [-1, 1]; the usual ImageNet scaling layer is applied inside.
"""
from __future__ import annotations

import torch
from torch import nn

from core.loading import load_file

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
CUTS = (4, 9, 16, 23, 30)          # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of torchvision's vgg16.features
CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers
        self.features = make_layers(cfgs["D"])[:CUTS[-1]]  # vgg16.features without building the classifier
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS])
        self.register_buffer("shift", torch.tensor(SHIFT)[None, :, None, None])
        self.register_buffer("scale", torch.tensor(SCALE)[None, :, None, None])
        self.requires_grad_(False)
        self.eval()

    def _taps(self, x):
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        h, out, start = (x - self.shift) / self.scale, [], 0
        for cut in CUTS:
            for layer in self.features[start:cut]:
                h = layer(h)
            out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            start = cut
        return out

    def forward(self, x, y):
        """(B, 1, 1, 1) distances."""
        d = 0
        for lin, a, b in zip(self.lins, self._taps(x), self._taps(y)):
            d = d + lin((a - b) ** 2).mean((2, 3), keepdim=True)
        return d

    def train(self, mode: bool = True):
        return super().train(False)


def load_lpips(path: str) -> LPIPS:
    sd = load_file(path, "LPIPS-VGG weights")
    net = LPIPS()
    mapped = {}
    for k, v in sd.items():
        if k.startswith("features."):
            mapped[k] = v
        elif k.startswith("lin") and k.endswith(".model.1.weight"):
            mapped[f"lins.{int(k[3])}.weight"] = v
    own = {k for k in net.state_dict() if k not in ("shift", "scale")}
    from core.loading import CheckpointError
    missing = sorted(own - set(mapped))
    if missing:
        raise CheckpointError(f"{path}: not a merged VGG-16 + LPIPS file; missing {', '.join(missing[:5])}")
    net.load_state_dict({**net.state_dict(), **mapped}, strict=True)
    return net
