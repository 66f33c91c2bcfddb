#!/usr/bin/env bash
# One command on a fresh machine: set up .venv, get Fashion-MNIST and the FID-Inception weights, train the demo
# tokenizer and the NAT with 2 processes, sample, and print three FIDs against the test split.
# Outputs: outputs/demo/samples.png (10 classes x 8), outputs/demo/fid.txt, logs under outputs/demo/*/log.txt.
set -euo pipefail
source "$(dirname "$0")/common.sh"   # cd to the repo, .venv, PY, NPROC, OMP_NUM_THREADS, T0

ensure_fmnist
ensure_fid_weights

AUTO=$($PY -c "import torch; from core.precision import resolve_precision as r; w, why = r('auto', torch.device('cpu')); \
print(w, why)" 2>/dev/null)
echo "== precision auto on this CPU: $AUTO; the VQ and the samplers stay fp32"
RUN="$PY -m torch.distributed.run --standalone --nproc_per_node=$NPROC train.py"
OUT=outputs/demo
# Sized for 20 minutes with set-up on 2 cores. Without native bf16 everything runs in fp32, about 1.4x the time of
# a step here, so the step counts shrink there (fresh clone, 2 cores: AMX/bf16 8 min 22 s, FID ratio 0.37; the same CPU
# made AVX2-only, fp32: 11 min 15 s, ratio 0.44).
if [ "${AUTO%% *}" = bf16 ]; then DEF_VQ=1500; DEF_NAT=700; else DEF_VQ=1200; DEF_NAT=500; fi
VQ_STEPS=${VQ_STEPS:-$DEF_VQ}
NAT_STEPS=${NAT_STEPS:-$DEF_NAT}
echo "== steps: VQ $VQ_STEPS, NAT $NAT_STEPS (VQ_STEPS / NAT_STEPS override)"
TOKEN_IMAGES=${TOKEN_IMAGES:-30000}   # training images tokenized (+ their flips): 60k rows, 1.5 epochs of NAT training
VQ_CKPT=$OUT/vq/checkpoints/step_$(printf %07d "$VQ_STEPS").pt

echo "== 1/5 demo tokenizer (VQ autoencoder, 32x32 -> 8x8 codes)"
$RUN --config configs/demo/vq_fmnist.yaml --mode pretrain data.path=$DATA train.steps=$VQ_STEPS
echo "== 2/5 tokenizing Fashion-MNIST (originals + flips)"
OMP_NUM_THREADS=$NPROC $PY scripts/fmnist_tokens.py --tokenizer-ckpt "$VQ_CKPT" --data "$DATA" --out $OUT/tokens/train.npy \
  --limit "$TOKEN_IMAGES"
echo "== 3/5 NAT training"
$RUN --config configs/demo/nat_fmnist.yaml --mode pretrain data.path=$OUT/tokens/train.npy tokenizer.ckpt=$VQ_CKPT \
  train.steps=$NAT_STEPS
echo "== 4/5 sampling + FID of NAT samples, tokenizer reconstructions and random tokens"
COMMON=(tokenizer.ckpt=$VQ_CKPT eval.ref_stats=$OUT/fmnist_test_stats.npz)
for src in samples reconstructions random_tokens; do
  $RUN --config configs/demo/nat_fmnist.yaml --mode eval "${COMMON[@]}" eval.source=$src \
    output_dir=$OUT/nat 2>&1 | tee $OUT/eval_$src.log | grep -E "^.*\| eval " || true
done
echo "== 5/5 summary"
$PY scripts/demo_summary.py --out $OUT --vq-ckpt "$VQ_CKPT" --data "$DATA" --seconds $(( $(date +%s) - T0 ))
