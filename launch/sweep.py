"""Runs a config's named sweep: one workdir per run under --root, named after its values.

  # the paper's (beta, factor LR) grid on SmolLM2, here, one run after another
  python launch/sweep.py --config=configs/prosv.py:smollm2 --sweep=beta_lr \
      --root=workdirs/sweeps/beta_lr --config.train.epochs=4
  # the same as shell lines, one per run, for a cluster (each through a launcher script)
  python launch/sweep.py --config=configs/prosv.py:gemma2_2b --sweep=beta_lr \
      --root=workdirs/sweeps/2b --print --launcher='launch/slurm.sh --nodes=1 --gpus-per-node=8'
  # a long sweep in pieces that each fit a sitting: the same command with --part=1/3, 2/3, 3/3

Every --config.* override applies to every run. Runs that differ only in beta, direction
scale, LRs and seed (a beta x LR grid) train here as slots of one compiled step, each still
written to its own workdir as its separate run would be (--separate trains them one by one;
--print always gives one command per run). Rerunning skips finished runs (summary.json with
steps == total_steps) and resumes interrupted ones from their checkpoints. Then:
python launch/collect.py --root=... --out=study.csv; python launch/plot_study.py ...
"""

import importlib.util
import os
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from prosv_jax import sweep
from prosv_jax.errors import ProsvError

CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file[:variant].',
                                         lock_config=True)
SWEEP = flags.DEFINE_string('sweep', None, 'Name of a sweep of the config file (get_sweep).')
ROOT = flags.DEFINE_string('root', None, 'Folder that gets one workdir per run.')
PRINT = flags.DEFINE_boolean('print', False, 'Print one command per unfinished run, run none.')
LAUNCHER = flags.DEFINE_string('launcher', 'python launch/train.py',
                               'With --print: the command each run goes through, e.g. '
                               "'launch/slurm.sh --nodes=2' (it gets --config and overrides).")
MAX_RUNS = flags.DEFINE_integer('max_runs', 0, 'Only the first N runs of the sweep (0 = all).')
PART = flags.DEFINE_string('part', '', "Only piece i of n of the sweep's runs, e.g. 2/3 (a long "
                           'sweep as n commands; sweep.json still lists every run).')
MAX_STEPS = flags.DEFINE_integer('max_steps', None, 'Stop each run after this many steps.')
RETRY_FAILED = flags.DEFINE_boolean('retry_failed', False, 'Train again runs that failed.')
SEPARATE = flags.DEFINE_boolean('separate', False,
                                'Train every run on its own, even runs that differ only in '
                                'beta, direction scale, LRs and seed (by default those train '
                                'together as slots of one step: train.slots).')
REUSE = flags.DEFINE_list('reuse', [], 'Sweep roots whose finished runs stand in for runs with '
                          'the same config: copied, not trained again (training is '
                          'deterministic).')
flags.mark_flags_as_required(['config', 'sweep', 'root'])


def load_sweep(config_spec: str, name: str) -> list[dict]:
  """get_sweep(name) of the config file named by --config (path[:variant])."""
  path = config_spec.split(':', 1)[0]
  spec = importlib.util.spec_from_file_location('sweep_config', path)
  if spec is None:
    raise ProsvError(f'cannot load config file {path}; pass --config=configs/<name>.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ProsvError(f'{path} declares no sweeps; add get_sweep(name) to it or use '
                     'configs/prosv.py or configs/fssv.py')
  return module.get_sweep(name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  config_spec = config_flags.get_config_filename(flags.FLAGS['config'])
  common = config_flags.get_override_values(flags.FLAGS['config'])
  try:
    runs = sweep.expand(load_sweep(config_spec, SWEEP.value), ROOT.value)
    if MAX_RUNS.value:
      runs = runs[:MAX_RUNS.value]
    sweep.check_common(common, runs)
    sweep.write_manifest(ROOT.value, config_spec, SWEEP.value, runs, common)
    if PART.value:
      runs = sweep.part(runs, PART.value)
    sweep.reuse_finished(CONFIG.value, runs, REUSE.value,
                         log=lambda line: print(line, file=sys.stderr))
    if PRINT.value:
      todo = [r for r in runs if not sweep.is_finished(r.workdir)]
      if len(todo) < len(runs):
        print(f'# {len(runs) - len(todo)} finished runs left out', file=sys.stderr)
      for argv_ in sweep.commands(config_spec, todo, common, tuple(shlex.split(LAUNCHER.value)),
                                  MAX_STEPS.value):
        print(shlex.join(argv_))
      return
    results = sweep.run_local(CONFIG.value, runs, MAX_STEPS.value, RETRY_FAILED.value,
                              separate=SEPARATE.value)
  except ProsvError as e:
    raise SystemExit(f'error: {e}') from None
  print(f'\n{"run":<32} {"status":<15} final_loss')
  for r in results:
    loss = r['final_loss']
    loss = ', '.join(f'{x:.4f}' for x in loss) if loss else '-'
    print(f'{r["name"]:<32} {r["status"]:<15} {loss}')
  print(f'\ncollect: python launch/collect.py --root={shlex.quote(ROOT.value)} '
        f'--out={shlex.quote(os.path.join(ROOT.value, "study.csv"))}')


if __name__ == '__main__':
  app.run(main)
