"""AxBench-style evaluation: unsteered, prompting, FSSV (trained / factor grid) and PrOSV.

  python launch/evaluate.py --config=configs/eval.py --config.vectors.prosv=DIR \
      --config.vectors.fssv=DIR --config.data.concepts=0,1,2,3,4 --config.workdir=workdirs/eval

Leave vectors.* empty to train them first. Rerunning the same command resumes: generations and
ratings already on disk are reused. Writes results.json, results.md, scores.png and grid.png.
"""

import json
import platform
import sys

from prosv_jax import cli

cli.quiet()  # before anything imports transformers (its banner reads the environment)

from absl import app

from prosv_jax.errors import ProsvError

CONFIG = cli.define_config('config', 'configs/eval.py', 'Evaluation config file.')


def main(argv):
  del argv
  cli.set_log_levels()
  from prosv_jax.eval.evaluate import evaluate
  from prosv_jax.eval.report import markdown
  config = cli.config_value(CONFIG)
  try:
    results = evaluate(config)
  except ProsvError as e:
    raise SystemExit(f'error: {e}') from None
  print(markdown(results))
  print(json.dumps(dict(command=' '.join(sys.argv), machine=platform.machine(),
                        wall_s=results['wall_s'], workdir=config.workdir)))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
