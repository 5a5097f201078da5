"""PrOSV with the paper's defaults (p2+s2, beta 4, factor LR 10, s 8, direction LR 0.04).

  python launch/train.py --config=configs/prosv.py \
      --config.data.source=../shared/data/axbench/concept10/prod_2b_l10_v1 \
      --config.data.metadata=../shared/data/axbench/concept10/prod_2b_l10_v1/metadata.jsonl \
      --config.data.concepts=0,1,2,3 --config.workdir=workdirs/prosv_c10

Variants (prosv_jax.train.config.VARIANTS) pick a model, its layer and its METHOD.md row:

  python launch/train.py --config=configs/prosv.py:gemma2_9b   # gemma-2-9b-it L20, beta 2 ...
  # also: smollm2, gemma3_270m, gemma2_2b, qwen25_32b; none = the default above

Sweeps (get_sweep) run with launch/sweep.py:

  python launch/sweep.py --config=configs/prosv.py:smollm2 --sweep=beta_lr \
      --root=workdirs/sweeps/prosv_beta_lr
"""

from prosv_jax import sweep
from prosv_jax.train.config import variant_config

SWEEPS = {
    # The paper's (beta, factor LR) grid, 30 runs: the heatmap of launch/plot_study.py.
    'beta_lr': sweep.paper_grid,
    # A CPU-sized corner of that grid: 3 betas x 5 factor LRs, 15 runs.
    'beta_lr_small': sweep.small_grid,
    # Width transfer: the config's LRs (stated at its optim.base_width) on every model, with
    # and without the muP rule, at two factor LRs: curves of final loss over width.
    'width': lambda: sweep.product(
        sweep.models('smollm2', 'gemma3_270m', 'gemma2_2b', 'gemma2_9b', 'qwen25_32b'),
        sweep.transfer(), sweep.axis('optim.factor_lr', (1.0, 10.0))),
    # The same on the two packaged models only (runs on a CPU).
    'width_small': lambda: sweep.product(
        sweep.models('smollm2', 'gemma3_270m'), sweep.transfer(),
        sweep.axis('optim.factor_lr', (1.0, 10.0))),
    # Does the best factor LR move with width? Both packaged models, the muP rule on, 4 LRs.
    'width_lr': lambda: sweep.product(
        sweep.models('smollm2', 'gemma3_270m'), sweep.transfer('mup'),
        sweep.axis('optim.factor_lr', (0.1, 1.0, 10.0, 40.0))),
    # The direction's init scale and LR (METHOD.md: s in {1, 8}, direction LR in {0.04, 0.08}).
    'direction': lambda: sweep.grid({'steer.direction_scale': sweep.PAPER_DIRECTION_SCALES,
                                     'optim.direction_lr': sweep.PAPER_DIRECTION_LRS}),
}


def get_config(variant: str = ''):
  """The PrOSV config; `variant` names a VARIANTS entry ('' = the default)."""
  config = variant_config('prosv', variant)
  config.lock()  # a misspelt --config.x override fails instead of being ignored
  return config


def get_sweep(name: str) -> list[dict]:
  """The named sweep's points (dicts of config overrides); see SWEEPS."""
  return sweep.pick(SWEEPS, name)
