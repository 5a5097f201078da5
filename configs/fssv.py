"""FSSV baseline: every prompt and response token (and every generated token) is edited.

Paper row gemma-2-2b L10 'all': beta 2, factor LR 1, s 1, direction LR 0.04, stated at
width 2304 (on the default SmolLM2 the width rule gives factor LR 0.5, direction LR 0.08).

  python launch/train.py --config=configs/fssv.py \
      --config.data.source=../shared/data/axbench/concept10/prod_2b_l10_v1 \
      --config.data.concepts=0 --config.workdir=workdirs/fssv_c0

Variants (prosv_jax.train.config.VARIANTS) take the METHOD.md 'all' rows:

  python launch/train.py --config=configs/fssv.py:gemma2_9b   # L20, beta 2, factor LR 0.1, 18 ep
  # also: smollm2, gemma3_270m, gemma2_2b, qwen25_32b; none = the default above
  # smollm2: SmolLM2 with the study's own row (docs/STUDY.md), not the paper's

  python launch/sweep.py --config=configs/fssv.py:smollm2 --sweep=beta_lr \
      --root=workdirs/sweeps/fssv_beta_lr
"""

from prosv_jax.train.config import preset_config, preset_sweep


def get_config(variant: str = ''):
  """The FSSV config; `variant` names a VARIANTS entry ('' = the default, SmolLM2)."""
  return preset_config('fssv', variant)


def get_sweep(name: str) -> list[dict]:
  """The named sweep's points (the same sweeps as configs/prosv.py, FSSV's factor LRs)."""
  return preset_sweep('fssv', name)
