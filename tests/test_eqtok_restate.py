"""Independent re-statements shared by the eqtok loss tests: a ViT, the DINO discriminator heads (spectral norm
with its power iteration, local batch norm, circular Conv1d) and the augmentation, written with explicit tensor
maths from the weight tensors, not with the project's modules. The tests here check the spectral-norm convolution
against torch's own hook-based spectral norm, whose buffer names the released files use."""
import math

import torch
import torch.nn.functional as F

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


def random_state(net, seed=0, scale=0.3):
    """A state dict of random values with `net`'s names and shapes (what a released file would hold)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * scale + (1.0 if k.endswith("norm1.weight") or
                                                            k.endswith("norm2.weight") else 0.0)
            for k, v in net.state_dict().items()}


def layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def vit(sd, x, heads, patch, depths=None, gelu="none", final_norm=False):
    """(readouts after the position embedding and after each block in `depths`, final tokens)."""
    b = x.shape[0]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    gh, gw = x.shape[-2] // patch, x.shape[-1] // patch
    pos = sd["pos_embed"]
    grid = int(math.isqrt(pos.shape[1] - 1))
    if (gh, gw) != (grid, grid):
        g2 = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        g2 = F.interpolate(g2, size=(gh, gw), mode="bicubic", antialias=True, align_corners=False)
        pos = torch.cat([pos[:, :1], g2.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], 1)
    h = torch.cat([sd["cls_token"].expand(b, -1, -1), t], 1) + pos
    c = h.shape[-1]
    d = c // heads
    outs = [(h[:, 1:] + h[:, :1]).transpose(1, 2)]
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    last = n_blocks - 1 if depths is None else max(depths)
    for i in range(last + 1):
        p = f"blocks.{i}."
        y = layer_norm(h, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        q, k, v = (y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).chunk(3, -1)
        sp = lambda z: z.reshape(b, -1, heads, d).transpose(1, 2)  # noqa: E731
        a = torch.softmax(sp(q) @ sp(k).transpose(-1, -2) / math.sqrt(d), -1) @ sp(v)
        a = a.transpose(1, 2).reshape(b, -1, c) @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = h + a * sd.get(p + "ls1.gamma", 1.0)
        y = layer_norm(h, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        m = F.gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"], approximate=gelu)
        h = h + (m @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]) * sd.get(p + "ls2.gamma", 1.0)
        if depths is not None and i in depths:
            outs.append((h[:, 1:] + h[:, :1]).transpose(1, 2))
    if final_norm:
        h = layer_norm(h, sd["norm.weight"], sd["norm.bias"])
    return outs, h


def spectral(w, u, v):
    """One power iteration (training mode) -> (w / sigma, new u, new v)."""
    m = w.reshape(w.shape[0], -1)
    v = F.normalize(m.T @ u, dim=0, eps=1e-12)
    u = F.normalize(m @ v, dim=0, eps=1e-12)
    return w / torch.dot(u, m @ v), u, v


def local_bn(x, w, b, vbs=8, eps=1e-6):
    groups = math.ceil(x.shape[0] / vbs)
    size = x.shape[0] // groups
    out = []
    for i in range(groups):
        g = x[i * size:(i + 1) * size]
        mu = g.mean((0, 2), keepdim=True)
        var = ((g - mu) ** 2).mean((0, 2), keepdim=True)
        out.append((g - mu) / torch.sqrt(var + eps))
    return torch.cat(out) * w[None, :, None] + b[None, :, None]


def heads(params: dict, state: dict, acts, ks):
    """The discriminator heads on readouts; `params` name -> tensor (weight_orig, bias, norm weights), `state` the
    spectral-norm u / v buffers, updated in place as the module's are. Returns (B, sum of positions)."""
    out = []

    def conv(prefix, x, k):
        w, state[prefix + "weight_u"], state[prefix + "weight_v"] = spectral(
            params[prefix + "weight_orig"], state[prefix + "weight_u"], state[prefix + "weight_v"])
        if k > 1:
            x = F.pad(x, (k // 2, k // 2), mode="circular")
        return F.conv1d(x, w, params[prefix + "bias"])

    for i, a in enumerate(acts):
        p = f"heads.{i}."
        y = F.leaky_relu(local_bn(conv(p + "0.0.", a, 1), params[p + "0.1.weight"], params[p + "0.1.bias"]), 0.2)
        r = F.leaky_relu(local_bn(conv(p + "1.fn.0.", y, ks), params[p + "1.fn.1.weight"], params[p + "1.fn.1.bias"]),
                         0.2)
        y = (r + y) / math.sqrt(2)
        out.append(conv(p + "2.", y, 1).flatten(1))
    return torch.cat(out, 1)


def augment(x, prob, cutout, gen):
    """DiffAug written pixel by pixel (B, C, H, W small)."""
    flags = (torch.rand(3, generator=gen) <= prob).tolist()
    b, c, h, w = x.shape
    u = torch.rand(7, b, generator=gen)
    x = x.clone()
    if flags[0]:
        dh, dw = round(h * 0.125), round(w * 0.125)
        y = torch.zeros_like(x)
        for n in range(b):
            th = int(math.floor(float(u[0, n]) * (2 * dh + 1))) - dh
            tw = int(math.floor(float(u[1, n]) * (2 * dw + 1))) - dw
            for i in range(h):
                for j in range(w):
                    if 0 <= i + th < h and 0 <= j + tw < w:
                        y[n, :, i, j] = x[n, :, i + th, j + tw]
        x = y
    if flags[1]:
        for n in range(b):
            z = x[n] + (float(u[2, n]) - 0.5)
            m = z.mean(0, keepdim=True)
            z = (z - m) * (2 * float(u[3, n])) + m
            m = z.mean()
            x[n] = (z - m) * (float(u[4, n]) + 0.5) + m
    if flags[2]:
        ch, cw = round(h * cutout), round(w * cutout)
        for n in range(b):
            ci = int(math.floor(float(u[5, n]) * (h + 1 - ch % 2)))
            cj = int(math.floor(float(u[6, n]) * (w + 1 - cw % 2)))
            for i in range(ci - ch // 2, ci - ch // 2 + ch):
                for j in range(cj - cw // 2, cj - cw // 2 + cw):
                    if 0 <= i < h and 0 <= j < w:
                        x[n, :, i, j] = 0
    return x


def dino_prepare(x, size):
    """[-1, 1] -> ImageNet-normalised, bicubic to size x size (inputs not larger than size)."""
    x = ((x + 1) / 2 - MEAN) / STD
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic")
    return x


def test_spectral_conv_equals_torch_hook_spectral_norm():
    from models.eqtok.dino_disc import SpectralConv1d
    torch.manual_seed(0)
    ref = torch.nn.utils.spectral_norm(torch.nn.Conv1d(6, 5, 3, padding=1, padding_mode="circular"))
    ours = SpectralConv1d(6, 5, 3)
    ours.load_state_dict(ref.state_dict(), strict=True)  # weight_orig, bias, weight_u, weight_v
    x = torch.randn(2, 6, 7)
    for mode in (True, True, False):  # two training forwards (power iteration), then eval (stored u, v)
        ref.train(mode)
        ours.train(mode)
        assert torch.allclose(ours(x), ref(x), atol=1e-6)
        assert all(torch.allclose(ours.state_dict()[k], v, atol=1e-6) for k, v in ref.state_dict().items())
    u, v = ours.weight_u.clone(), ours.weight_v.clone()
    w, u2, v2 = spectral(ours.weight_orig, u, v)  # the re-statement agrees with both
    ours.train(True)
    assert torch.allclose(F.conv1d(F.pad(x, (1, 1), mode="circular"), w, ours.bias), ours(x), atol=1e-6)
    assert torch.allclose(u2, ours.weight_u, atol=1e-6) and torch.allclose(v2, ours.weight_v, atol=1e-6)
