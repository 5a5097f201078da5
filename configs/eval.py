"""AxBench-style evaluation of PrOSV against unsteered, prompting and FSSV baselines.

  python launch/evaluate.py --config=configs/eval.py \
      --config.data.source=../shared/data/axbench/concept10/prod_2b_l10_v1 \
      --config.data.metadata=../shared/data/axbench/concept10/prod_2b_l10_v1/metadata.jsonl \
      --config.data.concepts=0,1,2,3,4 \
      --config.vectors.prosv=workdirs/c10/prosv/vectors \
      --config.vectors.fssv=workdirs/c10/fssv/vectors --config.workdir=workdirs/eval_c10

Leave vectors.* empty to train them first (paper presets, train.epochs epochs).
"""

from prosv_jax.eval.config import eval_config


def get_config():
  config = eval_config()
  config.lock()
  return config
