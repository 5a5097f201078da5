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
import hashlib
import itertools
import json
import os
import re
import shutil

from prosv_jax.errors import ProsvError
from prosv_jax.train.slots import SLOT_KEYS
from prosv_jax.train.workdir import (CHECKPOINT_DIR, CONFIG_FILE, FAILED_FILE, SUMMARY_FILE,
                                     config_differences)

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
SLOTS_DIR = '_slots'  # under a sweep root: the slot runs' own workdirs (config, checkpoints)


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


def part(runs: list[Run], spec: str) -> list[Run]:
  """Piece i of n of `runs` (spec 'i/n', 1-based): n contiguous pieces whose sizes differ by
  at most one, so a sweep too long for one sitting runs as n commands. Contiguous keeps a
  grid's fastest axis together (beta x factor LR in 3 parts: a beta per part, its LRs one slot
  run)."""
  m = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', str(spec))
  if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
    raise ProsvError(f'--part={spec!r} does not parse; give i/n with 1 <= i <= n, e.g. 2/3')
  i, n = int(m.group(1)), int(m.group(2))
  if n > len(runs):
    raise ProsvError(f'--part={spec}: the sweep has {len(runs)} runs, fewer than {n} parts; '
                     f'use n <= {len(runs)}')
  size, extra = divmod(len(runs), n)
  start = (i - 1) * size + min(i - 1, extra)
  return runs[start:start + size + (i <= extra)]


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


def write_summary(workdir: str, summary: dict) -> None:
  """Writes the run's summary.json whole (a temporary file moved into place), so a reader never
  takes a half-written one for a finished run."""
  tmp = os.path.join(workdir, f'{SUMMARY_FILE}.{os.getpid()}.tmp')
  with open(tmp, 'w') as f:
    json.dump(summary, f, indent=2)
  os.replace(tmp, os.path.join(workdir, SUMMARY_FILE))


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


def slot_groups(runs: list[Run]) -> list[list[Run]]:
  """The runs grouped by everything but the slot keys (prosv_jax.train.slots.SLOT_KEYS), in
  order of first appearance: the runs of a group differ only in beta, direction scale, LRs
  and seed, so they can train as the cells of one slot run."""
  groups = {}
  for run in runs:
    rest = {k: v for k, v in run.overrides.items() if k not in SLOT_KEYS}
    groups.setdefault(json.dumps(rest, sort_keys=True, default=list), []).append(run)
  return list(groups.values())


def slot_workdir(group: list[Run]) -> str:
  """Where a group's slot run keeps its config and checkpoints: <root>/_slots/<first>+<n-1>-<id>,
  the same folder whenever the same runs are grouped, so a rerun resumes it."""
  cells = [(run.name, run.workdir, run.overrides) for run in group]
  digest = hashlib.sha1(json.dumps(cells, sort_keys=True, default=list).encode()).hexdigest()
  return os.path.join(os.path.dirname(group[0].workdir), SLOTS_DIR,
                      f'{group[0].name}+{len(group) - 1}-{digest[:8]}')


def slot_config(config, group: list[Run]):
  """The config of a group's slot run: its shared overrides, one cell per run (train.slots as
  JSON, each cell with the run's name and workdir)."""
  shared = {k: v for k, v in group[0].overrides.items() if k not in SLOT_KEYS}
  cells = [{**{k: v for k, v in run.overrides.items() if k in SLOT_KEYS}, 'name': run.name,
            'workdir': run.workdir} for run in group]
  return apply(config, {**shared, 'train.slots': json.dumps(cells),
                        'workdir': slot_workdir(group)})


def _finished_configs(roots) -> list[tuple[str, dict]]:
  """(workdir, config.json) of every finished run directly under `roots`."""
  found = []
  for root in roots:
    if not os.path.isdir(root):
      raise ProsvError(f'--reuse root {root} is not a folder; name a sweep root that exists')
    for name in sorted(os.listdir(root)):
      workdir = os.path.join(root, name)
      try:
        with open(os.path.join(workdir, CONFIG_FILE)) as f:
          config = json.load(f)
      except (OSError, ValueError):
        continue
      if is_finished(workdir) and not (config.get('train') or {}).get('slots'):
        found.append((workdir, config))
  return found


