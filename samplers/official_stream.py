"""The random stream of the official single-process AutoNAT / ENAT samplers, as an object (`sample.rng: official`).

The official code seeds the global generators once (`torch.manual_seed(seed); np.random.seed(seed)`, through
accelerate's set_seed on process 0) and then, at every step of every batch, draws
  1. the tokens with `torch.distributions.Categorical(logits=...).sample()` on the global torch generator of the
     logits' device (one multinomial draw per position, visible positions included), then
  2. the confidence noise `temperature * np.random.gumbel(size=(B, L))` on numpy's global generator, in float64,
     cast to float32 — at the last step too, where the temperature is 0.
AutoNAT samples from `logits / max(τs, 1e-4)` (the guided logits), ENAT from `log_softmax(guided logits) / τs`: the
same distribution, but not the same float32 probabilities, so a token-exact replay needs the variant.

`OfficialStream(seed)` owns a numpy RandomState and one torch.Generator per device, all seeded with `seed`; after
`torch.manual_seed(s)` / `np.random.seed(s)` the global generators produce exactly these streams, so the replay
does not touch (or depend on) global state. The stream carries on across calls: batches drawn one after the other
from one stream replay the official eval loop's batches one after the other. Unlike the per-row default, a sample
then depends on the batch composition and the process count (the official behaviour).
"""
from __future__ import annotations

import numpy as np
import torch

VARIANTS = ("autonat", "enat")
FAMILY_VARIANTS = {"nat": "autonat", "enat": "enat"}  # model family name -> official sampling loop


class OfficialStream:
    def __init__(self, seed: int, variant: str = "autonat"):
        if variant not in VARIANTS:
            raise ValueError(f"OfficialStream variant must be one of {VARIANTS}, got {variant!r}")
        self.seed, self.variant = int(seed), variant
        self.numpy = np.random.RandomState(self.seed)
        self._torch: dict[torch.device, torch.Generator] = {}

    @classmethod
    def for_family(cls, family: str, seed: int) -> "OfficialStream":
        """The stream of the official sampler of a model family ('nat' = AutoNAT, 'enat')."""
        if family not in FAMILY_VARIANTS:
            raise ValueError(f"no official random stream for family {family!r}; known: {sorted(FAMILY_VARIANTS)}")
        return cls(seed, FAMILY_VARIANTS[family])

    def __repr__(self) -> str:
        return f"OfficialStream(seed={self.seed}, variant={self.variant!r})"

    def torch_generator(self, device) -> torch.Generator:
        """The generator of `device`, seeded like torch.manual_seed seeds that device's default generator."""
        device = torch.device(device)
        if device.type != "cpu" and device.index is None:  # "cuda" -> the current cuda:<i>, as tensors resolve it
            device = torch.empty(0, device=device).device
        gen = self._torch.get(device)
        if gen is None:
            gen = self._torch[device] = torch.Generator(device=device).manual_seed(self.seed)
        return gen

    def labels(self, n: int, num_classes: int = 1000, device="cpu") -> torch.Tensor:
        """Long[n] class labels drawn like the official eval loop (`torch.randint(0, 1000, (n, 1))` per batch)."""
        return torch.randint(0, num_classes, (n, 1), device=device, generator=self.torch_generator(device))[:, 0]

    def tokens(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """Long[...] one draw per position, as Categorical(logits=<variant's sampling logits>).sample()."""
        x = torch.log_softmax(logits, dim=-1) if self.variant == "enat" else logits
        probs = torch.distributions.Categorical(logits=x / temperature).probs
        flat = probs.reshape(-1, probs.shape[-1])
        # Categorical.sample() is multinomial(probs_2d, 1, replacement=True).T on the default generator
        out = torch.multinomial(flat, 1, True, generator=self.torch_generator(flat.device)).T
        return out.reshape(probs.shape[:-1])

    def gumbel(self, temperature: float, shape: tuple[int, ...], device) -> torch.Tensor:
        """Float32 `temperature * Gumbel(0, 1)` noise: scaled in float64 by numpy, then cast (the official order)."""
        noise = float(temperature) * self.numpy.gumbel(size=tuple(int(s) for s in shape))
        return torch.from_numpy(noise).to(torch.float32).to(device)
