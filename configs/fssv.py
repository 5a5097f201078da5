"""FSSV baseline: every prompt and response token (and every generated token) is edited.

Paper row gemma-2-2b L10 'all': beta 2, factor LR 1, s 1, direction LR 0.04.

  python launch/train.py --config=configs/fssv.py \
      --config.data.source=../shared/data/axbench/concept10/prod_2b_l10_v1 \
      --config.data.concepts=0 --config.workdir=workdirs/fssv_c0

Variants (prosv_jax.train.config.VARIANTS) take the METHOD.md 'all' rows:

  python launch/train.py --config=configs/fssv.py:gemma2_9b   # L20, beta 2, factor LR 0.1, 18 ep
  # also: smollm2, gemma3_270m, gemma2_2b, qwen25_32b; none = the default above

  python launch/sweep.py --config=configs/fssv.py:smollm2 --sweep=beta_lr \
      --root=workdirs/sweeps/fssv_beta_lr
"""

from prosv_jax import sweep
from prosv_jax.train.config import variant_config

SWEEPS = {
    'beta_lr': sweep.paper_grid,  # the paper's (beta, factor LR) grid, 30 runs
    'beta_lr_small': sweep.small_grid,  # 3 x 5 of it, sized for a CPU
    'width': lambda: sweep.product(
        sweep.models('smollm2', 'gemma3_270m', 'gemma2_2b', 'gemma2_9b', 'qwen25_32b'),
        sweep.transfer(), sweep.axis('optim.factor_lr', (0.1, 1.0))),
    'width_small': lambda: sweep.product(
        sweep.models('smollm2', 'gemma3_270m'), sweep.transfer(),
        sweep.axis('optim.factor_lr', (0.1, 1.0))),
    'direction': lambda: sweep.grid({'steer.direction_scale': sweep.PAPER_DIRECTION_SCALES,
                                     'optim.direction_lr': sweep.PAPER_DIRECTION_LRS}),
}


def get_config(variant: str = ''):
  """The FSSV config; `variant` names a VARIANTS entry ('' = the default)."""
  config = variant_config('fssv', variant)
  config.lock()
  return config


def get_sweep(name: str) -> list[dict]:
  """The named sweep's points (dicts of config overrides); see SWEEPS."""
  return sweep.pick(SWEEPS, name)
