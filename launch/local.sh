#!/usr/bin/env bash
# Usage: launch/local.sh [--dry-run] [--config=configs/prosv.py[:variant]] [--config.KEY=VALUE ...]
#                        [--max_steps=N]
#
# Trains on this machine: one process that uses all of its local devices (CPU, GPUs or a single
# TPU host). PROSV_DISTRIBUTED=0 keeps it one process even inside a multi-task Slurm job, where
# launch/train.py would otherwise join the job's other tasks. Every argument but --dry-run goes
# to launch/train.py, e.g. mesh overrides: --config.mesh.data=4 --config.mesh.model=2.
#   --dry-run (or DRY_RUN=1)  print the command, one line, shell-quoted, and run nothing
# Env: PYTHON (default: python).
set -euo pipefail

usage() { sed -n '2,/^set /s/^# \{0,1\}//p' "$0"; }

# Shell-quotes like Python's shlex.quote, so a printed line pastes back into a shell as is.
quote() {
  local s=$1
  if [[ -z $s ]]; then
    printf "''"
  elif [[ $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\"\'\"\'}"
  fi
}
join_quoted() {
  local out='' a
  for a in "$@"; do out+="${out:+ }$(quote "$a")"; done
  printf '%s\n' "$out"
}

dry_run=${DRY_RUN:-0}
args=()
for a in "$@"; do
  case "$a" in
    --dry-run|--dry_run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    *) args+=("$a") ;;
  esac
done

cmd=(env PROSV_DISTRIBUTED=0 "${PYTHON:-python}" "$(dirname "$0")/train.py" ${args[@]+"${args[@]}"})
if [[ $dry_run == 1 ]]; then
  join_quoted "${cmd[@]}"
  exit 0
fi
exec "${cmd[@]}"
