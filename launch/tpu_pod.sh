#!/usr/bin/env bash
# Usage: launch/tpu_pod.sh --tpu=NAME --zone=ZONE [--project=P] [--dir=DIR] [--env=K=V ...]
#                          [--dry-run] --config=configs/prosv.py[:variant] [--config.KEY=VALUE ...]
#
# Trains on every worker of a TPU VM pod slice at once: the same command on all hosts
# (gcloud ... ssh --worker=all), each with PROSV_DISTRIBUTED=1 so launch/train.py calls
# jax.distributed.initialize(), which finds the slice's hosts by itself on Cloud TPU.
# The repository (and its Python environment) must already sit in DIR on every worker.
#   --tpu, --zone, --project  the TPU VM (defaults: $TPU, $ZONE, $PROJECT)
#   --dir                     the repository on the workers, relative to the remote home or
#                             absolute (default: $DIR, else prosv_jax)
#   --env=K=V                 one more variable for the training processes (repeatable)
#   --dry-run (or DRY_RUN=1)  print the gcloud command, one line, shell-quoted; run nothing
# Every other argument goes to launch/train.py, e.g. --config.mesh.data=8 --max_steps=100.
# Env: PYTHON (the workers' interpreter, default: python).
set -euo pipefail

# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"

dry_run=${DRY_RUN:-0}
tpu=${TPU:-}
zone=${ZONE:-}
project=${PROJECT:-}
dir=${DIR:-prosv_jax}
envs=(PROSV_DISTRIBUTED=1)
args=()
for a in "$@"; do
  case "$a" in
    --dry-run|--dry_run) dry_run=1 ;;
    --tpu=*) tpu=${a#*=} ;;
    --zone=*) zone=${a#*=} ;;
    --project=*) project=${a#*=} ;;
    --dir=*) dir=${a#*=} ;;
    --env=*=*) envs+=("${a#--env=}") ;;
    -h|--help) usage; exit 0 ;;
    *) args+=("$a") ;;
  esac
done
[[ -n $tpu ]] || die 'no TPU named; pass --tpu=NAME or set TPU'
[[ -n $zone ]] || die 'no zone; pass --zone=ZONE (e.g. us-central2-b) or set ZONE'
[[ " ${args[*]-} " == *' --config='* ]] || die 'no --config=configs/<name>.py[:variant] given'

# What each worker runs, as one shell line (ssh hands it to the remote shell). Only the value
# of a K=V is quoted: a quoted 'K=V' would be read as a command name, not an assignment.
remote="cd $(quote "$dir") &&"
for kv in "${envs[@]}"; do
  [[ ${kv%%=*} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--env=$kv: write NAME=VALUE"
  remote+=" ${kv%%=*}=$(quote "${kv#*=}")"
done
remote+=" $(join_quoted "${PYTHON:-python}" launch/train.py "${args[@]}")"
cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone")
[[ -z $project ]] || cmd+=(--project "$project")
cmd+=(--worker=all --command "$remote")
if [[ $dry_run == 1 ]]; then
  join_quoted "${cmd[@]}"
  exit 0
fi
exec "${cmd[@]}"