def _copy_run(src: str, src_config: dict, run: Run) -> None:
  """`src`'s results as `run`'s: every file but checkpoints, its paths rewritten to
  run.workdir, summary.json last (with reused_from) so the run reads finished only when whole."""
  dst = run.workdir
  shutil.copytree(src, dst, dirs_exist_ok=True,
                  ignore=shutil.ignore_patterns(CHECKPOINT_DIR, FAILED_FILE, SUMMARY_FILE))
  old_path = src_config.get('workdir') or src
  for folder, _, files in os.walk(dst):
    for name in files:
      path = os.path.join(folder, name)
      if name.endswith('.json'):
        with open(path) as f:
          text = f.read()
        if old_path in text:
          with open(path, 'w') as f:
            f.write(text.replace(old_path, dst))
  with open(os.path.join(src, SUMMARY_FILE)) as f:
    summary = json.loads(f.read().replace(old_path, dst))
  summary['reused_from'] = src
  write_summary(dst, summary)


def reuse_finished(config, runs: list[Run], roots, log=print) -> list[str]:
  """Gives each unfinished run whose config equals that of a finished run under `roots` (what
  it trains: config_differences) that run's results, copied, not trained again; returns the
  names of the runs so filled. Training is deterministic, so the copy is what the run would
  write: a study's direction grid holds its (beta, LR) grid's chosen cell, and its positions
  grid the direction grid's, and each costs a full run on a CPU."""
  candidates = _finished_configs(roots) if roots else []
  reused = []
  for run in runs:
    if not candidates or is_finished(run.workdir):
      continue
    want = json.loads(apply(config, {**run.overrides, 'workdir': run.workdir})
                      .to_json_best_effort(sort_keys=True))
    for src, src_config in candidates:
      if os.path.abspath(src) != os.path.abspath(run.workdir) and not config_differences(
          src_config, want):
        os.makedirs(run.workdir, exist_ok=True)
        _copy_run(src, src_config, run)
        log(f'{run.name}: the same config as finished run {src}: its results copied, '
            'not trained again')
        reused.append(run.name)
        break
  return reused


def run_local(config, runs: list[Run], max_steps: int | None = None,
              retry_failed: bool = False, log=print, separate: bool = False) -> list[dict]:
  """Trains the runs in this process; returns one status dict per run.

  In-process rather than one launch/train.py process per run: the frozen model is loaded once
  for all runs that share it (model and dtype), and a run that fails with a ProsvError (e.g. a
  non-finite loss at a large factor LR, a normal outcome of an LR grid) is recorded in its
  workdir's failed.json and the sweep goes on. Finished runs are skipped, interrupted ones
  resume from their last checkpoint (train_and_export does that), failed ones are skipped
  unless retry_failed. One process only: for several hosts print the commands instead
  (launch/sweep.py --print --launcher=launch/slurm.sh) so each run is its own launch.

  Runs that differ only in slot keys (slot_groups) train together as the cells of one slot
  run (train.slots, in <root>/_slots/...): one compiled step shares the bank and every read
  of the frozen weights, and each run's workdir gets what its separate run would write (each
  cell equals it), so skipping, collecting and scoring work as before. A cell that diverges
  gets its failed.json and the others go on. separate=True trains every run on its own.

  Args:
    config: the base config (CLI overrides applied); each run's overrides go on top.
    runs: from expand().
    max_steps: stop each run after this many steps in total (checkpointed).
    retry_failed: train runs again that failed before.
    log: where progress lines go.
    separate: never group runs into slot runs.

  Returns:
    [{'name', 'workdir', 'status': 'done' | 'skipped' | 'stopped' | 'failed' | 'skipped-failed',
      'final_loss', 'error'}] in run order.
  """
  loader = _ModelLoader()
  results = {run.name: dict(name=run.name, workdir=run.workdir, status='', final_loss=None,
                            error='') for run in runs}
  order = {run.name: i for i, run in enumerate(runs)}
  together = not separate and not config.train.get('slots') and not any(
      'train.slots' in run.overrides for run in runs)
  if not together:
    for i, run in enumerate(runs):
      tag, status = f'[{i + 1}/{len(runs)}]', results[run.name]
      if _finished(run, status, log, tag):
        continue
      if _failed_before(run) and not retry_failed:
        _skip_failed(run, status, log, tag)
        continue
      _run_one(config, run, status, max_steps, loader, log, tag)
    return [results[run.name] for run in runs]
  # A run whose config is bad fails alone (as its separate run would), not its whole group.
  valid = [run for run in runs if _valid(config, run, results[run.name], retry_failed, log,
                                         f'[{order[run.name] + 1}/{len(runs)}]')]
  for group in slot_groups(valid):
    tags = {run.name: f'[{order[run.name] + 1}/{len(runs)}]' for run in group}
    unfinished = [run for run in group if not _finished(run, results[run.name], log,
                                                        tags[run.name])]
    retried = [run for run in unfinished if retry_failed or not _failed_before(run)]
    for run in unfinished:
      if run not in retried:
        _skip_failed(run, results[run.name], log, tags[run.name])
    if not retried:
      continue
    if len(group) == 1:
      _run_one(config, group[0], results[group[0].name], max_steps, loader, log,
               tags[group[0].name])
    else:
      # The whole group is the slot run, not only the runs it has left to train, so a rerun
      # after a kill groups the same cells and resumes it. Finished cells train along
      # unexported; cells that failed before train along too (and fail again, the runs being
      # deterministic) but stay reported as skipped unless retried.
      _run_slots(config, group, retried, results, max_steps, loader, log)
  return [results[run.name] for run in runs]


