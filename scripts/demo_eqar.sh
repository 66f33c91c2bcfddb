#!/usr/bin/env bash
# Equivariant column AR on Fashion-MNIST, one command on a fresh clone: a column tokenizer (32 px high, 4-px
# columns, 8 tokens of 16 values), the generator on its cached latents, class-conditional samples with FID-500
# against the test split, the FID of decoded random latents with the latents' statistics, and one long image
# (4x the trained width) per class. Outputs under outputs/demo_eqar/ (fid.txt, gen/samples.png, long/*.png).
set -euo pipefail
source "$(dirname "$0")/common.sh"   # cd to the repo, .venv, PY, NPROC, OMP_NUM_THREADS, T0

ensure_fmnist
ensure_fid_weights

RUN="$PY -m torch.distributed.run --standalone --nproc_per_node=$NPROC train.py"
OUT=outputs/demo_eqar
TOK_STEPS=${TOK_STEPS:-1800}
GEN_STEPS=${GEN_STEPS:-1600}
LENGTH=${LENGTH:-32}
TOK=$OUT/tok/checkpoints/step_$(printf %07d "$TOK_STEPS").pt
GEN="--config configs/demo/eqar_fmnist.yaml data.path=$OUT/latents.pt tokenizer.ckpt=$TOK eval.ref_images_path=$DATA"

echo "== 1/5 column tokenizer (32x32 -> 8 column tokens x 16)"
$RUN --config configs/demo/eqtok_fmnist.yaml --mode pretrain data.path=$DATA train.steps=$TOK_STEPS
CACHE_N=${CACHE_N:-8000}
echo "== 2/5 caching posterior means of $CACHE_N training images (+ flips) and measuring vae_norm"
$PY scripts/eqar_cache_latents.py --tokenizer-ckpt "$TOK" --fmnist-dir "$DATA" --out $OUT/latents.pt \
  --limit $CACHE_N --threads $NPROC
VAE_NORM=$(cat $OUT/latents.vae_norm)
echo "== 3/5 column AR generator"
$RUN $GEN --mode pretrain tokenizer.vae_norm=$VAE_NORM train.steps=$GEN_STEPS
echo "== 4/5 class-conditional samples + FID-500, and the tokenizer's reconstruction FID-500 (the samples' floor)"
$RUN $GEN --mode eval tokenizer.vae_norm=$VAE_NORM 2>&1 | tee $OUT/eval_samples.log | grep -E "\| eval " || true
$RUN $GEN --mode eval eval.source=reconstructions tokenizer.vae_norm=$VAE_NORM 2>&1 | tee $OUT/eval_recon.log \
  | grep -E "\| eval " || true
echo "== 5/5 random-latent FID, long images, summary"
$PY scripts/eqar_demo_extra.py --config configs/demo/eqar_fmnist.yaml --latents $OUT/latents.pt --length $LENGTH \
  --seconds $(( $(date +%s) - T0 )) data.path=$OUT/latents.pt tokenizer.ckpt=$TOK eval.ref_images_path=$DATA \
  tokenizer.vae_norm=$VAE_NORM
echo "demo wall time: $(( $(date +%s) - T0 )) s"
