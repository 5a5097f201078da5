"""Sweeps: lists of config overrides built from small pieces, expanded into named runs.

A sweep is a list of *points*; a point is a dict of config overrides keyed by dotted path
(`{'steer.beta': 4.0, 'optim.factor_lr': 10.0}`), optionally with a `_name` tuple of name
fragments. Pieces combine like this:

  product(axis('steer.beta', [1, 2]), axis('optim.factor_lr', [0.1, 10]))
      -> beta1_flr0.1, beta1_flr10, beta2_flr0.1, beta2_flr10
  zip(axis('steer.beta', [1, 2]), axis('optim.factor_lr', [0.1, 10]))
      -> beta1_flr0.1, beta2_flr10

Configs declare theirs in `get_sweep(name)` (configs/prosv.py); launch/sweep.py expands a
sweep into runs under a root folder (one workdir per run, named after its point), runs or
prints them, and launch/collect.py gathers their summaries.
"""

import builtins
import dataclasses
import itertools
import json
import os
import re

from prosv_jax.errors import ProsvError
from prosv_jax.train.workdir import FAILED_FILE, SUMMARY_FILE

NAME = '_name'  # a point's name fragments; not a config key
# Short names of the keys studies sweep, for run names like beta4_flr10.
ALIASES = {
    'steer.beta': 'beta',
    'steer.direction_scale': 's',
    'optim.factor_lr': 'flr',
    'optim.direction_lr': 'dlr',
    'optim.base_width': 'base',
    'optim.factor_lr_width_exponent': 'fexp',
    'optim.direction_lr_width_exponent': 'dexp',
    'train.epochs': 'ep',
    'train.batch_size': 'bs',
    'train.seed': 'seed',
    'train.loss': 'loss',
    'data.concepts': 'c',
    'layer': 'L',
    'positions': 'pos',
}
# The paper's grids (METHOD.md section 2).
PAPER_BETAS = (1.0, 2.0, 4.0, 8.0, 16.0)
PAPER_FACTOR_LRS = (0.01, 0.1, 1.0, 10.0, 20.0, 40.0)
PAPER_DIRECTION_SCALES = (1.0, 8.0)
PAPER_DIRECTION_LRS = (0.04, 0.08)
# The muP rule of prosv_jax.train.optim.scaled_lrs, on and off.
TRANSFER = {'mup': (0.5, -0.5), 'fixed': (0.0, 0.0)}
FAILED = FAILED_FILE
MANIFEST = 'sweep.json'


def format_value(value) -> str:
  """A value as it reads in a run name: 10.0 -> '10', 0.01 -> '0.01', (0, 1) -> '0-1'."""
  if isinstance(value, bool):
    return 'on' if value else 'off'
  if isinstance(value, float):
    return f'{value:g}'
  if isinstance(value, (tuple, list)):
    return '-'.join(format_value(v) for v in value)
  return re.sub(r'[^A-Za-z0-9.+-]+', '-', str(value)).strip('-')


def fragment(key: str, value) -> str:
  """'steer.beta', 4.0 -> 'beta4' (the key's alias, else its last part, then the value)."""
  return ALIASES.get(key, key.rsplit('.', 1)[-1]) + format_value(value)


def axis(key: str, values, alias: str | None = None) -> list[dict]:
  """One swept config key: a point per value, named alias+value (default from ALIASES)."""
  prefix = ALIASES.get(key, key.rsplit('.', 1)[-1]) if alias is None else alias
  return [{key: v, NAME: (prefix + format_value(v),)} for v in values]


def labelled(label: str, overrides: dict) -> dict:
  """A point whose name is `label` rather than its keys (e.g. 'mup' for a set of keys)."""
  return {**overrides, NAME: (label,)}


