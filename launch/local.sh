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

# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"

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
