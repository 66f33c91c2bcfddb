#!/usr/bin/env bash
# Inpainting with the demo generators, after scripts/demo.sh (NAT; ENAT when outputs/demo/enat holds a checkpoint:
# configs/demo/enat_fmnist.yaml), scripts/demo_nit.sh and scripts/demo_eqar.sh: the centre 16x16 of 500 Fashion-MNIST
# test images regenerated under their own class by every family that can edit. Prints one table (FID-500 of the edited
# images, of the family's unconditional samples from its demo eval, of the inputs with a noise-filled centre; the check
# that every kept code / latent is the input's, bit for bit) and writes outputs/demo_edit/fid.txt and
# outputs/demo_edit/<family>_grid.png (rows: input, mask, output). A family whose demo has not run is listed as such.
# Knobs: EDIT_N (images), FID_WEIGHTS (FID-Inception weights file).
#   --smoke: the same script end to end in a temporary folder on tiny checkpoints trained for 2 steps (NAT and ENAT on
#   64 tokenized images, random FID-Inception weights, 20 images): checks the plumbing in about two minutes, its
#   numbers mean nothing.
set -euo pipefail
source "$(dirname "$0")/common.sh"   # cd to the repo, .venv, PY, NPROC, OMP_NUM_THREADS, T0
ensure_fmnist
RUN="$PY -m torch.distributed.run --standalone --nproc_per_node=$NPROC train.py"

if [ "${1:-}" = "--smoke" ]; then
  ROOT=$(mktemp -d)
  N=${EDIT_N:-20}
  echo "== smoke: tiny demo outputs in $ROOT"
  FID_WEIGHTS=$ROOT/inception.pth
  PYTHONPATH=. $PY -c "from tests.helpers import write_random_fid_weights as w; w('$FID_WEIGHTS')"
  $RUN --config configs/demo/vq_fmnist.yaml --mode pretrain data.path=$DATA output_dir=$ROOT/demo/vq train.steps=2 \
    train.batch_size=8 train.ckpt_every=2 train.log_every=1 >/dev/null 2>&1
  VQ=$ROOT/demo/vq/checkpoints/step_0000002.pt
  $PY scripts/fmnist_tokens.py --tokenizer-ckpt $VQ --data $DATA --out $ROOT/demo/tokens/train.npy --limit 64 >/dev/null
  STATS=$ROOT/demo/fmnist_test_stats.npz
  for fam in nat enat; do
    COMMON=(data.path=$ROOT/demo/tokens/train.npy tokenizer.ckpt=$VQ output_dir=$ROOT/demo/$fam)
    $RUN --config configs/demo/${fam}_fmnist.yaml --mode pretrain "${COMMON[@]}" train.steps=2 train.batch_size=8 \
      train.ckpt_every=2 train.warmup_steps=1 train.log_every=1 train.precision=fp32 >/dev/null 2>&1
    $RUN --config configs/demo/${fam}_fmnist.yaml --mode eval "${COMMON[@]}" eval.n=$N eval.batch_size=10 \
      eval.ref_n=$N eval.ref_stats=$STATS eval.ref_images_path=$DATA eval.inception_weights=$FID_WEIGHTS \
      >/dev/null 2>&1
  done
  OMP_NUM_THREADS=$NPROC $PY scripts/demo_edit.py --root $ROOT --data $DATA --out $ROOT/demo_edit -n $N --batch 10 \
    --ref-n $N --fid-weights $FID_WEIGHTS
  echo "smoke outputs: $ROOT/demo_edit"
  exit 0
fi

FID=()
if [ -n "${FID_WEIGHTS:-}" ]; then FID=(--fid-weights "$FID_WEIGHTS"); else ensure_fid_weights; fi
OMP_NUM_THREADS=$NPROC $PY scripts/demo_edit.py --data "$DATA" -n "${EDIT_N:-500}" "${FID[@]}"
echo "demo_edit wall time: $(( $(date +%s) - T0 )) s"