def _merge(points) -> dict:
  out, names = {}, ()
  for p in points:
    for key, value in p.items():
      if key == NAME:
        continue
      if key in out and out[key] != value:
        raise ProsvError(f'sweep pieces set {key} twice ({out[key]!r}, {value!r}); sweep each '
                         'key in one axis only')
      out[key] = value
    names += tuple(p.get(NAME) or (fragment(k, v) for k, v in p.items()))
  out[NAME] = names
  return out


def product(*axes) -> list[dict]:
  """Every combination of one point per axis, the last axis varying fastest."""
  return [_merge(combo) for combo in itertools.product(*axes)]


def zip(*axes) -> list[dict]:  # pylint: disable=redefined-builtin
  """The i-th points of all axes merged together; the axes must be equally long."""
  lengths = {len(a) for a in axes}
  if len(lengths) > 1:
    raise ProsvError(f'zip of axes of lengths {sorted(lengths)}; give them equal lengths or '
                     'use product')
  return [_merge(combo) for combo in builtins.zip(*axes)]


def grid(spec: dict) -> list[dict]:
  """product of one axis per item: grid({'steer.beta': [1, 2], 'optim.factor_lr': [1]})."""
  return product(*(axis(key, values) for key, values in spec.items()))


def small_grid() -> list[dict]:
  """A CPU-sized corner of the paper's grid: beta {1, 4, 16} x factor LR {0.01..40}, 15 points."""
  return grid({'steer.beta': (1.0, 4.0, 16.0), 'optim.factor_lr': (0.01, 0.1, 1.0, 10.0, 40.0)})


def paper_grid() -> list[dict]:
  """The paper's (beta, factor LR) grid: 5 x 6 = 30 points."""
  return grid({'steer.beta': PAPER_BETAS, 'optim.factor_lr': PAPER_FACTOR_LRS})


def models(*variants: str) -> list[dict]:
  """One point per named variant (prosv_jax.train.config.VARIANTS): its model, layer and template.

  The hyperparameters stay those of the swept config, stated at its optim.base_width, so a
  sweep over models is a width-transfer study.
  """
  from prosv_jax.train.config import VARIANTS  # pylint: disable=import-outside-toplevel
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    raise ProsvError(f'unknown variants {unknown}; use some of: {", ".join(VARIANTS)}')
  points = []
  for name in variants:
    v = VARIANTS[name]
    points.append(labelled(name, {'model': v.model, 'layer': v.layer,
                                  'chat_template': v.chat_template}))
  return points


def transfer(*modes: str) -> list[dict]:
  """Width transfer of the LRs on ('mup': the optim.scaled_lrs rule) and off ('fixed')."""
  modes = modes or tuple(TRANSFER)
  return [labelled(m, {'optim.factor_lr_width_exponent': TRANSFER[m][0],
                       'optim.direction_lr_width_exponent': TRANSFER[m][1]}) for m in modes]


def pick(sweeps: dict, name: str) -> list[dict]:
  """sweeps[name]() (or sweeps[name] if it is a list), with a clear error for a wrong name."""
  if name not in sweeps:
    raise ProsvError(f'unknown sweep {name!r}; this config has: {", ".join(sweeps) or "none"}')
  points = sweeps[name]
  return list(points() if callable(points) else points)


@dataclasses.dataclass(frozen=True)
class Run:
  """One concrete run of a sweep: its name, workdir and config overrides (no workdir in them)."""
  name: str
  workdir: str
  overrides: dict


def run_name(point: dict) -> str:
  """A point's readable name, e.g. 'beta4_flr10'."""
  parts = point.get(NAME) or tuple(fragment(k, v) for k, v in point.items() if k != NAME)
  return '_'.join(parts) or 'default'


def expand(points: list[dict], root: str) -> list[Run]:
  """Named runs under `root`, one per point; names must come out unique."""
  runs, seen = [], {}
  for point in points:
    name = run_name(point)
    overrides = {k: v for k, v in point.items() if k != NAME}
    if 'workdir' in overrides:
      raise ProsvError(f'sweep point {name} sets workdir; the sweep puts each run in '
                       f'<root>/<name>, so drop it')
    if name in seen:
      raise ProsvError(f'two sweep points are both named {name} ({seen[name]} and {overrides});'
                       ' give the axes distinct values or labels')
    seen[name] = overrides
    runs.append(Run(name, os.path.join(root, name), overrides))
  return runs


