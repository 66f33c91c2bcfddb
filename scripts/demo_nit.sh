#!/usr/bin/env bash
# NiT demo on a CPU: Fashion-MNIST at three aspect ratios (32x32, 32x48, 48x32) in grey pixel space (identity
# tokenizer, one channel, 4x4 patches), packed into 1024-token LPFHP packs, trained with 2 processes (one pack each per step), then ONE eval
# run samples every trained size and one size it never saw (48x48) in packed multi-size batches, with an FID-500
# per size against 500 test images brought to that size (cover, then center-crop: the rule the training images were
# made with). The baseline is the same sampler and eval run from the step-0 weights (adaLN-Zero: zero velocity, so
# its samples are the initial noise); the demo prints both FIDs per size and their ratio.
# Outputs (outputs/demo_nit/): samples_<H>x<W>.png (10 classes x 8, trained model), untrained_<H>x<W>.png,
# fid.txt; logs under train/, eval_trained/, eval_untrained/; reference statistics cached in data/ref_stats/.
# Knobs: NIT_TRAIN_N (training images, each at 3 sizes), NIT_STEPS, NIT_EVAL_N (FID-N), NIT_OUT (output folder),
# FID_WEIGHTS (FID-Inception weights file).
# Measured on a fresh clone, idle 2-core CPU with AMX, set-up included (/usr/bin/time -v): 11 min 56 s, 2.2 GB peak
# RSS; FID-500 trained / step-0 weights (ratio): 32x32 116.0 / 413.5 (0.28), 32x48 115.7 / 460.8 (0.25),
# 48x32 128.0 / 411.7 (0.31); unseen 48x48 171.4. Recognisable garments of every class at every size. Same CPU made
# AVX2-only (fp32 Inception): 19 min 4 s, 32x32 117.8 / 412.2.
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
SIZES="32x32,32x48,48x32"
UNSEEN=48x48
CFG=configs/demo/nit_fmnist.yaml
STEPS=${NIT_STEPS:-3000}
DATA_ARGS=(data.data_meta=$D/fmnist_merge_meta.jsonl data.sampler_meta=$D/fmnist_merge_LPFHP_1024.json
           data.latent_dirs=$D/latents)
EVAL_ARGS=(--mode eval eval.n=$EVAL_N eval.ref_images=fmnist-test eval.ref_images_path=$DATA eval.ref_n=$EVAL_N
           eval.ref_stats=$D/ref_stats/ "${FID[@]}")
lap() { echo "   ($(( $(date +%s) - T0 )) s so far)"; }
evals() { tr '\r' '\n' | grep -E "\| (eval |reference statistics of|FID-Inception)" || true; }

echo "== 1/4 pixel-space latents of ${NIT_TRAIN_N:-3000} training images at $SIZES, packed"
$PY scripts/nit_fmnist_data.py --data "$DATA" --out $D --n-train "${NIT_TRAIN_N:-3000}" --sizes "$SIZES"
$PY scripts/pack_dataset.py --data-meta $D/fmnist_merge_meta.jsonl --max-seq-len 1024 --patch-size 4
$PY scripts/step0_checkpoint.py --config $CFG --out $OUT/init/step_0000000.pt "${DATA_ARGS[@]}"
lap
echo "== 2/4 packed training ($STEPS steps, $NPROC processes, one pack each per step)"
# (progress bars end in carriage returns: one log line per line before filtering)
$RUN --config $CFG --mode pretrain "${DATA_ARGS[@]}" output_dir=$OUT/train train.steps=$STEPS 2>&1 | tr '\r' '\n' \
  | grep -E "\| (step|done|family)" || true
lap
echo "== 3/4 one eval run: samples + FID-$EVAL_N at $SIZES and the unseen $UNSEEN (one packed batch per unit)"
CKPT=$OUT/train/checkpoints/step_$(printf %07d "$STEPS").pt
$RUN --config $CFG "${EVAL_ARGS[@]}" eval.pretrained_path=$CKPT "sample.sizes=[$SIZES,$UNSEEN]" \
  output_dir=$OUT/eval_trained 2>&1 | evals
lap
echo "== 4/4 the same sampler and eval from the step-0 (untrained) weights at $SIZES"
$RUN --config $CFG "${EVAL_ARGS[@]}" eval.pretrained_path=$OUT/init/step_0000000.pt "sample.sizes=[$SIZES]" \
  output_dir=$OUT/eval_untrained 2>&1 | evals
lap
rc=0
$PY scripts/demo_nit_summary.py --out $OUT --trained-sizes "$SIZES" --unseen $UNSEEN --seconds $(( $(date +%s) - T0 )) \
  || rc=$?
echo "CPU time (user, system) of this shell, then of every process it ran:"
times
exit $rc
