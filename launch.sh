#!/usr/bin/env bash
# lorabench entry point: setup | demo | train | eval | submit | generate | test | bench
#   ./launch.sh setup              create .venv and install lorabench (CPU torch unless a GPU is present)
#   ./launch.sh demo [DIR]         tiny end-to-end run (default DIR: lorabench-demo/)
#   ./launch.sh train CONFIG [k=v ...]
#   ./launch.sh eval CONFIG [k=v ...]     base vs LoRA/checkpoints on Ray actors + metrics ('eval metrics --from DIR')
#   ./launch.sh submit CONFIG [k=v ...]   ray job submit (RAY_ADDRESS or http://127.0.0.1:8265) of cluster.train
#   ./launch.sh submit-eval CONFIG [k=v ...]  the same for cluster.eval
#   ./launch.sh generate ARGS...   (see: ./launch.sh generate --help)
#   ./launch.sh test [pytest args]
#   ./launch.sh bench nightly|tiny|FILE.yaml [--new] [k=v ...]  nightly benchmark: train, eval, record, regressions,
#                                  leaderboard page (configs/bench/NAME.yaml); exit 3 on a regression
#   ./launch.sh leaderboard add|list|show|export|render ...  the run store (--store FILE or $LORABENCH_STORE)
#   ./launch.sh bench [dist|eval|memory|cache]  trainer vs hand-written loop; 'dist': 1 vs 2 Ray workers, ZeRO
#                                  memory; 'eval': generation 1 vs 2 actors, Frechet distance vs scipy;
#                                  'memory': memory plans of the full-size models (configs only, no weights);
#                                  'cache': on-the-fly vs latent-cache training, precompute 1 vs 2 Ray workers
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV=${LORABENCH_VENV:-$ROOT/.venv}
PY=$VENV/bin/python
TORCH_VERSION=2.13.0
STAMP=$VENV/.lorabench-installed

die() { echo "launch.sh: $*" >&2; exit 1; }

has_nvidia_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

torch_version() { "$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true; }

check_torch() {
  local v; v=$(torch_version)
  if has_nvidia_gpu; then
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
      || die "torch $v in $VENV cannot see the GPU; install a CUDA build of torch into $VENV first"
  elif [ "$v" != "${TORCH_VERSION}+cpu" ]; then
    die "torch in $VENV is '$v', expected ${TORCH_VERSION}+cpu: a dependency replaced the CPU wheel. \
Remove $VENV and run ./launch.sh setup again."
  fi
}

setup() {
  local hash; hash=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$hash" ]; then check_torch; return 0; fi
  echo "==> setting up $VENV"
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  if has_nvidia_gpu && "$PY" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    echo "==> keeping the existing CUDA torch $(torch_version)"
    local cons; cons=$(mktemp); grep -v '^torch==' constraints.txt > "$cons"
    echo "torch==$(torch_version)" >> "$cons"
    "$PY" -m pip install -q -c "$cons" -e ".[dev,gpu]"
    rm -f "$cons"
  else
    # The CPU wheel first (found through pip's find-links); the constraint then stops any
    # dependency from pulling a CUDA build over it.
    "$PY" -m pip install -q "torch==${TORCH_VERSION}"
    "$PY" -m pip install -q -c constraints.txt -e ".[dev]"
  fi
  check_torch
  echo "$hash" > "$STAMP"
  echo "==> ready: torch $(torch_version)"
}

cmd=${1:-help}; shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$PY" -m cluster.cli demo --out "${1:-lorabench-demo}" "${@:2}" ;;
  train) setup; exec "$PY" -m cluster.cli train "$@" ;;
  generate) setup; exec "$PY" -m cluster.cli generate "$@" ;;
  eval) setup; exec "$PY" -m cluster.cli eval "$@" ;;
  test) setup; exec "$PY" -m pytest "$@" ;;
  submit) setup
    exec "$VENV/bin/ray" job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir "$ROOT" \
      -- python -m cluster.train "$@" ;;
  submit-eval) setup
    exec "$VENV/bin/ray" job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir "$ROOT" \
      -- python -m cluster.eval "$@" ;;
  leaderboard) setup; exec "$PY" -m cluster.cli leaderboard "$@" ;;
  bench) setup
    # A bench config (configs/bench/NAME.yaml or a .yaml path) runs the nightly pipeline; the other
    # names are the performance measurements under bench/.
    if [ -n "${1:-}" ] && [ -f "configs/bench/$1.yaml" ]; then set -- "configs/bench/$1.yaml" "${@:2}"; fi
    case "${1:-}" in *.yaml|*.yml) exec "$PY" -m cluster.cli bench "$@" ;; esac
    if [ "${1:-}" = dist ]; then shift; exec "$PY" -m bench.distributed "$@"; fi
    if [ "${1:-}" = eval ]; then shift; exec "$PY" -m bench.eval "$@"; fi
    if [ "${1:-}" = memory ]; then shift; exec "$PY" -m bench.memory_plan "$@"; fi
    if [ "${1:-}" = cache ]; then shift; exec "$PY" -m bench.cache "$@"; fi
    exec "$PY" -m bench.train_overhead "$@" ;;
  help|-h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command '$cmd' (setup | demo | train | eval | submit | submit-eval | generate | test | bench | leaderboard)" ;;
esac