def apply(config, overrides: dict):
  """A copy of `config` with `overrides` set; a key the config lacks is a ProsvError."""
  config = config.copy_and_resolve_references()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    try:
      for p in parents:
        node = node[p]
      if leaf not in node:
        raise KeyError(leaf)
      node[leaf] = tuple(value) if isinstance(value, list) else value
    except (KeyError, AttributeError, TypeError) as e:
      raise ProsvError(f'cannot set config key {key}={value!r} ({type(e).__name__}); check the '
                       'sweep or override for a misspelt key or a wrong type') from None
  return config


def flag_value(value) -> str:
  """A value as config_flags parses it back: tuples as '0,1', floats in repr form."""
  if isinstance(value, (tuple, list)):
    return ','.join(flag_value(v) for v in value)
  if isinstance(value, float):
    return repr(value)
  return str(value)


def config_flags_of(overrides: dict) -> list[str]:
  """['--config.steer.beta=4.0', ...] for launch/train.py."""
  return [f'--config.{key}={flag_value(value)}' for key, value in overrides.items()]


def read_summary(workdir: str) -> dict | None:
  """The run's summary.json, or None when it has none (yet) or it cannot be read."""
  path = os.path.join(workdir, SUMMARY_FILE)
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def is_finished(workdir: str) -> bool:
  """True when the run trained all its steps (its summary says steps == total_steps)."""
  s = read_summary(workdir)
  return bool(s) and s.get('steps') is not None and s.get('steps') == s.get('total_steps')


def write_manifest(root: str, config_spec: str, sweep: str, runs: list[Run],
                   common: dict) -> str:
  """root/sweep.json: which config and sweep made the runs, and each run's overrides.

  Collect reads it to give every row its swept values. Runs of other sweeps in the same root
  keep their entries, and so do finished runs: a later call (say with other common overrides)
  does not change what they ran with.
  """
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, MANIFEST)
  manifest = read_manifest(root)
  manifest.setdefault('runs', {})
  for run in runs:
    if run.name in manifest['runs'] and is_finished(run.workdir):
      continue
    manifest['runs'][run.name] = dict(config=config_spec, sweep=sweep, common=common,
                                      overrides=run.overrides)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(manifest, f, indent=2, default=list)
  os.replace(tmp, path)
  return path


