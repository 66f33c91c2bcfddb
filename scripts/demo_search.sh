#!/usr/bin/env bash
# AutoNAT's generation-strategy search on the demo NAT (run scripts/demo.sh first), within a budget of generated
# images (SPSA gradient, see below), then FID-1k on held-out seeds of: the search's starting point (the official MaskGIT-like initialisation:
# cosine ratios, Gumbel temperature 1 -> 0, sampling temperature 1, guidance ramping to 1), the best searched
# strategy, and the demo recipe's hand-tuned cosine settings (for reference).
# Outputs under outputs/demo/search/: searched_strategies/, search_history.csv, fid1k_*/eval/*/result.json, summary.txt
set -euo pipefail
source "$(dirname "$0")/common.sh"   # cd to the repo, .venv, PY, NPROC, OMP_NUM_THREADS, T0
OUT=outputs/demo
SEARCH=${SEARCH_DIR:-$OUT/search}
EVAL_N=${EVAL_N:-100}           # images per FID evaluation inside the search
PAIRS=${PAIRS:-6}               # SPSA pairs per update: 2 x 6 + 1 = 13 evaluations per update
UPDATES=${UPDATES:-14}          # budget: 100 x (1 + 13 x 14) + 100 images, about 25 CPU minutes here
BUDGET=${BUDGET:-$((EVAL_N * (1 + (2 * PAIRS + 1) * UPDATES)))}
HELDOUT_SEED=${HELDOUT_SEED:-4242}
# Why not the official per-coordinate differences here: on 8x8 tokens a 0.01 change of one ratio usually moves no
# token at all (difference 0) or one (a jump of several FID points), and FID-100 differs by 3-5 points between
# strategies that differ in one scalar by 0.5, about the size of the true effect. SPSA perturbs all 30 scalars at
# once (ratios by +-0.05, about 3 tokens; the rest by +-0.5), so every evaluation carries signal for every scalar;
# the elementwise clamp bounds each step (ratios by LR_RATIO x CLIP, the rest by LR_OTHER x CLIP).
CLIP=${CLIP:-20}
LR_RATIO=${LR_RATIO:-0.0005}
LR_OTHER=${LR_OTHER:-0.1}
VQ_CKPT=${VQ_CKPT:-$(ls "$OUT"/vq/checkpoints/step_*.pt 2>/dev/null | tail -1 || true)}
NAT_CKPT=${NAT_CKPT:-$(ls "$OUT"/nat/checkpoints/step_*.pt 2>/dev/null | tail -1 || true)}
if [ -z "$NAT_CKPT" ] || [ ! -f "$NAT_CKPT" ] || [ ! -f "$VQ_CKPT" ]; then
  echo "error: demo checkpoints not found (NAT: '${NAT_CKPT}', VQ: '$VQ_CKPT'); run bash scripts/demo.sh first" >&2
  exit 2
fi

RUN="$PY -m torch.distributed.run --standalone --nproc_per_node=$NPROC train.py --config configs/demo/nat_fmnist.yaml"
COMMON=(--pretrained_path "$NAT_CKPT" "tokenizer.ckpt=$VQ_CKPT" "eval.ref_stats=$OUT/fmnist_test_stats.npz")

echo "== search: FID-$EVAL_N objective, SPSA with $PAIRS pairs, common random numbers, budget $BUDGET images"
$RUN --mode search "${COMMON[@]}" output_dir=$SEARCH search.init=maskgit search.eval_n=$EVAL_N \
  search.budget_images=$BUDGET search.gradient=spsa search.spsa_pairs=$PAIRS search.fd_step_ratio=0.05 \
  search.fd_step_other=0.5 search.clip_grad=$CLIP search.lr_ratio=$LR_RATIO search.lr_other=$LR_OTHER
T1=$(date +%s)

echo "== FID-1k on held-out seed $HELDOUT_SEED"
for which in stp_0 best; do
  $RUN --mode eval "${COMMON[@]}" output_dir=$SEARCH/fid1k_$which eval.n=1000 seed=$HELDOUT_SEED \
    --searched_strategy $SEARCH/searched_strategies/$which.yaml
done
$RUN --mode eval "${COMMON[@]}" output_dir=$SEARCH/fid1k_recipe eval.n=1000 seed=$HELDOUT_SEED

$PY - "$SEARCH" $((T1 - T0)) $(( $(date +%s) - T0 )) <<'EOF' | tee "$SEARCH/summary.txt"
import csv, glob, json, sys
out, search_s, total_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = list(csv.DictReader(open(f"{out}/search_history.csv")))
fid = {k: json.load(open(glob.glob(f"{out}/fid1k_{k}/eval/*/result.json")[0]))["fid"]
       for k in ("stp_0", "best", "recipe")}
print(f"search: {len(rows) - 1} update(s), {rows[-1]['images']} images generated, {search_s} s "
      f"(search FID-{rows[0]['images']}: {float(rows[0]['fid']):.2f} -> best {float(rows[-1]['best_fid']):.2f} "
      f"at update {rows[-1]['best_update']})")
print(f"FID-1k (held-out seed): initial strategy {fid['stp_0']:.2f} -> searched {fid['best']:.2f} "
      f"({'better' if fid['best'] < fid['stp_0'] else 'NOT better'}); hand-tuned recipe {fid['recipe']:.2f}")
print(f"total {total_s} s")
EOF
