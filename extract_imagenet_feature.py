"""Tokenize an ImageNet-layout folder once, for training on pre-extracted features.

Official-compatible (AutoNAT / ENAT):
    python extract_imagenet_feature.py --path data --split train [--input_res 256|512]
        -> assets/imagenet{res}_vq_features/{split}.npy, int64 [2N, 1 + h*w], rows [label, tokens...]
NiT (DC-AE latents, per-image safetensors + data-meta JSONL):
    python extract_imagenet_feature.py --path data --split train --tokenizer dcae --input_res 256|512|native
Scale out with torchrun (any number of processes / nodes; the output is byte-identical):
    torchrun --nproc_per_node 8 extract_imagenet_feature.py --path data --split train --input_res 256
Interrupted runs resume: finished shards are kept and skipped (--max_shards N stops each process after N shards,
exit code 3, for time-limited jobs). A finished output is never rewritten; its settings are recorded beside it
(`<output stem>_settings.json`) and a re-run with other ones is refused, naming them. Unreadable images are
skipped, logged, counted and listed next to the output (`<output stem>_skipped.txt`). Across nodes, --output must
be on a file system that every node sees (rank 0 plans the shards and assembles the result).

Bad input (missing or empty folder, unreadable checkpoint, unwritable output, every image unreadable, ...) stops
with one `error: ...` line on stderr and exit code 2, on every process of a torchrun job; existing outputs and
finished shards are left as they were.

Row order of the .npy (train split): per block of 128 consecutive images of the sorted list (class folders sorted,
then paths), the originals then their flips, as the official script does per batch of 128; fixed blocks make the
file independent of --batch_size and of the number of processes. Other splits: originals only.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
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


class InputError(Exception):
    """Bad input: reported as one `error:` line and exit code 2, never as a traceback."""


# exceptions that mean bad input (files, folders, settings) rather than a bug; KeyError covers
# tokenizer.CheckpointMismatchError
USER_ERRORS = (InputError, OSError, ValueError, KeyError)

# manifest key -> the setting that changes it, for the message when unfinished shards were made otherwise
MANIFEST_SETTINGS = {"input_res": "--input_res", "split": "--split", "tokenizer": "--tokenizer",
                     "config": "--vq_config / DC-AE config.json",
                     "weights": "tokenizer weights (--vq_ckpt / --dcae_path)",
                     "images": "the image list under --path", "n_images": "the number of images under --path",
                     "shard_size": "--shard_size", "row_block": "--row_block", "flip": "--split", "format": "format",
                     "path": "--path"}
# what a finished output is checked against (its `<output stem>_settings.json`): the settings that change its content
# and can be known without listing the image folder (the folder itself stands for its images)
FINISHED_KEYS = ("format", "tokenizer", "config", "weights", "split", "input_res", "flip", "row_block", "path")


def one_line(e: BaseException) -> str:
    """The message of an exception on one line (KeyError's str() would quote it)."""
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
        msg = f"{e.filename}: {msg}"
    return " ".join(msg.split()) or type(e).__name__


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # the house format: one `error:` line, exit code 2 (argparse adds the usage text)
        self.exit(2, f"error: {message} (see --help)\n")


def default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(4, cores)


def parse_args(argv=None):
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", default="data", help="ImageNet root holding <split>/<class>/<images>")
    p.add_argument("--split", default="train", help="sub-folder of --path; 'train' also encodes horizontal flips")
    p.add_argument("--input_res", default="256", help="256 | 512 (any multiple of the tokenizer's downsampling "
                                                      "factor: 16 for the VQGAN, 32 for DC-AE); dcae also 'native'")
    p.add_argument("--tokenizer", default="vqgan", choices=["vqgan", "dcae"])
    p.add_argument("--output", default=None, help="vqgan: .npy path; dcae: output folder")
    p.add_argument("--batch_size", type=int, default=128, help="images per forward (flips double it)")
    p.add_argument("--vq_ckpt", default=os.path.join("assets", "vqgan_jax_strongaug.ckpt"))
    p.add_argument("--vq_config", default="mage", help="VQGAN size: mage (released) | tiny (tests)")
    p.add_argument("--dcae_path", default=os.path.join("assets", "dc-ae-f32c32-sana-1.1-diffusers"))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--num_workers", type=int, default=None,
                   help="image-decoding workers per process (default: min(4, available cores))")
    p.add_argument("--shard_size", type=int, default=1024, help="images per resumable shard (multiple of --row_block)")
    p.add_argument("--row_block", type=int, default=tw.ROW_BLOCK,
                   help="train split: rows are originals then flips per block of this many images (official 128)")
    p.add_argument("--max_shards", type=int, default=0,
                   help="stop each process after this many shards (time-limited jobs; re-run to continue)")
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)
    if a.row_block <= 0 or a.shard_size <= 0 or a.shard_size % a.row_block:
        p.error(f"--shard_size must be a positive multiple of --row_block ({a.row_block}), got {a.shard_size}")
    if a.batch_size <= 0:
        p.error(f"--batch_size must be a positive number of images, got {a.batch_size}")
    if a.max_shards < 0:
        p.error(f"--max_shards must be >= 0 (0: no limit), got {a.max_shards}")
    if a.num_workers is None:
        a.num_workers = default_workers()
    elif a.num_workers < 0:
        p.error(f"--num_workers must be >= 0, got {a.num_workers}")
    if a.device not in ("auto", "cpu") and not a.device.startswith("cuda"):
        p.error(f"--device must be auto, cpu or cuda[:N], got {a.device!r}")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {a.device}: no CUDA GPU is available (torch.cuda.is_available() is False); "
                f"use --device cpu or auto")
    res = str(a.input_res)
    if a.tokenizer == "vqgan" and not (res.isdigit() and int(res) > 0):
        p.error(f"--input_res for the VQGAN must be a positive integer (256 or 512), got {a.input_res!r}")
    if a.tokenizer == "dcae" and not ((res.isdigit() and int(res) > 0) or res.lower() in ("native", "nr")):
        p.error(f"--input_res for DC-AE must be a positive integer (256, 512) or 'native', got {a.input_res!r}")
    return a


