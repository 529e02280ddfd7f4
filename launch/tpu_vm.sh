#!/usr/bin/env bash
# Runs kd_jax on a Cloud TPU VM (any slice size): optionally creates the VM, copies this
# checkout to every worker, installs it, starts main.py on all workers and follows the log.
# Every command is printed before it runs; --dry-run only prints. See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh --name=NAME --zone=ZONE --config=CONFIG --workdir=/mnt/BUCKET/DIR
                        [--create --accelerator=TYPE [--version=V] [--spot]]
                        [--project=P] [--skip-install] [--setup-only] [--no-follow]
                        [--dry-run] [-- EXTRA MAIN.PY FLAGS...]

  --name=NAME          TPU VM name (created with --create, else it must exist)
  --zone=ZONE          its zone, e.g. us-central2-b (v4) or us-west4-a (v5e)
  --config=CONFIG      main.py --config, e.g. configs/cifar_kd.py:res32x4_res8x4
  --workdir=DIR        main.py --workdir: a path every worker sees (e.g. a gcsfuse mount)
  --create             create the TPU VM first (gcloud compute tpus tpu-vm create)
  --accelerator=TYPE   accelerator type for --create: v4-8, v5litepod-8, v5p-8, v6e-8, ...
  --version=V          TPU software version for --create; default from the accelerator:
                       v2/v3/v4 tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
                       v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
  --spot               create a Spot VM (cheaper, can be preempted; runs resume)
  --project=P          gcloud project (default: gcloud's configured one)
  --python=X.Y         Python for the workers' venv, fetched by uv (default 3.11; jax
                       0.10 needs >= 3.11 and the TPU images ship 3.10)
  --skip-install       reuse the code and venv already on the workers
  --setup-only         copy + install, start nothing (e.g. before launch/sweep.sh --tpus)
  --no-follow          start the run and return instead of following worker 0's log
  --dry-run            print the commands, run none
  -h, --help           this text
Options take the form --key=value. Arguments after -- go to main.py on every worker
(e.g. -- --config.seed=1 --config.data.data_dir=gs://BUCKET/tensorflow_datasets).
On the workers: code in ~/kd_jax, venv in ~/kd_venv, log in ~/kd_jax.log.
EOF
}

SCRIPT=tpu_vm.sh DRY_RUN=0
# shellcheck source-path=SCRIPTDIR source=common.bash
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

NAME="" ZONE="" CONFIG="" WORKDIR="" ACCELERATOR="" VERSION="" PROJECT="" PYTHON="3.11"
CREATE=0 SPOT=0 SKIP_INSTALL=0 SETUP_ONLY=0 FOLLOW=1
EXTRA=()
while (($# > 0)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --accelerator=*) ACCELERATOR="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --python=*) PYTHON="${1#*=}" ;;
    --create) CREATE=1 ;;
    --spot) SPOT=1 ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --setup-only) SETUP_ONLY=1 ;;
    --no-follow) FOLLOW=0 ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
if [[ "$SETUP_ONLY" == 0 ]]; then
  [[ -n "$CONFIG" ]] || die "--config is required"
  [[ -n "$WORKDIR" ]] || die "--workdir is required"
  if [[ "$WORKDIR" == *://* ]]; then
    die "--workdir=$WORKDIR: kd_jax writes workdirs through the file system; mount the" \
        "bucket on every worker (gcsfuse) and pass the mount path"
  fi
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JAX_VERSION="$(sed -n 's/^jax==\([0-9.]*\).*/\1/p' "$REPO/requirements.txt")"
[[ -n "$JAX_VERSION" ]] || die "no jax==VERSION pin in $REPO/requirements.txt"

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
if [[ -n "$PROJECT" ]]; then WHERE+=(--project="$PROJECT"); fi

if [[ "$CREATE" == 1 ]]; then
  [[ -n "$ACCELERATOR" ]] || die "--create needs --accelerator (e.g. v4-8, v5litepod-8)"
  if [[ -z "$VERSION" ]]; then
    case "$ACCELERATOR" in
      v2-*|v3-*|v4-*) VERSION="tpu-ubuntu2204-base" ;;
      v5litepod-*|v5e-*) VERSION="v2-alpha-tpuv5-lite" ;;
      v5p-*) VERSION="v2-alpha-tpuv5" ;;
      v6e-*) VERSION="v2-alpha-tpuv6e" ;;
      *) die "no default --version for accelerator $ACCELERATOR; pass --version" ;;
    esac
  fi
  CREATE_FLAGS=(--accelerator-type="$ACCELERATOR" --version="$VERSION")
  if [[ "$SPOT" == 1 ]]; then CREATE_FLAGS+=(--spot); fi
  run "${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" "${CREATE_FLAGS[@]}"
fi

ssh_all() { run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$1"; }

if [[ "$SKIP_INSTALL" == 0 ]]; then
  # Ship the working tree as it is (uncommitted edits included), without VCS or caches.
  ARCHIVE_DIR="$(mktemp -d)"
  trap 'rm -rf "$ARCHIVE_DIR"' EXIT
  ARCHIVE="$ARCHIVE_DIR/kd_jax.tar.gz"
  run tar -czf "$ARCHIVE" -C "$REPO" --exclude=.git --exclude=.venv --exclude=venv \
      --exclude=__pycache__ --exclude=.pytest_cache --exclude=workdirs --exclude=runs \
      --exclude=build --exclude='*.egg-info' .
  run "${GCLOUD[@]}" scp "$ARCHIVE" "$NAME:kd_jax.tar.gz" "${WHERE[@]}" --worker=all
  # uv brings its own Python (the TPU images' python3 is older than jax needs) and
  # installs the pins of requirements.txt plus the TPU build of the same jax.
  ssh_all "set -e; rm -rf ~/kd_jax ~/kd_venv; mkdir -p ~/kd_jax; \
tar -xzf ~/kd_jax.tar.gz -C ~/kd_jax; cd ~/kd_jax; \
test -x ~/.local/bin/uv || python3 -m pip install --user --quiet uv \
|| curl -LsSf https://astral.sh/uv/install.sh | sh; \
~/.local/bin/uv venv --python $PYTHON ~/kd_venv; \
~/.local/bin/uv pip install --python ~/kd_venv/bin/python -r requirements.txt \
\"jax[tpu]==$JAX_VERSION\" -e ."
fi

if [[ "$SETUP_ONLY" == 1 ]]; then exit 0; fi

printf -v MAIN_ARGS ' %q' --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA[@]}"
# Started in the background on every worker at once (a pod slice's workers must all run
# it); the run survives this terminal. Worker 0's log is followed below.
ssh_all "cd ~/kd_jax && nohup ~/kd_venv/bin/python main.py${MAIN_ARGS} \
> ~/kd_jax.log 2>&1 < /dev/null &"

if [[ "$FOLLOW" == 1 ]]; then
  run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=0 \
      --command="tail -n +1 -F ~/kd_jax.log"
fi
