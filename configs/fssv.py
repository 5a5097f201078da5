"""FSSV baseline: every prompt and response token (and every generated token) is edited.

Paper row gemma-2-2b L10 'all': beta 2, factor LR 1, s 1, direction LR 0.04.

  python launch/train.py --config=configs/fssv.py \
      --config.data.source=../shared/data/axbench/concept10/prod_2b_l10_v1 \
      --config.data.concepts=0 --config.workdir=workdirs/fssv_c0
"""

from prosv_jax.config import method_config


def get_config():
  config = method_config('fssv')
  config.lock()
  return config