def prepare_image(img, res: int | None, multiple: int) -> np.ndarray:
    """ADM center crop at a fixed resolution, or NiT's native-resolution resize when res is None."""
    if res is not None:
        return center_crop_arr(img, res)
    return native_resolution_resize(img, multiple=multiple)


def check_res(res: int, downsample: int, what: str) -> None:
    if res % downsample:
        lo, hi = res // downsample * downsample, (res // downsample + 1) * downsample
        near = f"{lo} or {hi}" if lo else f"{hi}"
        raise InputError(f"--input_res {res} is not a multiple of {downsample}, the downsampling factor of {what} "
                         f"(try {near})")


def check_writable(folder: str) -> None:
    """Create `folder` and write a probe file into it, so a bad --output fails before any image is decoded."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write_test")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"output folder {folder} cannot be created or written ({e.strerror or e}); "
                         f"choose another --output") from None


def all_gather(obj) -> list:
    if not dist.is_dist():
        return [obj]
    out = [None] * dist.world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


class Job:
    """What one extraction produces: how to prepare an image, encode a batch, write a shard, assemble."""

    def __init__(self, args, device):
        self.args, self.device = args, device
        self.flip = args.split == "train" or args.tokenizer == "dcae"
        if args.tokenizer == "vqgan":
            from tokenizer.vqgan import VQGAN_CONFIGS, WEIGHTS_HELP, VQGANTokenizer
            if args.vq_config not in VQGAN_CONFIGS:
                raise InputError(f"--vq_config {args.vq_config!r} is unknown; known: {sorted(VQGAN_CONFIGS)}")
            self.config = VQGAN_CONFIGS[args.vq_config]
            self.downsample = 2 ** (len(self.config["ch_mult"]) - 1)
            self.res = int(args.input_res)
            check_res(self.res, self.downsample, f"the VQGAN '{args.vq_config}'")
            self.out = args.output or os.path.join("assets", f"imagenet{self.res}_vq_features", f"{args.split}.npy")
            if os.path.isdir(self.out):
                raise InputError(f"--output {self.out} is a folder; for the VQGAN it names the .npy file to write")
            self.store = tw.ShardStore(os.path.join(os.path.dirname(self.out) or ".", f".{os.path.basename(self.out)}"
                                                    f".shards"), ".npz")
            if not os.path.isfile(args.vq_ckpt):
                raise InputError(f"VQGAN checkpoint not found: {args.vq_ckpt} (--vq_ckpt); {WEIGHTS_HELP}")
            self.weights = tw.file_fingerprint(args.vq_ckpt)
            self.load = lambda: VQGANTokenizer.from_checkpoint(args.vq_ckpt, args.vq_config, device)
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
            blocks = self.config.get("encoder_block_out_channels") or self.config.get("block_out_channels")
            if not blocks:
                raise InputError(f"{os.path.join(args.dcae_path, 'config.json')}: no encoder_block_out_channels; "
                                 f"expected the config of a diffusers AutoencoderDC (--dcae_path)")
            self.downsample = 2 ** (len(blocks) - 1)
            if self.res is not None:
                check_res(self.res, self.downsample, "DC-AE")
            if os.path.isfile(self.out):
                raise InputError(f"--output {self.out} is a file; for DC-AE it names the output folder")
            wfile = os.path.join(args.dcae_path, "diffusion_pytorch_model.safetensors")
            self.weights = tw.file_fingerprint(wfile) if os.path.isfile(wfile) else "config-only"
        self.final = self.out if args.tokenizer == "vqgan" else self.meta_path
        self.skipped_path = os.path.splitext(self.final)[0] + "_skipped.txt"
        self.settings_path = os.path.splitext(self.final)[0] + "_settings.json"
        self.out_dir = (os.path.dirname(self.out) or ".") if args.tokenizer == "vqgan" else self.out
        self.tok = None

    def finished(self) -> bool:
        """The final output exists and holds rows (an empty token file, as older versions wrote when every image
        was unreadable, does not count as finished)."""
        if not os.path.isfile(self.final):
            return False
        if self.args.tokenizer != "vqgan":
            return True
        try:
            n = np.load(self.final, mmap_mode="r").shape[0]
        except (OSError, ValueError):
            return True  # not ours to judge or replace: left alone
        if n == 0:
            logger.warning(f"{self.final} holds no rows (every image was unreadable in an earlier run); "
                           f"extracting again")
        return n > 0

    def manifest(self, files, labels):
        return {"format": 1, "tokenizer": self.args.tokenizer, "config": str(self.config), "weights": self.weights,
                "split": self.args.split, "input_res": str(self.args.input_res), "flip": self.flip,
                "n_images": len(files), "images": tw.list_digest(files, labels), "shard_size": self.args.shard_size,
                "row_block": self.args.row_block}

    def settings(self) -> dict:
        """The FINISHED_KEYS of this command (no folder listing needed)."""
        now = {**self.manifest([], []), "path": os.path.abspath(self.args.path)}
        return {k: now[k] for k in FINISHED_KEYS}

    def check_finished(self) -> None:
        """A finished output made with other settings is refused (naming them), not reported as done; one written
        before settings were recorded is accepted with a warning saying they are unknown."""
        path = self.settings_path
        if not os.path.isfile(path):
            logger.warning(f"{self.final} was written without {os.path.basename(path)} (by an earlier version): the "
                           f"settings it was made with are unknown and cannot be checked against this command's; "
                           f"delete it to extract again with these settings")
            return
        try:
            with open(path) as f:
                old = json.load(f)
            if not isinstance(old, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: unreadable ({one_line(e)}); it records the settings of {self.final}: delete "
                             f"both to extract again") from None
        now = self.settings()
        diff = [k for k in FINISHED_KEYS if old.get(k) != now[k]]
        if diff:
            def show(k):
                a, b = old.get(k), now[k]
                short = all(len(str(v)) <= 60 for v in (a, b))
                return f"{MANIFEST_SETTINGS.get(k, k)} {a} -> {b}" if short else MANIFEST_SETTINGS.get(k, k)
            raise InputError(f"{self.final} exists but was extracted with other settings (differing: "
                             f"{'; '.join(show(k) for k in diff)}); delete it and {os.path.basename(path)} to "
                             f"extract again, or choose another --output")

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

    def write(self) -> None:
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


def main(argv=None) -> int:
    """Exit code 0 done, 3 stopped early (--max_shards), 2 bad input (one `error:` line on every process)."""
    args = parse_args(argv)
    try:
        device = dist.init_distributed(None if args.device == "auto" else args.device)
        code = run(args, device)
    except USER_ERRORS as e:  # process-group set-up (errors of the run itself are agreed on inside run)
        code = report(one_line(e))
    dist.destroy()
    return code


def report(message: str, agreed: bool = False) -> int:
    """Print the error line -> exit code 2. `agreed`: every rank reports this same error now, so they wait for each
    other before exiting (torchrun stops the remaining workers as soon as one exits with an error)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    if agreed:
        dist.barrier()
    return 2


