#!/usr/bin/env bash
# Runs kd_jax on this machine's GPUs (one host, any number of GPUs, data parallel):
# installs the pinned stack plus the CUDA build of jax into a venv, then runs main.py and
# tees its output to a log. Every command is printed before it runs; --dry-run only prints.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/gpu_host.sh --config=CONFIG --workdir=DIR [--gpus=0,1,...] [--cuda=12|13]
                          [--venv=DIR] [--python=X.Y] [--skip-install] [--log=FILE]
                          [--dry-run] [-- EXTRA MAIN.PY FLAGS...]

  --config=CONFIG   main.py --config, e.g. configs/cifar_kd.py:res32x4_res8x4
  --workdir=DIR     main.py --workdir (a local or mounted path)
  --gpus=IDS        GPUs to use, e.g. 0,1,2,3 (default: all; sets CUDA_VISIBLE_DEVICES)
  --cuda=N          CUDA major version of the jax build: 12 or 13 (default 12)
  --venv=DIR        virtual environment (default: .venv in the repository)
  --python=X.Y      its Python, fetched by uv if missing (default 3.11; jax 0.10 needs it)
  --skip-install    use the venv as it is
  --log=FILE        console log (default: workdirs/logs/run-DATE.log in the repository)
  --dry-run         print the commands, run none
  -h, --help        this text
Options take the form --key=value. Arguments after -- go to main.py,
e.g. -- --config.seed=1 --config.optim.lr=0.1
EOF
}

SCRIPT=gpu_host.sh DRY_RUN=0
# shellcheck source-path=SCRIPTDIR source=common.bash
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="" WORKDIR="" GPUS="" CUDA="12" VENV="$REPO/.venv" PYTHON="3.11" LOG=""
SKIP_INSTALL=0
EXTRA=()
while (($# > 0)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --gpus=*) GPUS="${1#*=}" ;;
    --cuda=*) CUDA="${1#*=}" ;;
    --venv=*) VENV="${1#*=}" ;;
    --python=*) PYTHON="${1#*=}" ;;
    --log=*) LOG="${1#*=}" ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

[[ -n "$CONFIG" ]] || die "--config is required"
[[ -n "$WORKDIR" ]] || die "--workdir is required"
[[ "$CUDA" == 12 || "$CUDA" == 13 ]] || die "--cuda must be 12 or 13, got $CUDA"
[[ -z "$GPUS" || "$GPUS" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus must look like 0,1,2"
JAX_VERSION="$(sed -n 's/^jax==\([0-9.]*\).*/\1/p' "$REPO/requirements.txt")"
[[ -n "$JAX_VERSION" ]] || die "no jax==VERSION pin in $REPO/requirements.txt"
LOG="${LOG:-$REPO/workdirs/logs/run-$(date +%Y%m%d-%H%M%S).log}"

cd "$REPO"
if [[ "$SKIP_INSTALL" == 0 ]]; then
  UV="$(command -v uv || true)"
  if [[ -z "$UV" ]]; then
    run python3 -m pip install --user --quiet uv
    UV="$HOME/.local/bin/uv"
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then run "$UV" venv --python "$PYTHON" "$VENV"; fi
  run "$UV" pip install --python "$VENV/bin/python" -r requirements.txt \
      "jax[cuda$CUDA]==$JAX_VERSION" -e .
fi
if command -v nvidia-smi > /dev/null; then run nvidia-smi -L; fi

ENV=()
if [[ -n "$GPUS" ]]; then ENV=(env "CUDA_VISIBLE_DEVICES=$GPUS"); fi
COMMAND=("${ENV[@]}" "$VENV/bin/python" main.py --config="$CONFIG" --workdir="$WORKDIR"
         "${EXTRA[@]}")
show "${COMMAND[@]}"
echo "+ (output also appended to $LOG)" >&2
if [[ "$DRY_RUN" == 0 ]]; then
  mkdir -p "$(dirname "$LOG")"
  "${COMMAND[@]}" 2>&1 | tee -a "$LOG"
fi
