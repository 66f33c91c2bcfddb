"""Building blocks shared by the token-based networks (AutoNAT's UViT, ENAT).

Parameter names follow the official checkpoints (`word_embeddings`, `position_embeddings`, `LayerNorm`,
`fc`/`ln`/`bias`, `qkv`/`proj`, `fc1`/`fc2`) so released state dicts load strictly.

Attention backends (`attention()`):
  'sdpa'     torch.nn.functional.scaled_dot_product_attention (default path on every device)
  'math'     explicit softmax(q kᵀ · scale) v, the formulation the official code and its FLOP figures use
  'xformers' xformers.ops.memory_efficient_attention, used only on CUDA tensors when xformers imports and runs;
             anything else falls back to 'sdpa'
  'auto'     'xformers' when possible, else 'sdpa' (the module default)
The process-wide choice (models.backend_switch) is set with `set_attention_backend()` / the `attention_backend()`
context manager; a module may pin its own choice through a constructor argument (None = follow the process-wide
setting).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.backend_switch import BackendSwitch

BACKENDS = ("auto", "sdpa", "math", "xformers")
SWITCH = BackendSwitch("attention backend", BACKENDS, "auto")
set_attention_backend = SWITCH.set
get_attention_backend = SWITCH.get
attention_backend = SWITCH.use  # `with attention_backend('math'): ...`
# None = not probed yet; False = unusable in this process (import or kernel failure); else the xformers.ops module
_xformers_ops = None


def _load_xformers():
    global _xformers_ops
    if _xformers_ops is None:
        try:
            import xformers.ops as xops  # optional GPU dependency (requirements-gpu.txt)
            _xformers_ops = xops
        except Exception:  # a broken build raises all sorts of errors at import; treat all as "absent"
            _xformers_ops = False
    return _xformers_ops


def _math_attention(q, k, v, attn_mask=None):
    scale = q.shape[-1] ** -0.5
    attn = (q * scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn = attn.masked_fill(~attn_mask, float("-inf"))
        else:
            attn = attn + attn_mask
    return attn.softmax(dim=-1) @ v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
              backend: str | None = None) -> torch.Tensor:
    """Multi-head attention on [B, H, Nq, d] / [B, H, Nk, d] tensors -> [B, H, Nq, d], scale d^-0.5.

    `attn_mask` (bool: True = attend, or additive float) must broadcast to [B, H, Nq, Nk].
    """
    global _xformers_ops
    name = SWITCH.pick(backend)
    if name == "math":
        return _math_attention(q, k, v, attn_mask)
    if name in ("auto", "xformers") and q.is_cuda and attn_mask is None and _load_xformers():
        try:
            # xformers wants [B, N, H, d]
            out = _xformers_ops.memory_efficient_attention(
                q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous())
            return out.transpose(1, 2)
        except Exception:
            # kernels built for another torch/CUDA import fine but fail on first call: never try again
            _xformers_ops = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


class BertEmbeddings(nn.Module):
    """Token id embedding + learned absolute 1-D position embedding -> LayerNorm -> Dropout."""

    def __init__(self, vocab_size: int, hidden_size: int, max_position_embeddings: int, dropout: float = 0.1,
                 layer_norm_eps: float = 1e-6):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        if n > self.position_embeddings.num_embeddings:
            raise ValueError(f"sequence of {n} tokens is longer than the {self.position_embeddings.num_embeddings} "
                             "learned positions")
        pos = self.position_embeddings.weight[:n].unsqueeze(0)
        return self.dropout(self.LayerNorm(self.word_embeddings(input_ids) + pos))


class MlmLayer(nn.Module):
    """Prediction head tied to the input word embedding: Linear -> GELU -> LayerNorm -> (· Wᵀ) + bias.

    The embedding weight is passed in detached (as the official models do), so the head never sends gradient into
    the input embedding; the returned logits cover the whole vocabulary (codebook + mask id), callers slice them.
    """

    def __init__(self, feat_emb_dim: int, word_emb_dim: int, vocab_size: int):
        super().__init__()
        self.fc = nn.Linear(feat_emb_dim, word_emb_dim)
        self.gelu = nn.GELU()
        self.ln = nn.LayerNorm(word_emb_dim)
        self.bias = nn.Parameter(torch.zeros(1, 1, vocab_size))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.gelu(self.fc(x)))
        return h @ word_embeddings.detach().t() + self.bias


class Mlp(nn.Module):
    """fc1 -> GELU (exact, or tanh approximation) -> fc2."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 approximate: str = "none"):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def check_attention_args(dim: int, num_heads: int, backend: str | None) -> None:
    if dim % num_heads:
        raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
    SWITCH.check_pin(backend)


class Attention(nn.Module):
    """Self-attention with one fused `qkv` projection and an output `proj`."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, backend: str | None = None):
        super().__init__()
        check_attention_args(dim, num_heads, backend)
        self.num_heads = num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2], backend=self.backend)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def init_weights_trunc_normal(module: nn.Module, std: float = 0.02) -> None:
    """ViT-style init for one module (use with `model.apply`): Linear/Embedding ~ N(0, std²) truncated at ±2σ,
    zero biases, LayerNorm to identity."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_params(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos | sin] sinusoids of t (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
