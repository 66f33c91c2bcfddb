"""Inpainting on Fashion-MNIST with every demo generator that can edit (after scripts/demo.sh, demo_nit.sh,
demo_eqar.sh): the centre half (16x16 of 32x32) of the first N test images is regenerated under the image's own
class. Per family: FID-N of the edited images, of the family's unconditional samples (read from its demo eval), and of
the inputs with the centre filled by uniform noise, all against the reference statistics that demo eval used; a check
that every kept code / latent equals the input's exactly; a grid (input / mask / output) of the first images.
Prints one table and writes it to <out>/fid.txt. A family whose demo outputs are missing, or that has no editing,
is listed with the reason.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.images import save_grid, to_uint8  # noqa: E402
from engine.evaluate import latest_result  # noqa: E402

BOX = (8, 8, 24, 24)  # x0, y0, x1, y1: the centre half of each side of a 32x32 image
# the column AR continues a row of columns and cannot fill a hole: it regenerates the right half from the left one
REGION = {"eqar": (16, 0, 32, 32)}


def latest(folder: Path) -> Path | None:
    found = sorted(folder.glob("step_*.pt"))
    return found[-1] if found else None


def families(root: Path, data: str, fid: str | None) -> dict:
    """name -> (recipe, checkpoint, overrides, where its unconditional FID is, image size) of each demo."""
    common = {"eval.ref_images_path": data, **({"eval.inception_weights": fid} if fid else {})}
    vq = latest(root / "demo" / "vq" / "checkpoints")
    out = {}
    for name in ("nat", "enat"):
        run = root / "demo" / name
        out[name] = dict(recipe=f"configs/demo/{name}_fmnist.yaml", ckpt=latest(run / "checkpoints"),
                         keys={**common, "output_dir": str(run), "tokenizer.ckpt": str(vq) if vq else None,
                               # the demo's own statistics file, used as it is (not remade: eval.ref_images null)
                               "eval.ref_stats": str(root / "demo" / "fmnist_test_stats.npz"), "eval.ref_images": None,
                               "data.path": str(root / "demo" / "tokens" / "train.npy")},
                         uncond=(run / "eval", None), size=None, needs=[vq])
    nit = root / "demo_nit"
    out["nit"] = dict(recipe="configs/demo/nit_fmnist.yaml", ckpt=latest(nit / "train" / "checkpoints"),
                      keys={**common, "output_dir": str(nit / "train"),
                            "eval.ref_stats": str(nit / "data" / "ref_stats") + "/", "eval.ref_images": "fmnist-test",
                            "eval.ref_n": 500,  # demo_nit.sh: NIT_EVAL_N
                            "data.data_meta": str(nit / "data" / "fmnist_merge_meta.jsonl"),
                            "data.sampler_meta": str(nit / "data" / "fmnist_merge_LPFHP_1024.json"),
                            "data.latent_dirs": str(nit / "data" / "latents")},
                      uncond=(nit / "eval_trained" / "eval", "32x32"), size=(32, 32), needs=[])
    eq = root / "demo_eqar"
    tok = latest(eq / "tok" / "checkpoints")
    norm = eq / "latents.vae_norm"
    out["eqar"] = dict(recipe="configs/demo/eqar_fmnist.yaml", ckpt=latest(eq / "gen" / "checkpoints"),
                       keys={**common, "output_dir": str(eq / "gen"), "tokenizer.ckpt": str(tok) if tok else None,
                             "eval.ref_stats": str(eq / "fmnist_test_stats.npz"), "eval.ref_images": None,
                             "data.path": str(eq / "latents.pt"),
                             **({"tokenizer.vae_norm": float(norm.read_text())} if norm.is_file() else {})},
                       uncond=(eq / "gen" / "eval", None), size=None, needs=[tok, norm if norm.is_file() else None])
    return out


def kept_exact(codes: torch.Tensor, known: torch.Tensor, keep: torch.Tensor) -> bool:
    """Every kept code / latent (all its channels) equals the input's, bit for bit."""
    k, extra = keep, codes.dim() - keep.dim()
    if extra:  # channel dims: trailing (column tokens [B, L, C]) or one leading (latents [B, C, h, w])
        k = k.reshape(*k.shape, *[1] * extra) if tuple(codes.shape[:k.dim()]) == tuple(k.shape) else k.unsqueeze(1)
    k = k.expand_as(codes)
    return bool(torch.equal(codes.to(known.dtype)[k], known[k]))