def plan_on_main(job, root: str) -> dict:
    """Rank 0: check the output, list the images, load the tokenizer (a bad checkpoint fails here, before any
    shard state is written), open the shard store. Returns the plan every rank follows."""
    args = job.args
    if job.finished():
        job.check_finished()
        return {"exists": True}
    if not os.path.isdir(root):
        raise InputError(f"image folder {root} not found (--path {args.path} --split {args.split}); expected "
                         f"the ImageNet layout <path>/<split>/<class folder>/<images>")
    check_writable(job.out_dir)
    files, labels, classes = imf.list_image_folder(root)
    job.tok = job.load()
    job.record = {**job.manifest(files, labels), "path": os.path.abspath(args.path)}
    job.store.open(job.manifest(files, labels), MANIFEST_SETTINGS)
    shards = tw.shard_ranges(len(files), args.shard_size)
    pending = [s for s in range(len(shards)) if not job.store.done(s)]
    todo = set(pending)
    for s in range(len(shards)):  # a damaged finished shard stops the run now, not after the other shards' work
        if s not in todo:
            (tw.check_token_shard if args.tokenizer == "vqgan" else lw.load_meta_shard)(job.store, s)
    return {"files": files, "labels": labels, "n_classes": len(classes), "shards": shards, "pending": pending}


