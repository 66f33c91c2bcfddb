# Sourced by the demo scripts: go to the repository root, set up .venv, and the launch settings they share.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
T0=$(date +%s)
bash scripts/setup.sh
PY=.venv/bin/python
NPROC=${NPROC:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