def fid_of(ev, images_u8: torch.Tensor) -> float:
    ev.reset()
    for part in images_u8.split(100):
        ev.update(part)
    return float(ev.compute()["fid"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="outputs", help="where the demos wrote their outputs")
    ap.add_argument("--data", required=True, help="folder of the Fashion-MNIST IDX files")
    ap.add_argument("--out", default="outputs/demo_edit")
    ap.add_argument("-n", type=int, default=500, help="test images edited (FID-N)")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--families", default="nat,enat,nit,eqar")
    ap.add_argument("--fid-weights", default=None, help="FID-Inception weights file (default: the project's)")
    ap.add_argument("--ref-n", type=int, default=None, help="eval.ref_n of every family (default: its demo's)")
    args = ap.parse_args()
    from datasets.fmnist import FashionMNIST
    from engine.api import load_generator
    from engine.evaluate import _inception, build_evaluator, ensure_ref_stats
    torch.set_num_threads(max(1, torch.get_num_threads()))
    root, out = Path(args.root), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test = FashionMNIST(args.data, "test", size=32).get_batch(torch.arange(args.n))
    images, labels = to_uint8(test["image"]), test["label"].long()

    def noise_filled(box):
        x0, y0, x1, y1 = box
        out = images.clone()
        out[:, :, y0:y1, x0:x1] = torch.randint(0, 256, out[:, :, y0:y1, x0:x1].shape, dtype=torch.uint8,
                                                generator=torch.Generator().manual_seed(0))
        return out
    rows, inc, noise_fid = [], None, {}  # the noise-filled inputs' FID, once per reference file
    for name, f in families(root, args.data, args.fid_weights).items():
        if name not in args.families.split(","):
            continue
        if f["ckpt"] is None or None in f["needs"]:
            rows.append((name, None, None, None, None, 0.0, "demo outputs missing (run its demo first)"))
            continue
        t0 = time.time()
        keys = dict(f["keys"])  # None values are meant (eval.ref_images: null); a missing file was caught above
        if args.ref_n is not None:
            keys["eval.ref_n"] = args.ref_n
        g = load_generator(f["recipe"], checkpoint=f["ckpt"], device="cpu", **keys)
        if g.family.sampling.edit is None:
            rows.append((name, None, None, None, None, 0.0, "no editing in this family"))
            continue
        edited, exact = [], True
        box = REGION.get(name, BOX)
        x0, y0, x1, y1 = box
        for s in range(0, args.n, args.batch):
            idx = list(range(s, min(args.n, s + args.batch)))
            x = test["image"][idx]
            o, res = g.edit(x, "box:" + ",".join(map(str, box)), labels=labels[idx].tolist(), seed=0, indices=idx, return_codes=True)
            exact &= kept_exact(res["codes"], res["known"], res["keep"])
            edited.append(o.permute(0, 3, 1, 2)[:, :images.shape[1]])
        edited = torch.cat(edited)
        mask = torch.zeros_like(images[:8])
        mask[:, :, y0:y1, x0:x1] = 255
        save_grid(torch.stack([t for k in range(8) for t in (images[k], mask[k], edited[k])]), 8,
                  out / f"{name}_grid.png")
        if name == "eqar":  # one test image per class continued to 4x its width (by eye: outputs/demo_edit)
            first = [int((labels == c).nonzero()[0]) for c in range(10) if bool((labels == c).any())]
            long = g.edit(test["image"][first], None, labels=labels[first].tolist(), seed=0,
                          extend_right=3 * images.shape[-1])
            save_grid(long.permute(0, 3, 1, 2)[:, :images.shape[1]], len(first), out / "eqar_extend_x4.png")
        cfg = g.cfg
        if inc is None:
            inc = _inception(cfg, torch.device("cpu"))
        ref = ensure_ref_stats(cfg, torch.device("cpu"), size=f["size"], multi=f["size"] is not None, inception=inc)
        ev = build_evaluator(cfg, torch.device("cpu"), ref, inception=inc, quiet=True)
        fid_edit = fid_of(ev, edited)
        if (str(ref), box) not in noise_fid:
            noise_fid[str(ref), box] = fid_of(ev, noise_filled(box))
        fid_noise = noise_fid[str(ref), box]
        try:
            res = latest_result(*f["uncond"][:1], "samples")
            fid_uncond = res["sizes"][f["uncond"][1]]["fid"] if f["uncond"][1] else res["fid"]
            n_uncond = res["sizes"][f["uncond"][1]]["n"] if f["uncond"][1] else res["n"]
        except (FileNotFoundError, KeyError):
            fid_uncond, n_uncond = None, None
        rows.append((name, fid_edit, fid_uncond, n_uncond, fid_noise, time.time() - t0,
                     ("kept codes exact" if exact else "KEPT CODES CHANGED") + f"; region {box}"))
    lines = [f"regenerating a region of {args.n} Fashion-MNIST test images (x0, y0, x1, y1; the centre 16x16 {BOX}, "
             f"the column AR the right half {REGION['eqar']}), the image's own class, seed 0; the noise column fills "
             f"the same region with uniform noise; FID against each demo's test statistics",
             f"{'family':<7}{'FID edited':>12}{'FID uncond.':>13}{'FID noise':>11}{'seconds':>9}  check",
             ]
    for name, fe, fu, nu, fn, sec, note in rows:
        num = (lambda v: f"{v:.1f}" if v is not None else "-")
        unc = num(fu) + (f" (n={nu})" if nu is not None and nu != args.n else "")
        lines.append(f"{name:<7}{num(fe):>12}{unc:>13}{num(fn):>11}{sec:>9.0f}  {note}")
    text = "\n".join(lines)
    print(text)
    (out / "fid.txt").write_text(text + "\n")
    bad = [r for r in rows if r[6].startswith("KEPT CODES CHANGED")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
