"""A training job in a workdir: logs, orbax checkpoints, resume, exported vectors, summary.

With several processes every one runs the whole job (same steps, same collectives); only
process 0 writes config.json, metrics.jsonl, summary.json and the exported vectors, while orbax
checkpoints are saved and restored by all processes together (its default primary host, 0,
finalizes them), so the workdir must be on a filesystem every host sees.
"""

import contextlib
import dataclasses
import json
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from prosv_jax import artifacts, parallel
from prosv_jax.errors import ProsvError
from prosv_jax.models.load import Model
from prosv_jax.train import optim, slots
from prosv_jax.train.concepts import heldout_examples
from prosv_jax.train.config import check_config
from prosv_jax.train.trainer import Trainer
from prosv_jax.train.workdir import (CHECKPOINT_DIR, CONFIG_FILE, FAILED_FILE, METRICS_FILE,
                                     SUMMARY_FILE, VECTORS_DIR, config_differences)
from prosv_jax.vectors import SteeringVectors


def _checkpoints(workdir: str) -> ocp.CheckpointManager:
  # Synchronous saves: a checkpoint that exists is complete (orbax renames a finished temp
  # directory into place, so a kill mid-save leaves the previous checkpoint as the latest).
  options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
                               options=options)


def _restore(manager, state):
  step = manager.latest_step()
  if step is None:
    return state, 0
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # pylint: disable=broad-except
    restored = _restore_without_live(manager, step, abstract, state)
    if restored is None:
      raise ProsvError(f'cannot resume from checkpoint step {step} in {manager.directory} '
                       f'({type(e).__name__}); the config changed since it was written? '
                       f'use a new workdir or delete that folder') from e
  return restored, int(restored['step'])


def _restore_without_live(manager, step, abstract, state):
  """A checkpoint written before states had 'live' (per-slot frozen flags): every slot is
  live then, since such a run stopped at its first bad step. None if that fails too."""
  if 'live' not in abstract:
    return None
  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(
        {k: v for k, v in abstract.items() if k != 'live'}))
  except Exception:  # pylint: disable=broad-except
    return None
  return dict(restored, live=state['live'])


def _trim_metrics(path: str, last_step: int):
  """Drops log lines past the checkpoint we resume from (they will be logged again)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    keep = [line for line in f if line.strip() and json.loads(line)['step'] <= last_step]
  with open(path, 'w') as f:
    f.writelines(keep)


def _check_same_config(workdir: str, config_json: str):
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    changed = config_differences(old, json.loads(config_json))
    if changed:
      raise ProsvError(f'{workdir} holds a run with another config (differs in: '
                       f'{", ".join(changed)}); use a new --config.workdir to start afresh')


def make_workdir(workdir: str):
  """Creates the workdir, or a one-line error naming the fix (not an OSError traceback)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ProsvError(f'workdir {workdir} is a file; pass a folder path to --config.workdir')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ProsvError(f'cannot create workdir {workdir} ({e.strerror}); pass a writable folder '
                     f'path to --config.workdir') from None
  if not os.access(workdir, os.W_OK):
    raise ProsvError(f'workdir {workdir} is not writable; pass a writable folder path to '
                     f'--config.workdir')