def _valid(config, run: Run, status: dict, retry_failed: bool, log, tag: str) -> bool:
  """False (status filled in, failed.json written) when the run's config fails its checks."""
  from prosv_jax.train.config import check_config  # pylint: disable=import-outside-toplevel
  try:
    check_config(apply(config, {**run.overrides, 'workdir': run.workdir}))
    return True
  except ProsvError as e:
    if _finished(run, status, log, tag):  # it ran under older checks: nothing to train
      return False
    if _failed_before(run) and not retry_failed:
      _skip_failed(run, status, log, tag)
      return False
    log(f'{tag} {run.name}: failed: {e}')
    _record_failure(run, str(e))
    status.update(status='failed', error=str(e))
    return False


def _finished(run: Run, status: dict, log, tag: str) -> bool:
  """True (status filled in) for a run that finished before."""
  if not is_finished(run.workdir):
    return False
  status.update(status='skipped', final_loss=read_summary(run.workdir).get('final_loss'))
  log(f'{tag} {run.name}: finished before, skipped')
  return True


def _failed_before(run: Run) -> bool:
  return os.path.exists(os.path.join(run.workdir, FAILED))


def _skip_failed(run: Run, status: dict, log, tag: str) -> None:
  with open(os.path.join(run.workdir, FAILED)) as f:
    status.update(status='skipped-failed', error=json.load(f).get('error', ''))
  log(f'{tag} {run.name}: failed before, skipped (--retry_failed to rerun)')


class _ModelLoader:
  """The frozen model of the last config, loaded again only when model or dtype change."""

  def __init__(self):
    self.model, self.key = None, None

  def __call__(self, config):
    key = _model_key(config)
    if self.key != key:
      self.model, self.key = None, None  # free the previous model before loading the next
      self.model, self.key = _load_model(config), key
    return self.model


def _record_failure(run: Run, error: str) -> None:
  os.makedirs(run.workdir, exist_ok=True)
  with open(os.path.join(run.workdir, FAILED), 'w') as f:
    json.dump({'error': error, 'overrides': run.overrides}, f, indent=2, default=list)


def _run_one(config, run: Run, status: dict, max_steps, loader, log, tag: str) -> None:
  # Imported here so that expanding and printing sweeps needs no JAX.
  from prosv_jax.train.job import train_and_export  # pylint: disable=import-outside-toplevel
  c = apply(config, {**run.overrides, 'workdir': run.workdir})
  log(f'{tag} {run.name}: training in {run.workdir}')
  try:
    summary = train_and_export(c, loader(c), max_steps=max_steps)
  except ProsvError as e:
    _record_failure(run, str(e))
    status.update(status='failed', error=str(e))
    log(f'  failed: {e}')
    return
  failed_path = os.path.join(run.workdir, FAILED)
  if os.path.exists(failed_path):
    os.remove(failed_path)
  done = summary['steps'] == summary['total_steps']
  status.update(status='done' if done else 'stopped', final_loss=summary['final_loss'])


def _run_slots(config, group: list[Run], todo: list[Run], results: dict, max_steps, loader,
               log) -> None:
  """One slot run for the group; each unfinished run's status from its cell."""
  from prosv_jax.train.job import train  # pylint: disable=import-outside-toplevel
  c = slot_config(config, group)
  log(f'{", ".join(r.name for r in todo)}: training {len(group)} runs as slots of one step '
      f'in {c.workdir}')
  try:
    trained = train(c, loader(c), max_steps=max_steps)
  except ProsvError as e:
    for run in todo:
      failed = _read_failed(run)
      if 'step' not in failed:  # a cell's own record (it diverged: the job wrote it) stays
        _record_failure(run, str(e))
        failed = {'error': str(e)}
      results[run.name].update(status='failed', error=failed.get('error', ''))
    log(f'  failed: {e}')
    return
  cells = {cell['name']: cell for cell in trained.summary['cells']}
  for run in todo:
    cell = cells[run.name]
    results[run.name].update(status=cell['status'], final_loss=cell['final_loss'],
                             error=cell['error'])
    if cell['status'] == 'failed':
      log(f'  {run.name} failed: {cell["error"]}')


def _read_failed(run: Run) -> dict:
  try:
    with open(os.path.join(run.workdir, FAILED)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}
