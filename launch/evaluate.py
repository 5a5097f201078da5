"""AxBench-style evaluation: unsteered, prompting, FSSV (trained / factor grid) and PrOSV.

  python launch/evaluate.py --config=configs/eval.py --config.vectors.prosv=DIR \
      --config.vectors.fssv=DIR --config.data.concepts=0,1,2,3,4 --config.workdir=workdirs/eval

Leave vectors.* empty to train them first. Rerunning the same command resumes: generations and
ratings already on disk are reused. Writes results.json, results.md, scores.png and grid.png.
"""

import json
import platform
import sys

from absl import app, logging
from ml_collections import config_flags

from prosv_jax.errors import ProsvError

CONFIG = config_flags.DEFINE_config_file('config', 'configs/eval.py', 'Evaluation config file.',
                                         lock_config=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from prosv_jax.eval.evaluate import evaluate
  from prosv_jax.eval.report import markdown
  config = CONFIG.value
  try:
    results = evaluate(config)
  except ProsvError as e:
    raise SystemExit(f'error: {e}') from None
  print(markdown(results))
  print(json.dumps(dict(command=' '.join(sys.argv), machine=platform.machine(),
                        wall_s=results['wall_s'], workdir=config.workdir)))


if __name__ == '__main__':
  app.run(main)
