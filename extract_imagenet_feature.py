"""Tokenize an ImageNet-layout folder once, for training on pre-extracted features.

Official-compatible (AutoNAT / ENAT):
    python extract_imagenet_feature.py --path data --split train [--input_res 256|512]
        -> assets/imagenet{res}_vq_features/{split}.npy, int64 [2N, 1 + h*w], rows [label, tokens...]
NiT (DC-AE latents, per-image safetensors + data-meta JSONL):
    python extract_imagenet_feature.py --path data --split train --tokenizer dcae --input_res 256|512|native
Scale out with torchrun (any number of processes / nodes; the output is byte-identical):
    torchrun --nproc_per_node 8 extract_imagenet_feature.py --path data --split train --input_res 256
Interrupted runs resume: finished shards are kept and skipped (--max_shards N stops each process after N shards,
exit code 3, for time-limited jobs). A finished output is never rewritten. Unreadable images are skipped, logged,
counted and listed next to the output (`<output stem>_skipped.txt`). Across nodes, --output must be on a file
system that every node sees (rank 0 plans the shards and assembles the result).

Row order of the .npy (train split): per block of 128 consecutive images of the sorted list (class folders sorted,
then paths), the originals then their flips, as the official script does per batch of 128; fixed blocks make the
file independent of --batch_size and of the number of processes. Other splits: originals only.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import numpy as np
import torch
from loguru import logger
from tqdm import tqdm

from datasets import imagefolder as imf
from datasets import latent_writer as lw
from datasets import token_writer as tw
from datasets.transforms import center_crop_arr, native_resolution_resize
from core import dist


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", default="data", help="ImageNet root holding <split>/<class>/<images>")
    p.add_argument("--split", default="train", help="sub-folder of --path; 'train' also encodes horizontal flips")
    p.add_argument("--input_res", default="256", help="256 | 512 (any int) ; dcae also 'native'")
    p.add_argument("--tokenizer", default="vqgan", choices=["vqgan", "dcae"])
    p.add_argument("--output", default=None, help="vqgan: .npy path; dcae: output folder")
    p.add_argument("--batch_size", type=int, default=128, help="images per forward (flips double it)")
    p.add_argument("--vq_ckpt", default=os.path.join("assets", "vqgan_jax_strongaug.ckpt"))
    p.add_argument("--vq_config", default="mage", help="VQGAN size: mage (released) | tiny (tests)")
    p.add_argument("--dcae_path", default=os.path.join("assets", "dc-ae-f32c32-sana-1.1-diffusers"))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--num_workers", type=int, default=4, help="image-decoding workers per process")
    p.add_argument("--shard_size", type=int, default=1024, help="images per resumable shard (multiple of --row_block)")
    p.add_argument("--row_block", type=int, default=tw.ROW_BLOCK,
                   help="train split: rows are originals then flips per block of this many images (official 128)")
    p.add_argument("--max_shards", type=int, default=0,
                   help="stop each process after this many shards (time-limited jobs; re-run to continue)")
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)
    if a.row_block <= 0 or a.shard_size <= 0 or a.shard_size % a.row_block:
        p.error(f"--shard_size must be a positive multiple of --row_block ({a.row_block}), got {a.shard_size}")
    if a.tokenizer == "vqgan" and not str(a.input_res).isdigit():
        p.error(f"--input_res for the VQGAN must be an integer (256 or 512), got {a.input_res!r}")
    if a.tokenizer == "dcae" and not (str(a.input_res).isdigit() or str(a.input_res).lower() in ("native", "nr")):
        p.error(f"--input_res for DC-AE must be an integer (256, 512) or 'native', got {a.input_res!r}")
    return a


def prepare_image(img, res: int | None, multiple: int) -> np.ndarray:
    """ADM center crop at a fixed resolution, or NiT's native-resolution resize when res is None."""
    if res is not None:
        return center_crop_arr(img, res)
    return native_resolution_resize(img, multiple=multiple)


