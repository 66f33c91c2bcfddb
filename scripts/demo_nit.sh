#!/usr/bin/env bash
# NiT demo on a CPU: Fashion-MNIST at three aspect ratios (32x32, 32x48, 48x32) in pixel space (identity tokenizer,
# 4x4 patches), packed into 1024-token LPFHP packs, trained with 2 processes (one pack each per step), then sampled
# at every trained size and at one unseen size (48x48), with an FID-500 per size against test images of that size.
# Outputs (outputs/demo_nit/): samples_<H>x<W>.png (10 classes x 8), fid.txt, logs under train/ and eval_<H>x<W>/.
# Knobs: NIT_TRAIN_N (training images, each at 3 sizes), NIT_STEPS, NIT_EVAL_N (FID-N), NIT_OUT (output folder),
# FID_WEIGHTS (FID-Inception weights file).
# Measured (2-core CPU shared with other jobs, load average 7-10): 1544 s in all (references 4 x 500 images 269 s,
# 1500 steps at ~45 img/s 663 s, four evals of 500 images 600 s); 11.8 min user CPU time. FID-500: 32x32 242.2,
# 32x48 257.5, 48x32 282.3, unseen 48x48 298.9 (an undertrained 1.3M-param model: class shapes, noisy texture).
set -euo pipefail
source "$(dirname "$0")/common.sh"   # cd to the repo, .venv, PY, NPROC, OMP_NUM_THREADS, T0
ensure_fmnist
FID=()
if [ -n "${FID_WEIGHTS:-}" ]; then
  FID=(eval.inception_weights=$FID_WEIGHTS)
else
  ensure_fid_weights
fi

RUN="$PY -m torch.distributed.run --standalone --nproc_per_node=$NPROC train.py"
OUT=${NIT_OUT:-outputs/demo_nit}
EVAL_N=${NIT_EVAL_N:-500}
D=$OUT/data
SIZES="32x32 32x48 48x32"
UNSEEN=48x48
CFG=configs/demo/nit_fmnist.yaml
STEPS=${NIT_STEPS:-1500}
DATA_ARGS=(data.data_meta=$D/fmnist_merge_meta.jsonl data.sampler_meta=$D/fmnist_merge_LPFHP_1024.json
           data.latent_dirs=$D/latents)
lap() { echo "   ($(( $(date +%s) - T0 )) s so far)"; }

echo "== 1/4 latents at $SIZES (identity tokenizer) + FID references of the test split at $SIZES $UNSEEN"
$PY scripts/nit_fmnist_data.py --data "$DATA" --out $D --n-train "${NIT_TRAIN_N:-3000}" --sizes "${SIZES// /,}" \
  --ref-sizes "${SIZES// /,},$UNSEEN" --ref-n $EVAL_N ${FID_WEIGHTS:+--fid-weights "$FID_WEIGHTS"}
$PY scripts/pack_dataset.py --data-meta $D/fmnist_merge_meta.jsonl --max-seq-len 1024 --patch-size 4
lap
echo "== 2/4 packed training ($STEPS steps, $NPROC processes, one pack each per step)"
# (progress bars end in carriage returns: one log line per line before filtering)
$RUN --config $CFG --mode pretrain "${DATA_ARGS[@]}" output_dir=$OUT/train train.steps=$STEPS 2>&1 | tr '\r' '\n' \
  | grep -E "\| (step|done|family)" || true
lap
echo "== 3/4 samples and FID-$EVAL_N at every trained size and the unseen $UNSEEN"
CKPT=$OUT/train/checkpoints/step_$(printf %07d "$STEPS").pt
for s in $SIZES $UNSEEN; do
  h=${s%x*}; w=${s#*x}
  $RUN --config $CFG --mode eval "${DATA_ARGS[@]}" "${FID[@]}" eval.pretrained_path=$CKPT sample.height=$h \
    sample.width=$w eval.ref_stats=$D/ref_$s.npz eval.n=$EVAL_N output_dir=$OUT/eval_$s 2>&1 | tr '\r' '\n' \
    | grep -E "\| eval " || true
  cp $OUT/eval_$s/samples.png $OUT/samples_$s.png
done
lap
echo "== 4/4 summary"
$PY - "$OUT" "$SIZES" "$UNSEEN" $(( $(date +%s) - T0 )) <<'PYEOF'
import json, sys
from pathlib import Path
out, sizes, unseen, secs = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3], int(sys.argv[4])
n = json.loads(next((out / f"eval_{sizes[0]}" / "eval").glob("*/result.json")).read_text())["n"]
lines = [f"NiT demo, Fashion-MNIST, FID-{n} per size against {n} test images at that size ({secs} s in all)"]
for s in sizes + [unseen]:
    (res,) = (out / f"eval_{s}" / "eval").glob("*/result.json")
    fid = json.loads(res.read_text())["fid"]
    lines.append(f"  {s:>6} {'trained' if s in sizes else 'unseen '}  FID {fid:7.2f}   grid {out}/samples_{s}.png")
text = "\n".join(lines)
(out / "fid.txt").write_text(text + "\n")
print(text)
PYEOF
