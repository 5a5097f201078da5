"""Two finished runs compared, paired: held-out loss and steering score, each a minus b with
a 95% bootstrap interval over the same examples (prosv_jax/study.py).

  python launch/pair.py runs/study/prosv_beta_lr/beta0.0625_flr10 runs/study/fssv_beta_lr/beta1_flr1

Held-out loss: the token-mean loss on AxBench's held-out positives of each trained concept
(lower is better; the runs must share their data and concepts). Score: the mean harmonic of
each run's own evaluation by launch/score_sweep.py (higher is better; the same instructions
and judge). A figure either run lacks is reported as missing with the command that adds it.
"""

import os

from absl import app

from prosv_jax import study, sweep
from prosv_jax.train.workdir import SUMMARY_FILE


def _line(name: str, pair: dict | None, unit: str, missing: str) -> str:
  if pair is None:
    return f'{name}: missing ({missing})'
  return (f'{name}: {pair["diff"]:+.4f} [{pair["ci"][0]:+.4f}, {pair["ci"][1]:+.4f}] '
          f'(a - b, 95% paired interval over {pair[unit]} {unit})')


def main(argv):
  if len(argv) != 3:
    raise app.UsageError('give two run folders: python launch/pair.py RUN_A RUN_B')
  a, b = argv[1:]
  for folder in (a, b):
    if not os.path.exists(os.path.join(folder, SUMMARY_FILE)):
      raise SystemExit(f'error: {folder} has no {SUMMARY_FILE}; pass the folder of a finished '
                       'run (launch/train.py or launch/sweep.py)')
  try:
    held = study.heldout_difference(sweep.read_summary(a), sweep.read_summary(b))
    score = study.score_difference(a, b)
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  print(f'a = {a}\nb = {b}')
  print(_line('held-out loss', held, 'examples',
              'per-example figures: python launch/heldout.py --root=<its sweep root>'))
  print(_line('score', score, 'generations',
              'python launch/score_sweep.py --root=<its sweep root> '
              '--config.instructions.count=10'))


if __name__ == '__main__':
  app.run(main)
