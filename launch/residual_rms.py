"""Prints the block-L residual RMS of each concept's training rows, as JSON: the unit that
steer.init='residual' measures beta and the factor LR in (Trainer.residual_rms), and the
value to give steer.residual_ref when carrying numbers tuned on this model to another one.

  D=../shared/data/axbench/concept10/prod_2b_l10_v1
  python launch/residual_rms.py --config=configs/prosv.py:gemma3_270m \
      --config.data.source=$D --config.data.concepts=0,1,2,3,4,5,6,7,8,9

Nothing is trained: blocks 0..L run once over the rows (no bank is kept).
"""

from prosv_jax import cli

cli.quiet()  # before anything imports transformers (its banner reads the environment)

import json
import time

from absl import app

from prosv_jax.errors import ProsvError
from prosv_jax.train.trainer import Trainer

CONFIG = cli.define_config('config', 'configs/prosv.py', 'Training config file.')


def main(argv):
  del argv
  cli.set_log_levels()
  config = cli.config_value(CONFIG)
  start = time.perf_counter()
  try:
    with config.unlocked():
      config.train.cache_hidden = False  # one pass; a bank would hold every row for nothing
    trainer = Trainer(config)
    per_concept, pooled = trainer.residual_rms()
  except ProsvError as e:
    raise SystemExit(f'error: {e}') from None
  print(json.dumps({'model': config.model, 'layer': trainer.layer,
                    'concepts': list(trainer.concepts.ids),
                    'residual_rms': [round(x, 4) for x in per_concept],
                    'pooled': round(pooled, 4),
                    'examples_per_concept': trainer.concepts.per_concept,
                    'seconds': round(time.perf_counter() - start, 1)}))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
