#!/usr/bin/env bash
# Usage: launch/slurm.sh [--nodes=N] [--gpus-per-node=G] [--partition=P] [--time=T]
#                        [--account=A] [--job-name=J] [--output=PATTERN] [--sbatch-arg=X ...]
#                        [--srun] [--dry-run] --config=configs/prosv.py[:variant] [overrides]
#
# Multi-node GPU training under Slurm: one task per GPU (N x G processes), each started by
# srun with PROSV_DISTRIBUTED=1, so launch/train.py calls jax.distributed.initialize(). JAX
# reads the Slurm job itself (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID,
# SLURM_LOCALID): the coordinator is the first node, and each task takes local GPU
# SLURM_LOCALID. So tasks must see all GPUs of their node: --gpus-per-node, never
# --gpus-per-task (which would hide the others). JAX_COORDINATOR_PORT picks the port.
#   default      submit a batch job: sbatch ... --wrap='srun python launch/train.py ...'
#   --srun       run srun directly, inside an allocation you hold (salloc, or a batch script)
#   --nodes, --gpus-per-node  defaults: $NODES or 1, $GPUS_PER_NODE or 8
#   --partition, --time, --account, --job-name (default prosv), --output (default
#                slurm-%x-%j.out): sbatch's options; --sbatch-arg=X passes any other one
#   --dry-run (or DRY_RUN=1)  print the sbatch (or srun) command, one line, shell-quoted
# Every other argument goes to launch/train.py, e.g. --config.mesh.data=16.
# Env: PYTHON (default: python).
set -euo pipefail

# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"

dry_run=${DRY_RUN:-0}
mode=sbatch
nodes=${NODES:-1}
gpus=${GPUS_PER_NODE:-8}
job_name=prosv
output='slurm-%x-%j.out'
sbatch_opts=()
args=()
for a in "$@"; do
  case "$a" in
    --dry-run|--dry_run) dry_run=1 ;;
    --srun) mode=srun ;;
    --nodes=*) nodes=${a#*=} ;;
    --gpus-per-node=*) gpus=${a#*=} ;;
    --partition=*|--time=*|--account=*) sbatch_opts+=("$a") ;;
    --job-name=*) job_name=${a#*=} ;;
    --output=*) output=${a#*=} ;;
    --sbatch-arg=*) sbatch_opts+=("${a#--sbatch-arg=}") ;;
    -h|--help) usage; exit 0 ;;
    *) args+=("$a") ;;
  esac
done
[[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--nodes=$nodes: give a positive number"
[[ $gpus =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node=$gpus: give a positive number"
[[ " ${args[*]-} " == *' --config='* ]] || die 'no --config=configs/<name>.py[:variant] given'

# Tasks start in the repository, wherever the script is called from (train.py's paths are
# relative to it).
root=$(cd "$(dirname "$0")/.." && pwd)
layout=(--chdir="$root" --nodes="$nodes" --ntasks-per-node="$gpus" --gpus-per-node="$gpus")
train=("${PYTHON:-python}" launch/train.py "${args[@]}")
if [[ $mode == srun ]]; then
  cmd=(env PROSV_DISTRIBUTED=1 srun "${layout[@]}" --kill-on-bad-exit=1 "${train[@]}")
else
  # sbatch exports the submitting environment plus PROSV_DISTRIBUTED to the job, and srun
  # passes it on to every task.
  cmd=(sbatch --job-name="$job_name" "${layout[@]}" --output="$output"
       ${sbatch_opts[@]+"${sbatch_opts[@]}"} --export=ALL,PROSV_DISTRIBUTED=1
       --wrap="$(join_quoted srun --kill-on-bad-exit=1 "${train[@]}")")
fi
if [[ $dry_run == 1 ]]; then
  join_quoted "${cmd[@]}"
  exit 0
fi
exec "${cmd[@]}"
