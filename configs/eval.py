"""AxBench-style evaluation of PrOSV against unsteered, prompting and FSSV baselines.

  python launch/evaluate.py --config=configs/eval.py \
      --config.data.source=../shared/data/axbench/concept10/prod_2b_l10_v1 \
      --config.data.metadata=../shared/data/axbench/concept10/prod_2b_l10_v1/metadata.jsonl \
      --config.data.concepts=0,1,2,3,4 \
      --config.vectors.prosv=workdirs/c10/prosv/vectors \
      --config.vectors.fssv=workdirs/c10/fssv/vectors --config.workdir=workdirs/eval_c10

Leave vectors.* empty to train them first (paper presets, train.epochs epochs).

Vectors of another training preset beside the default ones (trained here, in
workdir/train_prosv-smollm2 and workdir/train_fssv-smollm2):

  python launch/evaluate.py --config=configs/eval.py:concept10 \
      --config.methods=unsteered,prompting,fssv,prosv,fssv:smollm2,prosv:smollm2

Presets (prosv_jax.eval.config.PRESETS):

  # All 10 Concept10 2b_l10 concepts, 20 instructions x 2 samples, unsteered, prompting, fssv,
  # fssv_grid, prosv, prosv_grid (hours on a CPU; see the cost note in the report):
  python launch/evaluate.py --config=configs/eval.py:concept10 \
      --config.vectors.prosv=workdirs/c10/prosv/vectors \
      --config.vectors.fssv=workdirs/c10/fssv/vectors
"""

from prosv_jax.eval.config import preset_config


def get_config(preset: str = ''):
  config = preset_config(preset)
  config.lock()
  return config
