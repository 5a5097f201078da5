"""Adds per-example held-out figures to finished runs whose summaries lack them.

  python launch/heldout.py --root=runs/study/prosv_beta_lr

Runs trained since summaries keep them (summary.json's heldout_examples) are skipped; for the
others the held-out positives are measured again from the exported vectors (forward passes
only, the model loaded once per model), checked against the summary's own heldout_loss, and
written into its summary. launch/collect.py then gives every run its held-out loss minus the
selected run's with a paired interval (heldout_vs_best).
"""

import json
import os

from absl import app, flags, logging

from prosv_jax.errors import ProsvError

ROOT = flags.DEFINE_string('root', None, 'A sweep root (launch/sweep.py --root).')
TOLERANCE = flags.DEFINE_float('tolerance', 1e-3, "Largest allowed gap between the measured "
                               "and the summary's heldout_loss (another jax or XLA may move "
                               'the last digits).')
flags.mark_flags_as_required(['root'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  # pylint: disable=import-outside-toplevel  (jax loads only once the flags parse)
  from prosv_jax import study, sweep
  from prosv_jax.models.load import load_model
  from prosv_jax.train.job import heldout_figures
  from prosv_jax.train.workdir import CONFIG_FILE
  loaded = {}
  try:
    for folder in study._run_folders(ROOT.value):  # pylint: disable=protected-access
      summary = sweep.read_summary(folder)
      if not sweep.is_finished(folder) or summary.get('heldout_examples'):
        continue
      with open(os.path.join(folder, CONFIG_FILE)) as f:
        config = json.load(f)
      key = (config['model'], config['dtype'])
      if key not in loaded:
        loaded.clear()  # one model in memory at a time
        loaded[key] = load_model(*key)
      figures = heldout_figures(folder, loaded[key])
      gap = max(abs(a - b) for a, b in zip(figures['heldout_loss'], summary['heldout_loss']))
      if gap > TOLERANCE.value:
        raise ProsvError(f'{folder}: measured heldout_loss {figures["heldout_loss"]} against '
                         f'the summary\'s {summary["heldout_loss"]} (gap {gap:.2g}); the run '
                         'or its vectors changed since it was trained, so nothing is written')
      sweep.write_summary(folder, {**summary, **figures})
      print(f'{os.path.relpath(folder, ROOT.value)}: {len(figures["heldout_examples"]["loss"])} '
            f'held-out examples, heldout_loss within {gap:.1e} of the summary')
  except ProsvError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  app.run(main)