class Job:
    """What one extraction produces: how to prepare an image, encode a batch, write a shard, assemble."""

    def __init__(self, args, device):
        self.args, self.device = args, device
        self.flip = args.split == "train" or args.tokenizer == "dcae"
        if args.tokenizer == "vqgan":
            from tokenizer.vqgan import VQGAN_CONFIGS, WEIGHTS_HELP, VQGANTokenizer
            self.res = int(args.input_res)
            self.out = args.output or os.path.join("assets", f"imagenet{self.res}_vq_features", f"{args.split}.npy")
            self.store = tw.ShardStore(os.path.join(os.path.dirname(self.out) or ".", f".{os.path.basename(self.out)}"
                                                    f".shards"), ".npz")
            if not os.path.isfile(args.vq_ckpt):
                raise SystemExit(f"VQGAN checkpoint not found: {args.vq_ckpt}; {WEIGHTS_HELP}")
            self.weights = tw.file_fingerprint(args.vq_ckpt)
            self.load = lambda: VQGANTokenizer.from_checkpoint(args.vq_ckpt, args.vq_config, device)
            if args.vq_config not in VQGAN_CONFIGS:
                raise SystemExit(f"--vq_config {args.vq_config!r} is unknown; known: {sorted(VQGAN_CONFIGS)}")
            self.config = VQGAN_CONFIGS[args.vq_config]
            self.downsample = 2 ** (len(self.config["ch_mult"]) - 1)
            self.data_type = None
        else:
            self.data_type = lw.data_type_for(args.input_res)
            self.res = None if self.data_type == "native-resolution" else int(args.input_res)
            self.ae_name = os.path.basename(os.path.normpath(args.dcae_path))
            self.out = args.output or os.path.join("assets", f"imagenet_{args.split}_{self.ae_name}")
            tag = lw.type_tag(self.data_type)
            self.meta_path = os.path.join(self.out, "data_meta", f"{self.ae_name}_{tag}_meta.jsonl")
            self.store = tw.ShardStore(os.path.join(self.out, f".shards_{tag}"), ".json")
            from tokenizer.dcae import DCAETokenizer, load_dcae_config
            self.load = lambda: DCAETokenizer.from_local_dir(args.dcae_path, device=device)
            self.config = load_dcae_config(args.dcae_path)
            blocks = self.config.get("encoder_block_out_channels") or self.config["block_out_channels"]
            self.downsample = 2 ** (len(blocks) - 1)
            wfile = os.path.join(args.dcae_path, "diffusion_pytorch_model.safetensors")
            self.weights = tw.file_fingerprint(wfile) if os.path.isfile(wfile) else "config-only"
        self.final = self.out if args.tokenizer == "vqgan" else self.meta_path
        self.skipped_path = os.path.splitext(self.final)[0] + "_skipped.txt"

    def manifest(self, files, labels):
        return {"format": 1, "tokenizer": self.args.tokenizer, "config": str(self.config), "weights": self.weights,
                "split": self.args.split, "input_res": str(self.args.input_res), "flip": self.flip,
                "n_images": len(files), "images": tw.list_digest(files, labels), "shard_size": self.args.shard_size,
                "row_block": self.args.row_block}

    @property
    def prepare(self):
        return functools.partial(prepare_image, res=self.res, multiple=self.downsample)

    def encode(self, arrs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 HWC images of one size -> (originals, flips) codes/latents on the CPU."""
        x = imf.stack_uint8(arrs).to(self.device)
        if self.flip:
            x = torch.cat([x, x.flip(-1)])
        if self.args.tokenizer == "vqgan":
            z = self.tok.encode_unit(x.float() / 255.0)  # the official [0, 1] input, same arithmetic
        else:
            z = self.tok.encode(x.float() / 127.5 - 1.0)
        z = z.cpu()
        n = len(arrs)
        return (z[:n], z[n:]) if self.flip else (z, None)


class ShardResult:
    """Accumulates one shard's encoded chunks; `write` stores the shard file once its last chunk is in."""

    def __init__(self, job, shard_id, files, labels):
        self.job, self.shard_id, self.files, self.labels = job, shard_id, files, labels
        self.idx_ok, self.codes, self.flips, self.lines, self.skipped = [], [], [], [], []

    def add(self, items) -> None:
        job, files = self.job, self.files
        good = []
        for i, arr, info in items:
            if arr is None:
                self.skipped.append(files[i])
                logger.warning(f"[rank {dist.rank()}] skipped unreadable image {files[i]}: {info['error']}")
            else:
                good.append((i, arr, info))
        if not good:
            return
        if job.args.tokenizer == "vqgan":
            z, zf = job.encode([a for _, a, _ in good])
            self.idx_ok += [i for i, _, _ in good]
            self.codes.append(z.reshape(len(good), -1).numpy())
            if zf is not None:
                self.flips.append(zf.reshape(len(good), -1).numpy())
            return
        # DC-AE: native-resolution images differ in size, so they are encoded one at a time
        for grp in ([good] if job.res is not None else [[g] for g in good]):
            z, zf = job.encode([a for _, a, _ in grp])
            for k, (i, arr, info) in enumerate(grp):
                lat = torch.stack([z[k], zf[k]]).float()
                lw.save_latent(os.path.join(job.out, job.data_type, lw.latent_relpath(files[i])), lat, self.labels[i])
                self.lines.append(lw.meta_line(files[i], job.data_type, info["ori_w"], info["ori_h"], arr.shape[1],
                                               arr.shape[0], lat.shape[-1], lat.shape[-2]))

    def write(self) -> int:
        job = self.job
        if job.args.tokenizer == "vqgan":
            hw = (job.res // job.downsample) ** 2
            empty = np.zeros((0, hw), np.int64)
            codes = np.concatenate(self.codes) if self.codes else empty
            flips = (np.concatenate(self.flips) if self.flips else empty) if job.flip else None
            rows = tw.order_token_rows(self.idx_ok, [self.labels[i] for i in self.idx_ok], codes, flips,
                                       job.args.row_block)
            tw.save_token_shard(job.store, self.shard_id, rows, self.skipped)
        else:
            lw.save_meta_shard(job.store, self.shard_id, self.lines, self.skipped)
        return len(self.skipped)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = dist.init_distributed(None if args.device == "auto" else args.device)
    job = Job(args, device)
    root = os.path.join(args.path, args.split)

    # rank 0 decides everything that must agree across processes and shares it
    plan = None
    if dist.is_main():
        try:
            if os.path.isfile(job.final):
                plan = {"exists": True}
            else:
                files, labels, classes = imf.list_image_folder(root)
                job.store.open(job.manifest(files, labels))
                shards = tw.shard_ranges(len(files), args.shard_size)
                pending = [s for s in range(len(shards)) if not job.store.done(s)]
                plan = {"files": files, "labels": labels, "n_classes": len(classes), "shards": shards,
                        "pending": pending}
        except Exception as e:  # every rank must stop with the same message, not hang in a collective
            plan = {"error": f"{type(e).__name__}: {e}"}
    plan = dist.broadcast_object(plan)
    if "error" in plan:
        raise SystemExit(f"extract_imagenet_feature: {plan['error']}")
    if plan.get("exists"):
        if dist.is_main():
            logger.info(f"{job.final} exists; nothing to do (delete it to extract again)")
        dist.destroy()
        return 0
    files, labels, shards, pending = plan["files"], plan["labels"], plan["shards"], plan["pending"]
    mine = pending[dist.rank()::dist.world_size()]
    if args.max_shards > 0:
        mine = mine[:args.max_shards]
    if dist.is_main():
        logger.info(f"{len(files)} images in {plan['n_classes']} classes under {root}; {len(shards)} shards, "
                    f"{len(pending)} to do on {dist.world_size()} process(es) -> {job.final}")

    job.tok = job.load() if mine else None
    chunks = [(s, list(range(lo, hi))[c:c + args.batch_size])
              for s in mine for lo, hi in [shards[s]] for c in range(0, hi - lo, args.batch_size)]
    dataset = imf.ImageListDataset(root, files, job.prepare)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[c for _, c in chunks], collate_fn=imf.collate_list,
                                         num_workers=args.num_workers if chunks else 0)
    n_mine = sum(len(c) for _, c in chunks)
    bar = tqdm(total=n_mine, unit="img", disable=args.no_progress or not dist.is_main(), dynamic_ncols=True)
    dist.barrier()  # time the encoding of all ranks together, not each rank's model loading
    t0, done_imgs, n_skipped, result = time.time(), 0, 0, None
    for k, items in enumerate(loader):
        shard_id = chunks[k][0]
        if result is None:
            result = ShardResult(job, shard_id, files, labels)
        result.add(items)
        if k + 1 == len(chunks) or chunks[k + 1][0] != shard_id:
            n_skipped += result.write()
            result = None
        done_imgs += len(items)
        bar.update(len(items))
        bar.set_postfix_str(f"~{done_imgs * dist.world_size() / max(time.time() - t0, 1e-9):.1f} img/s all ranks")
    bar.close()
    totals = dist.all_reduce_mean(torch.tensor([float(done_imgs), float(n_skipped)])) * dist.world_size()
    dist.barrier()
    elapsed = time.time() - t0

    code = 0
    if dist.is_main():
        all_done = all(job.store.done(s) for s in range(len(shards)))
        logger.info(f"encoded {int(totals[0])} images ({int(totals[1])} skipped) in {elapsed:.1f} s: "
                    f"{totals[0] / max(elapsed, 1e-9):.2f} img/s")
        if not all_done:
            left = sum(not job.store.done(s) for s in range(len(shards)))
            logger.info(f"stopped with {left} of {len(shards)} shards left; run the same command again to continue")
            code = 3
        else:
            code = finish(job, len(shards))
    dist.barrier()
    dist.destroy()
    return code


def finish(job, n_shards: int) -> int:
    if job.args.tokenizer == "vqgan":
        width = 1 + (job.res // job.downsample) ** 2
        n, skipped = tw.assemble_token_file(job.store, n_shards, job.out, width)
        what = f"{job.out}: int64 [{n}, {width}]"
    else:
        n, skipped = lw.assemble_meta(job.store, n_shards, job.meta_path)
        merged = lw.write_merge_meta(os.path.dirname(job.meta_path), job.ae_name)
        what = f"{job.meta_path}: {n} images (merged meta: {merged})"
    tw.atomic_write_bytes(job.skipped_path, "".join(s + "\n" for s in skipped).encode())
    job.store.remove()
    logger.info(f"wrote {what}; {len(skipped)} unreadable image(s) listed in {job.skipped_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
