"""PrOSV with the paper's defaults (p2+s2, beta 4, factor LR 10, s 8, direction LR 0.04).

The LRs are gemma-2-2b's, stated at its width 2304; on the default SmolLM2 (width 576) the
width rule makes them factor LR 5 and direction LR 0.08 (prosv_jax.train.config.base_config).

  python launch/train.py --config=configs/prosv.py \
      --config.data.source=../shared/data/axbench/concept10/prod_2b_l10_v1 \
      --config.data.metadata=../shared/data/axbench/concept10/prod_2b_l10_v1/metadata.jsonl \
      --config.data.concepts=0,1,2,3 --config.workdir=workdirs/prosv_c10

Variants (prosv_jax.train.config.VARIANTS) pick a model, its layer and its METHOD.md row:

  python launch/train.py --config=configs/prosv.py:gemma2_9b   # gemma-2-9b-it L20, beta 2 ...
  # also: smollm2, gemma3_270m, gemma2_2b, qwen25_32b; none = the default above
  # smollm2: SmolLM2 with the study's own row (docs/STUDY.md), not the paper's

Sweeps (get_sweep) run with launch/sweep.py:

  python launch/sweep.py --config=configs/prosv.py:smollm2 --sweep=beta_lr \
      --root=workdirs/sweeps/prosv_beta_lr

(runs that differ only in beta, direction scale, LRs and seed, like beta_lr's, train as slots
of one compiled step, each written to its own workdir; --separate trains them one by one). A
grid in one run without a sweep: --config.train.slots='steer.beta=1,4;optim.factor_lr=1,10'.
"""

from prosv_jax.train.config import preset_config, preset_sweep


def get_config(variant: str = ''):
  """The PrOSV config; `variant` names a VARIANTS entry ('' = the default, SmolLM2)."""
  return preset_config('prosv', variant)


def get_sweep(name: str) -> list[dict]:
  """The named sweep's points (prosv_jax.train.config.method_sweeps: beta_lr, beta_lr_small,
  width, width_small, width_lr, direction)."""
  return preset_sweep('prosv', name)
