"""PrOSV with the paper's defaults (p2+s2, beta 4, factor LR 10, s 8, direction LR 0.04).

  python launch/train.py --config=configs/prosv.py \
      --config.data.source=../shared/data/axbench/concept10/prod_2b_l10_v1 \
      --config.data.metadata=../shared/data/axbench/concept10/prod_2b_l10_v1/metadata.jsonl \
      --config.data.concepts=0,1,2,3 --config.workdir=workdirs/prosv_c10
"""

from prosv_jax.config import base_config


def get_config():
  config = base_config()
  config.lock()  # a misspelt --config.x override fails instead of being ignored
  return config
