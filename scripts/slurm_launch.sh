#!/usr/bin/env bash
# Multi-node launcher for SLURM: one torchrun per node, c10d rendezvous on the first node, the train.py command
# line passed through unchanged.
#
#   sbatch --nodes 2 --gpus-per-node 8 scripts/slurm_launch.sh --config configs/AutoNAT_L.yaml --mode pretrain
#   scripts/slurm_launch.sh --dry-run --config ...     # print the commands for the current SLURM_* variables
#
# Resume on requeue: train.py resumes from the latest checkpoint of its output_dir when the same command runs
# again, so a requeued job (preemption, `scontrol requeue`, or the USR1 warning below before the time limit)
# simply continues. Logs: logs/<job name>-<job id>/ (one file per node and restart, plus torchrun's per-rank logs).
#
#SBATCH --job-name=imgen
#SBATCH --ntasks-per-node=1
#SBATCH --output=logs/%x-%j.out
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
#SBATCH --open-mode=append
set -euo pipefail

dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
if [ "$#" -eq 0 ]; then
  echo "error: no train.py arguments given; usage: sbatch [sbatch options] scripts/slurm_launch.sh --config <recipe> [--mode M] [key=value ...]" >&2
  exit 2
fi
if [ -z "${SLURM_JOB_ID:-}" ]; then
  echo "error: SLURM_JOB_ID is not set: submit with sbatch (or set the SLURM_* variables for --dry-run)" >&2
  exit 2
fi

# sbatch copies the script to a spool folder: the repository is where the job was submitted from
repo=${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
python=${PYTHON:-$repo/.venv/bin/python}
[ -x "$python" ] || python=python3

# First host of a SLURM node list such as "gpu[003-004,010],login1" -> gpu003 (scontrol when it exists).
first_host() {
  local list=$1
  if command -v scontrol >/dev/null 2>&1 && [ "$dry" -eq 0 ]; then
    scontrol show hostnames "$list" | head -n 1
    return
  fi
  local head=${list%%,*}
  if [[ $list =~ ^([^,\[]*)\[([^]]*)\] ]]; then
    local prefix=${BASH_REMATCH[1]} range=${BASH_REMATCH[2]}
    range=${range%%,*}
    echo "${prefix}${range%%-*}"
  else
    echo "$head"
  fi
}

# GPUs of this node: SLURM_GPUS_ON_NODE, else SLURM_GPUS_PER_NODE ("8" or "h100:8"), else what nvidia-smi lists.
gpus_per_node() {
  if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then echo "$SLURM_GPUS_ON_NODE"; return; fi
  if [ -n "${SLURM_GPUS_PER_NODE:-}" ]; then echo "${SLURM_GPUS_PER_NODE##*:}"; return; fi
  if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L | wc -l; return; fi
  echo 1
}

nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
gpus=$(gpus_per_node)
if ! [[ $nodes =~ ^[1-9][0-9]*$ && $gpus =~ ^[1-9][0-9]*$ ]]; then
  echo "error: cannot tell the allocation: nodes '$nodes' (SLURM_JOB_NUM_NODES), GPUs per node '$gpus' (SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE)" >&2
  exit 2
fi
head_node=$(first_host "${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-localhost}}")
# a port per job, so that two jobs sharing a head node do not meet in one rendezvous
port=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
restart=${SLURM_RESTART_COUNT:-0}
logs="$repo/logs/${SLURM_JOB_NAME:-imgen}-$SLURM_JOB_ID"

torchrun_cmd=("$python" -m torch.distributed.run --nnodes "$nodes" --nproc_per_node "$gpus"
  --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$head_node:$port"
  --log-dir "$logs/torchrun-restart$restart" "$repo/train.py" "$@")
srun_cmd=(srun --nodes "$nodes" --ntasks-per-node 1 --kill-on-bad-exit=1
  --output "$logs/node%n-restart$restart.out")

if [ "$dry" -eq 1 ]; then
  echo "# $nodes node(s) x $gpus GPU(s), rendezvous $head_node:$port, restart $restart, logs $logs"
  printf '%q ' "${srun_cmd[@]}" "${torchrun_cmd[@]}"
  echo
  exit 0
fi

mkdir -p "$logs"
echo "[$(date -Is)] job $SLURM_JOB_ID restart $restart: $nodes node(s) x $gpus GPU(s), rendezvous $head_node:$port"
requeue() {
  echo "[$(date -Is)] time limit near: requeueing job $SLURM_JOB_ID (the next start resumes from the last checkpoint)"
  scontrol requeue "$SLURM_JOB_ID"
}
trap requeue USR1
cd "$repo"
# in the background, so that the USR1 trap runs while srun is still going
"${srun_cmd[@]}" "${torchrun_cmd[@]}" &
wait $!
