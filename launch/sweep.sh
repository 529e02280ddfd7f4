#!/usr/bin/env bash
# Fans out a list of commands (one per line, e.g. from `python -m kd_jax.tools.sweep
# --print_commands ...`) over this host's GPUs or over several TPU VMs: one command per
# GPU group / TPU VM at a time, each slot working through its share of the list in order.
# Every command is printed before it runs; --dry-run only prints.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/sweep.sh [--gpus=N | --gpu-ids=0,1,...] [--gpus-per-job=K] [--log-dir=DIR]
                       [--dry-run] [FILE]
       launch/sweep.sh --tpus=NAME1,NAME2,... --zone=ZONE [--project=P] [--log-dir=DIR]
                       [--dry-run] [FILE]

Reads commands from FILE (or stdin), one per line; blank lines and # comments are
skipped. Example:
  python -m kd_jax.tools.sweep --print_commands ... | launch/sweep.sh --gpus=8

  --gpus=N          use GPUs 0..N-1 (default: all that nvidia-smi lists)
  --gpu-ids=IDS     use these GPUs, e.g. 0,2,5
  --gpus-per-job=K  GPUs per command (default 1): slot i gets GPUs [i*K, (i+1)*K)
  --tpus=NAMES      run on these TPU VMs instead, one command per VM at a time, on all of
                    its workers; each VM must be set up first with
                    launch/tpu_vm.sh --setup-only (commands run in ~/kd_jax, with
                    ~/kd_venv/bin first on PATH)
  --zone=ZONE       the TPU VMs' zone (with --tpus)
  --project=P       gcloud project (with --tpus; default: gcloud's configured one)
  --log-dir=DIR     one log per command, job_<line>.log (default:
                    workdirs/logs/sweep-DATE in the repository)
  --dry-run         print the commands with their GPUs / TPU VM, run none
  -h, --help        this text
Options take the form --key=value. GPU commands run through `bash -c` in the repository
with CUDA_VISIBLE_DEVICES set: activate the venv first (source .venv/bin/activate).
Exit status: 0 if every command succeeded, 1 otherwise.
EOF
}

SCRIPT=sweep.sh DRY_RUN=0
# shellcheck source-path=SCRIPTDIR source=common.bash
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPU_COUNT="" GPU_IDS="" PER_JOB=1 TPUS="" ZONE="" PROJECT="" LOG_DIR="" INPUT="-"
while (($# > 0)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --gpus=*) GPU_COUNT="${1#*=}" ;;
    --gpu-ids=*) GPU_IDS="${1#*=}" ;;
    --gpus-per-job=*) PER_JOB="${1#*=}" ;;
    --tpus=*) TPUS="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --log-dir=*) LOG_DIR="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -) INPUT="-" ;;
    -*) usage >&2; die "unknown argument: $1" ;;
    *) INPUT="$1" ;;
  esac
  shift
done

COMMANDS=()
LINES=()
NUMBER=0
if [[ "$INPUT" != "-" ]]; then
  [[ -r "$INPUT" ]] || die "cannot read $INPUT"
  exec < "$INPUT"
fi
while IFS= read -r line || [[ -n "$line" ]]; do
  NUMBER=$((NUMBER + 1))
  line="${line#"${line%%[![:space:]]*}"}"  # Strip leading blanks.
  [[ -z "$line" || "$line" == \#* ]] && continue
  COMMANDS+=("$line")
  LINES+=("$NUMBER")
done
((${#COMMANDS[@]} > 0)) || die "no commands on input"

SLOTS=()  # What each slot runs on: a CUDA_VISIBLE_DEVICES value or a TPU VM name.
if [[ -n "$TPUS" ]]; then
  [[ -n "$ZONE" ]] || die "--tpus needs --zone"
  IFS=, read -r -a SLOTS <<< "$TPUS"
  GCLOUD=(gcloud compute tpus tpu-vm ssh)
  WHERE=(--zone="$ZONE")
  if [[ -n "$PROJECT" ]]; then WHERE+=(--project="$PROJECT"); fi
else
  [[ "$PER_JOB" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-job must be >= 1"
  if [[ -n "$GPU_IDS" ]]; then
    [[ "$GPU_IDS" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpu-ids must look like 0,2,5"
    IFS=, read -r -a IDS <<< "$GPU_IDS"
  else
    if [[ -z "$GPU_COUNT" ]]; then
      command -v nvidia-smi > /dev/null || die "no nvidia-smi: pass --gpus=N or --tpus=..."
      GPU_COUNT="$(nvidia-smi -L | grep -c '^GPU ' || true)"
    fi
    [[ "$GPU_COUNT" =~ ^[1-9][0-9]*$ ]] || die "need >= 1 GPU, got --gpus=$GPU_COUNT"
    IDS=()
    for ((i = 0; i < GPU_COUNT; i++)); do IDS+=("$i"); done
  fi
  ((${#IDS[@]} >= PER_JOB)) || die "--gpus-per-job=$PER_JOB but only ${#IDS[@]} GPUs"
  for ((i = 0; i + PER_JOB <= ${#IDS[@]}; i += PER_JOB)); do
    group="${IDS[*]:i:PER_JOB}"
    SLOTS+=("${group// /,}")
  done
fi

LOG_DIR="${LOG_DIR:-$REPO/workdirs/logs/sweep-$(date +%Y%m%d-%H%M%S)}"
if [[ "$DRY_RUN" == 0 ]]; then mkdir -p "$LOG_DIR"; fi
echo "sweep.sh: ${#COMMANDS[@]} commands on ${#SLOTS[@]} slots; logs in $LOG_DIR" >&2

run_slot() {  # Runs commands slot, slot + #slots, ... one after another; 1 if any failed.
  local slot="$1" failed=0 k job log
  for ((k = slot; k < ${#COMMANDS[@]}; k += ${#SLOTS[@]})); do
    log="$LOG_DIR/job_${LINES[k]}.log"
    if [[ -n "$TPUS" ]]; then
      # shellcheck disable=SC2016  # $PATH is for the TPU VM's shell to expand.
      job=("${GCLOUD[@]}" "${SLOTS[slot]}" "${WHERE[@]}" --worker=all
           --command='cd ~/kd_jax && PATH=~/kd_venv/bin:$PATH '"${COMMANDS[k]}")
    else
      job=(env "CUDA_VISIBLE_DEVICES=${SLOTS[slot]}" bash -c "${COMMANDS[k]}")
    fi
    SHOW_SUFFIX=" > $log" show "${job[@]}"
    if [[ "$DRY_RUN" == 1 ]]; then continue; fi
    if (cd "$REPO" && "${job[@]}") > "$log" 2>&1 < /dev/null; then
      echo "sweep.sh: done   line ${LINES[k]} (slot ${SLOTS[slot]})" >&2
    else
      echo "sweep.sh: FAILED line ${LINES[k]} (slot ${SLOTS[slot]}, exit $?): $log" >&2
      failed=1
    fi
  done
  return "$failed"
}

PIDS=()
for ((s = 0; s < ${#SLOTS[@]}; s++)); do
  if [[ "$DRY_RUN" == 1 ]]; then run_slot "$s"; else run_slot "$s" & PIDS+=($!); fi
done
STATUS=0
for pid in "${PIDS[@]}"; do wait "$pid" || STATUS=1; done
exit "$STATUS"