def run(args, device) -> int:
    try:  # settings and files every rank checks the same way; agreed on anyway, so that no rank runs on alone
        job, err = Job(args, device), None
    except USER_ERRORS as e:
        job, err = None, one_line(e)
    errors = [e for e in all_gather(err) if e]
    if errors:
        return report(errors[0], agreed=True)
    root = os.path.join(args.path, args.split)

    # rank 0 decides everything that must agree across processes and shares it, errors included, so that every
    # rank stops with the same message instead of waiting in a collective
    plan = None
    if dist.is_main():
        try:
            plan = plan_on_main(job, root)
        except USER_ERRORS as e:
            plan = {"error": one_line(e)}
        except Exception as e:  # a bug: the other ranks stop cleanly, rank 0 shows the traceback
            dist.broadcast_object({"error": f"rank 0 failed: {type(e).__name__}: {one_line(e)}", "crash": True})
            raise
    plan = dist.broadcast_object(plan)
    if "error" in plan:
        return report(plan["error"], agreed="crash" not in plan)
    if plan.get("exists"):
        if dist.is_main():
            logger.info(f"{job.final} exists; nothing to do (delete it to extract again)")
        return 0
    files, labels, shards, pending = plan["files"], plan["labels"], plan["shards"], plan["pending"]
    mine = pending[dist.rank()::dist.world_size()]
    if args.max_shards > 0:
        mine = mine[:args.max_shards]
    if dist.is_main():
        logger.info(f"{len(files)} images in {plan['n_classes']} classes under {root}; {len(shards)} shards, "
                    f"{len(pending)} to do on {dist.world_size()} process(es) -> {job.final}")

    dist.barrier()  # time the encoding of all ranks together, not rank 0's planning
    t0 = time.time()
    try:
        err, stats = None, encode_shards(job, root, files, labels, shards, mine)
    except USER_ERRORS as e:  # e.g. a full disk on one rank: every rank reports it below
        err, stats = f"rank {dist.rank()}: {one_line(e)}", (0, 0, None)
    gathered = all_gather((err, *stats))
    elapsed = time.time() - t0
    errors = [g[0] for g in gathered if g[0]]
    if errors:
        return report(errors[0] + ("" if len(errors) == 1 else f" (and {len(errors) - 1} more rank(s))"), agreed=True)

    result = None
    if dist.is_main():
        n_enc, n_skip = sum(g[1] for g in gathered), sum(g[2] for g in gathered)
        firsts = [g[3] for g in gathered if g[3] is not None]
        first = f": first {files[min(firsts)]}" if firsts else ""
        logger.info(f"encoded {n_enc} images, skipped {n_skip} unreadable{first} in {elapsed:.1f} s: "
                    f"{n_enc / max(elapsed, 1e-9):.2f} img/s")
        try:
            left = sum(not job.store.done(s) for s in range(len(shards)))
            if left:
                logger.info(f"stopped with {left} of {len(shards)} shards left; run the same command again to "
                            f"continue")
                result = {"code": 3}
            else:
                result = {"code": finish(job, root, len(files), len(shards))}
        except USER_ERRORS as e:
            result = {"error": one_line(e)}
    result = dist.broadcast_object(result)
    return report(result["error"], agreed=True) if "error" in result else result["code"]


