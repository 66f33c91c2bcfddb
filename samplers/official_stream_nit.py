"""The random stream of the official NiT sampling script (`projects/sample/sample_c2i_ddp.py`), `sample.rng: official`.

The script seeds each process once, `torch.manual_seed(global_seed * world_size + rank)`, and then, for every batch
of `--per-proc-batch-size` n images (every batch full: the total is rounded up to whole batches; one resolution per
run), draws on the default generator of its device:
  1. the initial noise `randn((n, C, h·p, w·p))` in the sampling dtype (bf16), packed row-major per image to tokens
     '(b h w) c p1 p2' (the layout the samples are unpacked from);
  2. the labels `randint(0, num_classes, (n,))`;
  3. with `--mode sde`, at each of the first steps − 1 Euler–Maruyama steps, before the model call, one
     `randn_like(state)`: float64, the shape of the packed state (n·h·w, C, p, p) (guided steps double the model's
     input, not the noise).
The ODE draws nothing after 1–2. (The draw order 1 then 2 and the unpacked noise shape are those of the authors'
DiT-derived sampling scripts, which draw noise, then labels.)

`NiTOfficialStream(seed, batch_size)` owns one torch.Generator per device seeded with `seed`, which then produces
exactly what the default generator produces after `torch.manual_seed(seed)`, without touching global state. On a GPU
that is the script's stream itself (its model and autoencoder are built on the CPU, so nothing else draws on the
GPU generator before the first batch). One process only (the script's rank r uses seed S·world + r and writes the
images j·world + r of each round; our ranks take contiguous units). The stream carries on from call to call: batches
must come in order; a short last batch is sampled as a full one and cut (the script samples whole batches):
models.nit_sampling.sample_official.
"""
from __future__ import annotations

import torch

from samplers.official_stream import OfficialStream


class NiTOfficialStream:
    def __init__(self, seed: int, batch_size: int, noise_dtype: torch.dtype = torch.bfloat16):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.seed, self.batch_size, self.noise_dtype = int(seed), int(batch_size), noise_dtype
        self._devices = OfficialStream(self.seed)  # per-device generators seeded like torch.manual_seed

    def __repr__(self) -> str:
        return f"NiTOfficialStream(seed={self.seed}, batch_size={self.batch_size})"

    def generator(self, device) -> torch.Generator:
        return self._devices.torch_generator(device)

    def batch(self, channels: int, h: int, w: int, patch_size: int, num_classes: int, device
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels Long[n], packed initial noise (n·h·w, C, p, p) in noise_dtype) of the next full batch of n =
        batch_size images on an (h, w) token grid; draws 1 and 2 of the module docstring."""
        n, p, g = self.batch_size, int(patch_size), self.generator(device)
        z = torch.randn((n, channels, h * p, w * p), generator=g, dtype=self.noise_dtype, device=g.device)
        y = torch.randint(0, int(num_classes), (n,), generator=g, device=g.device)
        z = z.reshape(n, channels, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(n * h * w, channels, p, p)
        return y, z

    def step_noise(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """ε of Euler–Maruyama step `step`: randn_like(x) of the state x (float64, packed), draw 3."""
        g = self.generator(x.device)
        return torch.randn(x.shape, generator=g, dtype=x.dtype, device=x.device)

