# shellcheck shell=bash
# Shared by the launch scripts: error exit, and printing every command before it runs.
# Sourced; the caller sets SCRIPT (its name) and DRY_RUN (0 or 1).

die() { echo "$SCRIPT: $*" >&2; exit 2; }

show() {  # Prints a command as one copy-pastable line, like set -x.
  local line="+" arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[-A-Za-z0-9_./:=,@%+]+$ ]]; then line+=" $arg"
    else line+=" '${arg//\'/\'\\\'\'}'"; fi
  done
  echo "$line${SHOW_SUFFIX:-}" >&2
}
run() {  # Prints the command, then runs it unless --dry-run.
  show "$@"
  if [[ "$DRY_RUN" == 0 ]]; then "$@"; fi
}