def encode_shards(job, root, files, labels, shards, mine) -> tuple[int, int, int | None]:
    """Encode and write this rank's shards -> (images encoded, images skipped, global index of the first skip)."""
    args = job.args
    if mine and job.tok is None:
        job.tok = job.load()
    chunks = [(s, list(range(lo, hi))[c:c + args.batch_size])
              for s in mine for lo, hi in [shards[s]] for c in range(0, hi - lo, args.batch_size)]
    dataset = imf.ImageListDataset(root, files, job.prepare)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[c for _, c in chunks], collate_fn=imf.collate_list,
                                         num_workers=args.num_workers if chunks else 0)
    bar = tqdm(total=sum(len(c) for _, c in chunks), unit="img", disable=args.no_progress or not dist.is_main(),
               dynamic_ncols=True)
    t0, done_imgs, n_skipped, first_skip, result = time.time(), 0, 0, None, None
    for k, items in enumerate(loader):
        shard_id = chunks[k][0]
        if result is None:
            result = ShardResult(job, shard_id, files, labels)
        result.add(items)
        bad = [i for i, arr, _ in items if arr is None]
        if bad and first_skip is None:
            first_skip = min(bad)
        n_skipped += len(bad)
        if k + 1 == len(chunks) or chunks[k + 1][0] != shard_id:
            result.write()
            result = None
        done_imgs += len(items)
        bar.update(len(items))
        bar.set_postfix_str(f"~{done_imgs * dist.world_size() / max(time.time() - t0, 1e-9):.1f} img/s all ranks")
    bar.close()
    return done_imgs - n_skipped, n_skipped, first_skip


def count_rows(job, n_shards: int) -> int:
    """Images that made it into the shards (a pass over the shard files before anything is assembled)."""
    n = 0
    for i in range(n_shards):
        if job.args.tokenizer == "vqgan":
            n += tw.load_token_shard(job.store, i)[0].shape[0]
        else:
            n += len(lw.load_meta_shard(job.store, i)[0])
    return n


def finish(job, root: str, n_files: int, n_shards: int) -> int:
    if count_rows(job, n_shards) == 0:
        # nothing to assemble: an empty output would look finished to the next run and to training
        first = next((s for i in range(n_shards) for s in shard_skipped(job, i)), None)
        job.store.remove()
        raise InputError(f"{root}: none of the {n_files} image files could be read (first: {first}); nothing was "
                         f"written (the warnings above give each file's error)")
    # the settings first: an output without them would be taken for one of an earlier version
    os.makedirs(os.path.dirname(os.path.abspath(job.settings_path)), exist_ok=True)
    tw.atomic_write_bytes(job.settings_path, json.dumps(job.record, indent=1, sort_keys=True).encode())
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


def shard_skipped(job, i: int) -> list[str]:
    if job.args.tokenizer == "vqgan":
        return tw.load_token_shard(job.store, i)[1]
    return lw.load_meta_shard(job.store, i)[1]


if __name__ == "__main__":
    sys.exit(main())