def _finished_summary(workdir: str) -> dict | None:
  """The saved summary of a run that already finished in `workdir` (same config), else None.

  A finished workdir reruns in seconds and keeps its summary.json (train_s, throughput).
  """
  path = os.path.join(workdir, SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return None  # half-written or damaged: train (resume) and write it again
  if summary.get('steps') != summary.get('total_steps') or 'artifacts' not in summary:
    return None
  if not os.path.isdir(summary['artifacts'].get('vectors', '')):
    return None  # vectors deleted since: resume at the last step and export them again
  return dict(summary, already_finished=True)


def _check_state(state, what: str, fix: str):
  """The state's factor and directions are finite and within optim.MAX_PARAM."""
  params = parallel.to_host(state['steer'])
  factor = np.abs(np.asarray(params['factor']))
  norm = np.linalg.norm(np.asarray(params['direction']), axis=-1)
  if not (np.all(np.isfinite(factor)) and np.all(np.isfinite(norm))):
    raise ProsvError(f'{what} is not finite; check {fix}')
  if factor.max() > optim.MAX_PARAM or norm.max() > optim.MAX_PARAM:
    raise ProsvError(f'{what} has |factor| {factor.max():.3g} / direction norm '
                     f'{norm.max():.3g} over {optim.MAX_PARAM:g}; lower {fix}')


def _diverged(m, step: int, directory, cell: str | None = None) -> str:
  """The one-line error of a step whose loss, gradient or new parameters went bad; m holds
  the metrics of one cell's rows (`cell` names it in a slot run)."""
  if not np.all(m['finite']):
    what = 'non-finite loss or gradient'
  else:
    what = (f'the steering vector exploded (|factor| {np.max(np.abs(m["factor"])):.3g}, '
            f'direction norm {np.max(m["direction_norm"]):.3g}; bound {optim.MAX_PARAM:g})')
  if cell is not None:  # the other cells train on: this one keeps its last good params
    return (f'cell {cell} diverged at step {step + 1}: {what}; its last good params (step '
            f'{step}) stay frozen in {directory} and are not exported; lower its '
            f'optim.factor_lr / optim.direction_lr or steer.beta in train.slots')
  return (f'training diverged at step {step + 1}: {what}; the last good state (step {step}) '
          f'is saved in {directory}; lower optim.factor_lr / optim.direction_lr or steer.beta '
          f'and rerun with a new --config.workdir')


@dataclasses.dataclass
class Trained:
  """What a job hands back: its summary, its exported vectors and the model it trained on."""
  summary: dict
  vectors: SteeringVectors | None  # None when max_steps stopped it before the end
  model: Model | None  # the frozen model (on the config's mesh, if any); None when the
  # workdir already held the finished run and nothing was loaded
  # A slot run (train.slots): one per cell in order, each like a separate run's (its model
  # None); `summary` is then the run's: steps and one {name, workdir, status, final_loss,
  # error} per cell, and `vectors` is None. A failed cell's summary is {'error', 'step'}.
  cells: list['Trained'] | None = None


def train(config, model: Model | None = None, max_steps: int | None = None) -> Trained:
  """Runs (or resumes) the job described by `config`; returns its summary, vectors and model.

  max_steps stops early after that many steps in total (checkpointed), for tests and demos.
  With several processes every process must call it with the same config.

  With train.slots the job trains every grid cell as slots of one step (see
  prosv_jax.train.slots) and each cell's workdir gets what its separate run would write;
  the run's own workdir keeps config.json, the checkpoints and a summary.json of the cells. A
  cell that diverges is frozen at its last good params, gets a failed.json (the error its
  separate run would stop with) and no vectors, and the other cells train on; the job stops
  with that error when no cell is left.
  """
  main = parallel.is_main_process()
  workdir = config.workdir
  check_config(config)  # cheap: bad values fail before the workdir or the model is touched
  config_json = _config_json(config)
  make_workdir(workdir)
  _check_same_config(workdir, config_json)
  grid = bool(config.train.get('slots'))
  cells = slots.cells(config)
  if grid:
    for cell in cells:  # a cell's folder is its separate run's: refuse one of another config
      make_workdir(cell.workdir)
      _check_same_config(cell.workdir, _config_json(cell.config))
    finished = _finished_grid(workdir, cells, model)
  else:
    finished = _finished_summary(workdir)
    finished = finished and Trained(finished,
                                    artifacts.load_vectors(finished['artifacts']['vectors']),
                                    model)
  if finished is not None:
    if main:
      print(f'{workdir} already holds this finished run (summary.json); nothing to train. Use '
            f'a new --config.workdir to train again')
    return finished
  trainer = Trainer(config, model)
  init = trainer.init_state()
  _check_state(init, 'the initial state',
               'steer.beta / steer.direction_scale' + (' of train.slots' if grid else ''))
  if main:
    # Written only once every check passed: a failed start leaves no config that would
    # refuse the corrected rerun as "another config".
    _write_config(workdir, config_json)
    for cell in cells if grid else ():
      _write_config(cell.workdir, _config_json(cell.config))

  manager = _checkpoints(workdir)
  state, start = _restore(manager, init)
  # Cells finished before (their own run, or this one before an interrupted export) train
  # along but are neither logged nor exported again.
  active = [not grid or _finished_summary(cell.workdir) is None for cell in cells]
  paths = [os.path.join(cell.workdir, METRICS_FILE) for cell in cells]
  if main:
    for path, on in zip(paths, active):
      if on:
        _trim_metrics(path, start)
  if start and main:
    print(f'resuming from step {start} of {trainer.total_steps} ({manager.directory})')

  setup_s = trainer.prepare()

  every = int(config.train.checkpoint_every)
  stop = trainer.total_steps if max_steps is None else min(max_steps, trainer.total_steps)
  k = trainer.num_concepts
  rows = [slice(c * k, (c + 1) * k) for c in range(len(cells))]  # each cell's param rows
  live = np.asarray(parallel.to_host(state['live']))
  failures = {}  # cell -> its failed.json content, for the cells frozen in this session
  tokens = 0
  t0 = time.time()
  bar = tqdm(range(start, stop), initial=start, total=trainer.total_steps, unit='step',
             desc=f'{config.positions} L{trainer.layer}', dynamic_ncols=True, disable=not main)
  with contextlib.ExitStack() as files:
    logs = [files.enter_context(open(path, 'a')) if main and on else None
            for path, on in zip(paths, active)]
    def finish(step, m, batch_tokens):
      """The host's part of step `step`: divergence, progress, log lines."""
      nonlocal live, tokens
      m = parallel.to_host(m)
      error = ''
      for c, cell in enumerate(cells):
        if live[rows[c]].all() and not m['live'][rows[c]].all():
          # The step left this cell's rows as they were: the last good state.
          error = _diverged(_rows(m, rows[c]), step, manager.directory, cell.name if grid
                            else None)
          failures[c] = {'error': error, 'step': step}
          if grid and main:
            print(f'\n{error}', flush=True)
            _write_failed(cell, error, step)
      live = m['live']
      if not live.any():
        # Once no row is live every later step keeps the state: the last good one.
        manager.save(step, args=ocp.args.StandardSave(state), force=True)
        manager.wait_until_finished()
        bar.close()
        raise ProsvError(error if not grid else
                         f'every cell of train.slots diverged, the last at step {step + 1}; '
                         f'each cell\'s failed.json says how; lower their LRs or beta')
      tokens += batch_tokens
      loss = float(np.mean(m['loss'][live]))
      bar.set_postfix(loss=f'{loss:.3f}', factor=f'{float(np.mean(m["factor"][live])):.2f}')
      if main and ((step + 1) % int(config.train.log_every) == 0 or step + 1 == stop):
        for c, log in enumerate(logs):
          if log is not None and live[rows[c]].all():
            log.write(json.dumps(_log_line(_rows(m, rows[c]), step)) + '\n')
            log.flush()

    # The host reads a step's metrics only after the next step is queued, so the device
    # never waits on the host: it builds batch s + 1 while step s runs.
    pending = None
    for step in bar:
      state, m, batch_tokens = trainer.step(state, step)
      if pending is not None:
        finish(*pending)
      pending = (step, m, batch_tokens)
      if (step + 1) % every == 0 or step + 1 == stop:
        finish(*pending)  # a checkpoint holds no step whose metrics were not checked
        pending = None
        manager.save(step + 1, args=ocp.args.StandardSave(state), force=True)
    if pending is not None:
      finish(*pending)
  train_s = time.time() - t0
  manager.wait_until_finished()
  done = int(parallel.to_host(state['step']))
  params = parallel.to_host(state['steer'])  # every process: a gather when they are split
  live = np.asarray(parallel.to_host(state['live']))
  run = _RunFigures(done, train_s, setup_s, tokens, start, trainer.residual_rms()[1],
                    parallel.to_host(trainer.init_params()),
                    heldout_examples(trainer.config, trainer.model.tokenizer))
  results = []
  for c, cell in enumerate(cells):
    if not live[rows[c]].all():  # frozen in this session, or before it was resumed
      results.append(Trained(failures.get(c) or _read_failed(cell.workdir), None, None))
    elif not active[c]:
      results.append(_finished_cell(cell))
    else:
      results.append(_finish_cell(trainer, cell, _rows(params, rows[c]), rows[c], paths[c], run,
                                  grid_workdir=workdir if grid else None))
  if grid:
    summary = _grid_summary(trainer, cells, results, run)
    if main:
      with open(os.path.join(workdir, SUMMARY_FILE), 'w') as f:
        json.dump(summary, f, indent=2)
  parallel.barrier('prosv_jax: exported')  # the others may read what process 0 wrote
  if not grid:
    return Trained(results[0].summary, results[0].vectors, trainer.model)
  return Trained(summary, None, trainer.model, cells=results)


@dataclasses.dataclass
class _RunFigures:
  """What every cell's summary shares: the run's progress and times, and what they are
  measured against."""
  done: int  # steps trained in total
  train_s: float  # this session's training seconds
  setup_s: float  # building the bank (and SimPO's reference)
  tokens: int  # real tokens this session, all slots
  start: int  # the step this session resumed from
  residual_rms: float  # Trainer.residual_rms, pooled over the concepts
  init: dict  # every slot's initial params (numpy)
  held: list | None  # held-out examples per concept, None without an eval split


def _rows(tree, rows: slice):
  """The rows `rows` of every [S, ...] leaf (a cell's part of the params or metrics)."""
  return {key: np.asarray(value)[rows] for key, value in tree.items()}


def _log_line(m, step: int) -> dict:
  """One metrics.jsonl line of one cell's rows."""
  return {'step': step + 1, 'loss': float(np.mean(m['loss'])),
          'loss_per_concept': np.round(m['loss'], 5).tolist(),
          'factor': np.round(m['factor'], 5).tolist(),
          'direction_norm': np.round(m['direction_norm'], 5).tolist(),
          'direction_grad_norm': np.round(m['direction_grad_norm'], 5).tolist()}


def _finish_cell(trainer, cell, params, rows, metrics_path, run, grid_workdir) -> Trained:
  """One cell's summary.json, and its vectors when it trained every step."""
  main = parallel.is_main_process()
  summary = _summary(trainer, cell.config, params, _rows(run.init, rows), metrics_path, run)
  if grid_workdir is not None:  # its times and throughput are the shared run's
    summary['slot_run'] = {'workdir': grid_workdir, 'cells': len(trainer.cells)}
  vectors = None
  if run.done == trainer.total_steps:  # every process holds the vectors; process 0 writes them
    vectors = _vectors(trainer, params, cell.config, summary)
    summary['artifacts'] = _export(trainer, vectors, cell.config, write=main)
  if main:
    with open(os.path.join(cell.workdir, SUMMARY_FILE), 'w') as f:
      json.dump(summary, f, indent=2)
    failed = os.path.join(cell.workdir, FAILED_FILE)
    if grid_workdir is not None and vectors is not None and os.path.exists(failed):
      os.remove(failed)  # an earlier attempt's failure: this one finished
  return Trained(summary, vectors, None)


def _finished_cell(cell) -> Trained:
  summary = _finished_summary(cell.workdir)
  return Trained(summary, artifacts.load_vectors(summary['artifacts']['vectors']), None)


def _grid_summary(trainer, cells, results, run) -> dict:
  """The slot run's own summary.json: its steps and times, and each cell's outcome."""
  entries = []
  for cell, result in zip(cells, results):
    failed = 'error' in result.summary and 'final_loss' not in result.summary
    if failed:
      status = 'failed'
    elif result.summary.get('steps') == result.summary.get('total_steps'):
      status = 'done'
    else:
      status = 'stopped'
    entries.append({'name': cell.name, 'workdir': cell.workdir, 'status': status,
                    'final_loss': result.summary.get('final_loss'),
                    'error': result.summary.get('error', '')})
  ran = run.done - run.start
  return {'steps': run.done, 'total_steps': trainer.total_steps, 'cells': entries,
          'slots': trainer.num_slots, 'setup_s': round(run.setup_s, 2),
          'train_s': round(run.train_s, 2),
          'steps_per_s': round(ran / run.train_s, 4) if ran and run.train_s else None,
          'tokens_per_s': round(run.tokens / run.train_s, 1) if ran and run.train_s else None}


def _finished_grid(workdir: str, cells, model) -> Trained | None:
  """The finished slot run in `workdir` (every cell exported or failed), else None."""
  path = os.path.join(workdir, SUMMARY_FILE)
  try:
    with open(path) as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return None
  if summary.get('steps') != summary.get('total_steps') or 'cells' not in summary:
    return None
  results = []
  for cell, entry in zip(cells, summary['cells']):
    if entry.get('status') == 'failed':
      results.append(Trained(_read_failed(cell.workdir), None, None))
      continue
    if _finished_summary(cell.workdir) is None:
      return None  # not exported (yet, or deleted since): resume and export it
    results.append(_finished_cell(cell))
  return Trained(dict(summary, already_finished=True), None, model, cells=results)


def _write_failed(cell, error: str, step: int) -> None:
  """A diverged cell's failed.json, as a sweep records a run that stopped with an error."""
  with open(os.path.join(cell.workdir, FAILED_FILE), 'w') as f:
    json.dump({'error': error, 'step': step, 'overrides': cell.values}, f, indent=2)


def _read_failed(workdir: str) -> dict:
  try:
    with open(os.path.join(workdir, FAILED_FILE)) as f:
      failed = json.load(f)
  except (OSError, ValueError):
    failed = {}
  return {'error': failed.get('error', 'diverged'), 'step': failed.get('step')}


def _config_json(config) -> str:
  return config.to_json_best_effort(sort_keys=True)


def _write_config(workdir: str, config_json: str) -> None:
  """config.json, replaced whole, so another process never reads half a file."""
  tmp = os.path.join(workdir, f'{CONFIG_FILE}.{os.getpid()}.tmp')
  with open(tmp, 'w') as f:
    f.write(config_json)
  os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


def train_and_export(config, model: Model | None = None, max_steps: int | None = None) -> dict:
  """train(), returning only the summary dict (what sweeps and tests look at)."""
  return train(config, model, max_steps).summary


def _last_epoch_loss(metrics_path: str, steps_per_epoch: int, done: int, num_concepts: int):
  """Mean per-concept loss of the last epoch, from process 0's log, known to every process."""
  loss = None
  if parallel.is_main_process():
    with open(metrics_path) as f:
      lines = [json.loads(line) for line in f if line.strip()]
    recent = [m['loss_per_concept'] for m in lines if m['step'] > done - steps_per_epoch]
    loss = np.mean(recent, axis=0).tolist() if recent else None
  if jax.process_count() == 1:
    return loss
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  # Only process 0 has the log; the others get its numbers (all call this, it is a collective).
  known, values = multihost_utils.broadcast_one_to_all(  # same shapes on every process
      (np.asarray(loss is not None), np.asarray(loss or [0.0] * num_concepts, np.float64)))
  return values.tolist() if known else None


def _summary(trainer, config, params, init, metrics_path, run) -> dict:
  """One cell's summary dict (config: the cell's); every process computes it."""
  ran = run.done - run.start
  # The LRs Adam used, after the width rule (optim.base_width): what a width study plots.
  factor_lr, direction_lr = optim.scaled_lrs(config.optim, trainer.width)
  return {
      'model': config.model, 'layer': trainer.layer, 'positions': config.positions,
      'width': trainer.width, 'loss_kind': config.train.loss,
      'concept_ids': trainer.concepts.ids, 'concepts': trainer.concepts.descriptions,
      'steps': run.done, 'total_steps': trainer.total_steps,
      'final_loss': _last_epoch_loss(metrics_path, trainer.steps_per_epoch, run.done,
                                     trainer.num_concepts),
      'factor': np.asarray(params['factor']).tolist(),
      'direction_norm': np.linalg.norm(params['direction'], axis=-1).tolist(),
      'residual_rms': run.residual_rms,
      'factor_lr': factor_lr, 'direction_lr': direction_lr,
      # steer.init: beta and factor_lr are in these units per concept (Adam's factor LR is
      # factor_lr x unit); 1 under 'width', residual RMS / steer.residual_ref under 'residual'.
      'init_rule': config.steer.get('init', 'width'),
      'factor_unit': _rounded(trainer.factor_units()[:trainer.num_concepts]),
      'hidden_cache': trainer.bank is not None,
      'packed': trainer.packed,
      'slots_per_token': (None if trainer.slots_per_token is None
                          else round(trainer.slots_per_token, 4)),
      'setup_s': round(run.setup_s, 2), 'train_s': round(run.train_s, 2),
      'steps_per_s': round(ran / run.train_s, 4) if ran and run.train_s else None,
      'tokens_per_s': round(run.tokens / run.train_s, 1) if ran and run.train_s else None,
      **_diagnostics(trainer, params, init, run.held),
  }


def _vectors(trainer: Trainer, params, config, summary) -> SteeringVectors:
  """The trained set with everything needed to use it: layer, positions, concepts, template."""
  return SteeringVectors.create(
      params['factor'], params['direction'], layer=trainer.layer, positions=config.positions,
      concepts=[{'concept_id': cid, 'description': desc} for cid, desc
                in zip(trainer.concepts.ids, trainer.concepts.descriptions)],
      model=config.model, chat_template=config.chat_template,
      training=json.loads(config.to_json_best_effort()),
      metrics={'final_loss': summary['final_loss']})


def _diagnostics(trainer: Trainer, params, init, held) -> dict:
  """Per-concept lists of one cell (params and init [K]): how the vector moved from its
  init, its loss against the unsteered model's on the training rows and on held-out positives
  (`held`; None without an eval split), and its edit's RMS over the residual RMS at the
  steered positions."""
  v, v0 = np.asarray(params['direction'], np.float64), np.asarray(init['direction'], np.float64)
  norm, norm0 = np.linalg.norm(v, axis=-1), np.linalg.norm(v0, axis=-1)
  train = trainer.evaluate(params, [e for per in trainer.concepts.examples for e in per])
  if held is None:
    held, each = {'loss': None, 'unsteered_loss': None}, None
  else:
    held, each = _heldout(trainer, params, held)
  edit_rms = np.abs(np.asarray(params['factor'], np.float64)) * norm / np.sqrt(trainer.width)
  return {
      'direction_cosine_to_init': _rounded(np.sum(v * v0, -1) / (norm * norm0)),
      'direction_moved': _rounded(np.linalg.norm(v - v0, axis=-1) / norm0),  # ||v-v0||/||v0||
      'train_loss': _rounded(train['loss']),
      'train_loss_unsteered': _rounded(train['unsteered_loss']),
      'heldout_loss': _rounded(held['loss']),
      'heldout_loss_unsteered': _rounded(held['unsteered_loss']),
      'heldout_examples': each,
      'steered_residual_rms': _rounded(train['residual_rms']),
      'edit_rms_ratio': _rounded([e / r if r else None
                                  for e, r in zip(edit_rms, train['residual_rms'])]),
  }


def _heldout(trainer: Trainer, params, held) -> tuple[dict, dict]:
  """trainer.evaluate on the held-out examples, and their per-example figures (concept index
  into concept_ids, response tokens, losses): what a paired comparison of two cells resamples
  (prosv_jax.study.heldout_difference)."""
  examples = [e for per in held for e in per]
  out = trainer.evaluate(params, examples)
  return out, {'concept': [e.concept for e in examples], 'tokens': out['example_tokens'],
               'loss': _rounded(out['example_loss']),
               'unsteered_loss': _rounded(out['example_unsteered_loss'])}


def heldout_figures(workdir: str, model: Model | None = None) -> dict:
  """A finished run's held-out figures measured again from its exported vectors, as its
  summary states them (heldout_loss, heldout_loss_unsteered, heldout_examples): for runs from
  before summaries kept per-example figures. `model` must be the run's (config.model)."""
  from prosv_jax import study, sweep  # pylint: disable=import-outside-toplevel
  from prosv_jax.train.config import base_config  # pylint: disable=import-outside-toplevel
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    flat = study.flatten(json.load(f))
  config = sweep.apply(base_config(), {k: v for k, v in flat.items() if k != 'workdir'})
  trainer = Trainer(config, model)
  held = heldout_examples(config, trainer.model.tokenizer)
  if held is None:
    raise ProsvError(f'{workdir} trained on {config.data.source}, which has no held-out split; '
                     'only runs on an AxBench source have held-out figures')
  params = artifacts.load_vectors(os.path.join(workdir, VECTORS_DIR)).params()
  out, each = _heldout(trainer, params, held)
  return {'heldout_loss': _rounded(out['loss']),
          'heldout_loss_unsteered': _rounded(out['unsteered_loss']), 'heldout_examples': each}


def _rounded(values, digits: int = 6):
  """A JSON list of floats (None stays None); None for None."""
  if values is None:
    return None
  return [None if x is None else round(float(x), digits) for x in values]


def _export(trainer: Trainer, vectors: SteeringVectors, config, write: bool = True) -> dict:
  """Writes the vectors and control vectors (when `write`); returns where they are."""
  folder = os.path.join(config.workdir, VECTORS_DIR)
  if not write:  # process 0 exports; the others report the same paths
    return {'vectors': folder,
            'control_vectors': os.path.join(config.workdir, 'control_vector_concept*.gguf')}
  out = {'vectors': vectors.save(folder)}
  try:
    for k, cid in enumerate(trainer.concepts.ids):
      path = os.path.join(config.workdir, f'control_vector_concept{cid}.gguf')
      # Raw params: no prompt-only warning per run; the README says these suit 'all' positions.
      artifacts.export_control_vector(path, vectors.params(), trainer.layer, concept=k,
                                      model_hint=trainer.model.cfg.family)
    out['control_vectors'] = os.path.join(config.workdir, 'control_vector_concept*.gguf')
  except ProsvError as e:  # e.g. llama.cpp cannot steer block 0
    out['control_vectors'] = f'not exported: {e}'
  return out