def read_manifest(root: str) -> dict:
  """root/sweep.json as written by write_manifest, or {} when there is none."""
  try:
    with open(os.path.join(root, MANIFEST)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def commands(config_spec: str, runs: list[Run], common: dict | None = None,
             launcher: tuple[str, ...] = ('python', 'launch/train.py'),
             max_steps: int | None = None) -> list[list[str]]:
  """One argv per run: the launcher, the config, the common overrides, the run's, its workdir.

  Args:
    config_spec: the --config value, e.g. 'configs/prosv.py:smollm2'.
    runs: from expand().
    common: overrides every run gets (the sweep's own keys win if both set one).
    launcher: the command that takes --config and --config.* flags: launch/train.py, or a
      launch/*.sh script (plus its own options) for a cluster.
    max_steps: forwarded as --max_steps.

  Returns:
    argv lists; shlex.join gives the shell line.
  """
  out = []
  for run in runs:
    argv = [*launcher, f'--config={config_spec}', *config_flags_of(common or {}),
            *config_flags_of(run.overrides), f'--config.workdir={run.workdir}']
    if max_steps is not None:
      argv.append(f'--max_steps={max_steps}')
    out.append(argv)
  return out


def check_common(common: dict, runs: list[Run]) -> None:
  """Common overrides may not set the workdir nor a key the sweep itself varies."""
  if 'workdir' in common:
    raise ProsvError('a sweep puts each run in <root>/<name>; drop --config.workdir and give '
                     '--root instead')
  swept = sorted({k for run in runs for k in run.overrides} & set(common))
  if swept:
    raise ProsvError(f'--config.{swept[0]} is varied by the sweep itself; drop that override '
                     'or pick another sweep')


def _model_key(config) -> tuple:
  mesh = tuple(config.mesh.to_dict().items()) if 'mesh' in config else ()
  return (config.model, config.dtype, mesh)


def _load_model(config):
  """The frozen model as Trainer would load it: on config.mesh's devices when it has one."""
  # pylint: disable=import-outside-toplevel
  if 'mesh' in config:  # each device gets its shards; nothing lands whole on device 0 first
    from prosv_jax import parallel
    return parallel.load_on_mesh(config.model, config.dtype, parallel.mesh_from_config(config))
  from prosv_jax.models.load import load_model
  return load_model(config.model, config.dtype)


def run_local(config, runs: list[Run], max_steps: int | None = None,
              retry_failed: bool = False, log=print) -> list[dict]:
  """Trains the runs one after another in this process; returns one status dict per run.

  In-process rather than one launch/train.py process per run: the frozen model is loaded once
  for all runs that share it (model and dtype), and a run that fails with a ProsvError (e.g. a
  non-finite loss at a large factor LR, a normal outcome of an LR grid) is recorded in its
  workdir's failed.json and the sweep goes on. Finished runs are skipped, interrupted ones
  resume from their last checkpoint (train_and_export does that), failed ones are skipped
  unless retry_failed. One process only: for several hosts print the commands instead
  (launch/sweep.py --print --launcher=launch/slurm.sh) so each run is its own launch.

  Args:
    config: the base config (CLI overrides applied); each run's overrides go on top.
    runs: from expand().
    max_steps: stop each run after this many steps in total (checkpointed).
    retry_failed: train runs again that failed before.
    log: where progress lines go.

  Returns:
    [{'name', 'workdir', 'status': 'done' | 'skipped' | 'stopped' | 'failed' | 'skipped-failed',
      'final_loss', 'error'}] in run order.
  """
  # Imported here so that expanding and printing sweeps needs no JAX.
  from prosv_jax.train.job import train_and_export  # pylint: disable=import-outside-toplevel
  model, model_key = None, None
  results = []
  for i, run in enumerate(runs):
    status = dict(name=run.name, workdir=run.workdir, status='', final_loss=None, error='')
    results.append(status)
    failed_path = os.path.join(run.workdir, FAILED)
    if is_finished(run.workdir):
      status.update(status='skipped', final_loss=read_summary(run.workdir).get('final_loss'))
      log(f'[{i + 1}/{len(runs)}] {run.name}: finished before, skipped')
      continue
    if os.path.exists(failed_path) and not retry_failed:
      with open(failed_path) as f:
        status.update(status='skipped-failed', error=json.load(f).get('error', ''))
      log(f'[{i + 1}/{len(runs)}] {run.name}: failed before, skipped (--retry_failed to rerun)')
      continue
    c = apply(config, {**run.overrides, 'workdir': run.workdir})
    log(f'[{i + 1}/{len(runs)}] {run.name}: training in {run.workdir}')
    try:
      key = _model_key(c)
      if model_key != key:
        model, model_key = None, None  # free the previous model before loading the next
        model, model_key = _load_model(c), key
      summary = train_and_export(c, model, max_steps=max_steps)
    except ProsvError as e:
      os.makedirs(run.workdir, exist_ok=True)
      with open(failed_path, 'w') as f:
        json.dump({'error': str(e), 'overrides': run.overrides}, f, indent=2, default=list)
      status.update(status='failed', error=str(e))
      log(f'  failed: {e}')
      continue
    if os.path.exists(failed_path):
      os.remove(failed_path)
    done = summary['steps'] == summary['total_steps']
    status.update(status='done' if done else 'stopped', final_loss=summary['final_loss'])
  return results
