"""Scores every finished run of a sweep with the steering evaluation (offline judge by default).

  python launch/score_sweep.py --root=workdirs/sweeps/prosv_beta_lr_small \
      --config.instructions.count=6

Each run's vectors are evaluated for its own method only (PrOSV or FSSV by its positions), on
the run's own data and concepts, into <run>/eval/ (results.json there is what
launch/collect.py merges as the `score` column). The model and the judge are loaded once per
model; runs already scored are skipped, so a rerun resumes. --config.* overrides configs/eval.py
(instructions, generation, judge); methods, vectors, data and workdir are set per run.
"""

import json
import os
import shutil
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from prosv_jax.errors import ProsvError

CONFIG = config_flags.DEFINE_config_file('config', 'configs/eval.py', 'Evaluation config file.',
                                         lock_config=True)
ROOT = flags.DEFINE_string('root', None, 'A sweep root (launch/sweep.py --root).')
flags.mark_flags_as_required(['root'])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from prosv_jax import study, sweep
  from prosv_jax.train.workdir import CONFIG_FILE, VECTORS_DIR
  from prosv_jax.eval.evaluate import evaluate, make_judge
  from prosv_jax.models.load import load_model
  base = CONFIG.value
  loaded = {}
  done = 0
  try:
    for folder in study._run_folders(ROOT.value):  # pylint: disable=protected-access
      if not sweep.is_finished(folder):
        print(f'skip {folder}: not finished', file=sys.stderr)
        continue
      if os.path.exists(os.path.join(folder, 'eval', 'results.json')):
        done += 1
        continue
      # A run copied from a finished one (sweep.py --reuse) takes that run's scores, once it
      # has them: the same vectors, the same evaluation.
      source = (sweep.read_summary(folder) or {}).get('reused_from')
      if source and os.path.exists(os.path.join(source, 'eval', 'results.json')):
        shutil.copytree(os.path.join(source, 'eval'), os.path.join(folder, 'eval'),
                        dirs_exist_ok=True)
        done += 1
        print(f'{os.path.basename(folder)}: scores copied from {source} (the same run)')
        continue
      with open(os.path.join(folder, CONFIG_FILE)) as f:
        run = json.load(f)
      method = 'fssv' if run['positions'] == 'all' else 'prosv'
      config = base.copy_and_resolve_references()
      config.unlock()
      config.model, config.dtype, config.layer = run['model'], run['dtype'], run['layer']
      config.methods = method
      config.vectors[method] = os.path.join(folder, VECTORS_DIR)
      config.data.source, config.data.metadata = run['data']['source'], run['data']['metadata']
      config.data.concepts = tuple(run['data']['concepts'])
      config.workdir = os.path.join(folder, 'eval')
      config.robustness = False
      config.utility.negatives = 0
      config.judge.halves = False  # a sweep compares whole-response scores only
      config.lock()
      key = (config.model, config.dtype)
      if key not in loaded:
        model = load_model(config.model, config.dtype)
        loaded.clear()  # one model in memory at a time
        loaded[key] = (model, make_judge(config, model))
      model, judge = loaded[key]
      results = evaluate(config, model, judge)
      done += 1
      print(f'{os.path.basename(folder)}: {method} harmonic '
            f'{results["methods"][method]["mean"]["harmonic"]:.3f}')
  except ProsvError as e:
    raise SystemExit(f'error: {e}') from None
  print(f'{done} runs scored under {ROOT.value}; gather them with launch/collect.py '
        f'--root={ROOT.value}')


if __name__ == '__main__':
  app.run(main)
