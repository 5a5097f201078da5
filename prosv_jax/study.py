"""Sweep studies: one table row per run (config, summary, steering score) and its plots.

collect(root) walks a sweep root (launch/sweep.py), reads each run's config.json,
summary.json, failed.json and, where an evaluation sits in the run's folder or its eval/
subfolder, results.json. Columns: `run`, `status`, dotted config keys (`steer.beta`,
`optim.factor_lr` as configured, i.e. at optim.base_width), summary figures (`final_loss`,
`factor`, `direction_norm` as means over the run's concepts, `factor_lr` / `direction_lr` as
Adam used them after the width rule, `width`, `layer`, `residual_rms`, `edit_rms_ratio`), and
`score` (AxBench harmonic mean of the run's method) plus `score_<method>` for every method the
evaluation holds. Runs whose summary keeps per-example held-out losses (heldout_examples) also
get `heldout_vs_best` and its interval `heldout_vs_best_lo` / `_hi`: their held-out loss minus
the selected run's, paired on the same examples (heldout_difference).
"""

import csv
import json
import math
import os

import numpy as np

from prosv_jax import sweep
from prosv_jax.eval.scores import percentile_interval
from prosv_jax.train.workdir import CHECKPOINT_DIR, CONFIG_FILE, SUMMARY_FILE

# Config keys every row carries, swept or not: what the plots group and label by.
STUDY_KEYS = ('model', 'layer', 'positions', 'steer.beta', 'steer.direction_scale',
              'optim.factor_lr', 'optim.direction_lr', 'optim.base_width',
              'optim.factor_lr_width_exponent', 'optim.direction_lr_width_exponent',
              'train.loss', 'train.epochs', 'train.batch_size', 'data.concepts', 'steer.init',
              'steer.residual_ref')
SUMMARY_KEYS = ('steps', 'total_steps', 'width', 'final_loss', 'heldout_loss',
                'heldout_gain', 'train_loss', 'factor', 'direction_norm', 'direction_moved',
                'direction_cosine_to_init', 'residual_rms', 'factor_unit', 'edit_rms_ratio',
                'factor_lr', 'direction_lr', 'concepts', 'train_s', 'steps_per_s',
                'reused_from', 'heldout_vs_best', 'heldout_vs_best_lo', 'heldout_vs_best_hi')
# What a study selects by: the steered loss on held-out positives of the trained concepts
# (AxBench's latent_eval_data), which no evaluation of steering reads.
SELECT_BY = 'heldout_loss'
RESULTS = 'results.json'


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def flatten(tree: dict, prefix: str = '') -> dict:
  """{'steer': {'beta': 4}} -> {'steer.beta': 4}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _mean(values):
  if values is None:
    return None
  values = values if isinstance(values, list) else [values]
  values = [float(v) for v in values if v is not None]
  return sum(values) / len(values) if values else None


def _cell(value):
  """A CSV cell: tuples and lists as '0,1', floats as they are."""
  if isinstance(value, (list, tuple)):
    return ','.join(str(v) for v in value)
  return value


def _method_of(positions: str | None) -> str:
  return 'fssv' if positions == 'all' else 'prosv'


def _results(folder: str) -> tuple[str | None, dict | None]:
  """(path, content) of the evaluation results.json in a run's folder or its eval/."""
  for path in (os.path.join(folder, RESULTS), os.path.join(folder, 'eval', RESULTS)):
    results = _read_json(path)
    if results and 'methods' in results:
      return path, results
  return None, None


def _own_method(results: dict, positions: str | None) -> str | None:
  """The run's own method among an evaluation's: by its positions, else the one steered."""
  own = _method_of(positions)
  steered = [m for m in results['methods'] if m in ('prosv', 'fssv')]
  return own if own in results['methods'] else (steered[0] if len(steered) == 1 else None)


def _scores(folder: str, positions: str | None) -> dict:
  """score (the run's own method) and score_<method> from an evaluation's results.json."""
  path, results = _results(folder)
  if results is None:
    return {}
  out = {}
  for method, value in results['methods'].items():
    out[f'score_{method}'] = value.get('mean', {}).get('harmonic')
  pick = _own_method(results, positions)
  out['score'] = out.get(f'score_{pick}') if pick else None
  out['score_source'] = os.path.relpath(path, folder)
  return out


def _heldout_changes(summary: dict) -> list | None:
  """Held-out loss minus the unsteered model's, per concept (< 0: the vector helps)."""
  held, base = summary.get('heldout_loss'), summary.get('heldout_loss_unsteered')
  if not (held and base):
    return None
  return [None if h is None or b is None else h - b for h, b in zip(held, base)]


def _run_folders(root: str):
  """Folders under root that hold a run (config.json, summary.json or failed.json).

  A slot run's own folder (train.slots) is no row: its cells are, wherever they are.
  """
  for folder, dirs, files in os.walk(root):
    if {CONFIG_FILE, SUMMARY_FILE, sweep.FAILED} & set(files) and not _is_slot_run(folder):
      dirs[:] = []  # checkpoints/, vectors/ and eval/ belong to the run
      yield folder
    else:
      dirs[:] = sorted(d for d in dirs if d != CHECKPOINT_DIR)


def _is_slot_run(folder: str) -> bool:
  config = _read_json(os.path.join(folder, CONFIG_FILE)) or {}
  return bool((config.get('train') or {}).get('slots'))


def run_row(folder: str, name: str, overrides: dict | None = None) -> dict:
  """One run's row (see the module docstring); overrides name the keys the sweep set."""
  config = flatten(_read_json(os.path.join(folder, CONFIG_FILE)) or {})
  summary = _read_json(os.path.join(folder, SUMMARY_FILE))
  failed = _read_json(os.path.join(folder, sweep.FAILED))
  overrides = overrides or (failed or {}).get('overrides') or {}
  row = {'run': name}
  if failed:
    row['status'] = 'failed'
  elif not summary:
    row['status'] = 'pending'
  else:
    row['status'] = 'done' if summary.get('steps') == summary.get('total_steps') else 'partial'
  for key in (*overrides, *STUDY_KEYS):
    # config.json says what really ran; the manifest fills in runs that never started.
    row[key] = _cell(config.get(key, overrides.get(key)))
  if summary:
    row.update(steps=summary.get('steps'), total_steps=summary.get('total_steps'),
               width=summary.get('width'), layer=summary.get('layer', row.get('layer')),
               final_loss=_mean(summary.get('final_loss')), factor=_mean(summary.get('factor')),
               direction_norm=_mean(summary.get('direction_norm')),
               residual_rms=summary.get('residual_rms'),
               factor_lr=summary.get('factor_lr'), direction_lr=summary.get('direction_lr'),
               concepts=_cell(summary.get('concept_ids')), train_s=summary.get('train_s'),
               steps_per_s=summary.get('steps_per_s'),
               heldout_loss=_mean(summary.get('heldout_loss')),
               train_loss=_mean(summary.get('train_loss')),
               direction_moved=_mean(summary.get('direction_moved')),
               direction_cosine_to_init=_mean(summary.get('direction_cosine_to_init')),
               factor_unit=_mean(summary.get('factor_unit')),
               # a run copied from a finished one of the same config (sweep.reuse_finished)
               reused_from=summary.get('reused_from', ''))
    # Held-out loss minus the unsteered model's, per concept and averaged (< 0: it helps).
    gains = _heldout_changes(summary)
    if gains:
      row['heldout_gain'] = _mean(gains)
      for cid, gain in zip(summary.get('concept_ids') or [], gains):
        row[f'heldout_gain_c{cid}'] = gain
    factors, norms = summary.get('factor') or [], summary.get('direction_norm') or []
    rms, width = summary.get('residual_rms'), summary.get('width')
    if factors and norms and rms and width:
      # The edit's per-coordinate RMS, |factor| * ||v|| / sqrt(n), next to the residual
      # stream's: how hard the vector pushes at its layer.
      row['edit_rms_ratio'] = _mean([abs(f) * n / math.sqrt(width) / rms
                                     for f, n in zip(factors, norms)])
  row.update(_scores(folder, config.get('positions', overrides.get('positions'))))
  if failed:
    row['error'] = failed.get('error', '')
  return row


def collect(root: str) -> list[dict]:
  """One row per run under `root` or in its sweep.json (sorted by name); see the module doc."""
  manifest = sweep.read_manifest(root).get('runs', {})
  folders = {os.path.relpath(folder, root): folder for folder in _run_folders(root)}
  # Runs the manifest lists that never started (e.g. still queued on a cluster) are rows too.
  folders.update({name: os.path.join(root, name) for name in manifest if name not in folders})
  rows = []
  for name, folder in folders.items():
    entry = manifest.get(name, {})
    # The swept keys lead, then the overrides every run of the sweep got.
    rows.append(run_row(folder, name, {**entry.get('overrides', {}),
                                       **entry.get('common', {})}))
  rows = sorted(rows, key=lambda r: r['run'])
  _add_heldout_pairs(root, rows)
  return rows


def _heldout_sums(summary: dict):
  """(concept [N], tokens [N], steered NLL sums [N]) of a summary's held-out examples, or
  None when it keeps no per-example figures (runs from before they were recorded)."""
  each = (summary or {}).get('heldout_examples')
  if not each or not each.get('loss'):
    return None
  tokens = np.asarray(each['tokens'], np.float64)
  return (np.asarray(each['concept']), tokens, np.asarray(each['loss'], np.float64) * tokens)


def runs_summary(folder: str) -> dict | None:
  """A run's held-out figures (summary.json's), or for a folder of finished runs (an
  evaluation's train_<method>/concept*) one summary joining theirs, so the concepts of
  separate runs pair like those of one run; examples are labelled by concept id. None when
  neither is there."""
  if not os.path.isdir(folder):
    return None
  own = sweep.read_summary(folder)
  runs = [own] if own is not None else [
      sweep.read_summary(os.path.join(folder, name))
      for name in sorted(os.listdir(folder)) if os.path.isdir(os.path.join(folder, name))]
  runs = [r for r in runs if r is not None]
  if not runs:
    return None
  joined = {'concept_ids': [], 'heldout_loss': [], 'heldout_examples': None}
  each = {k: [] for k in ('concept', 'tokens', 'loss', 'unsteered_loss')}
  for r in runs:
    ids = list(r.get('concept_ids') or [])
    joined['concept_ids'] += ids
    joined['heldout_loss'] += list(r.get('heldout_loss') or [])
    examples = dict(r.get('heldout_examples') or {})
    # A run numbers its examples' concepts by their place in it; the join needs their ids.
    examples['concept'] = [ids[i] for i in examples.get('concept') or []]
    for k in each:
      each[k] += list(examples.get(k) or [])
  if len(set(joined['concept_ids'])) != len(joined['concept_ids']):
    raise ValueError(f'{folder}: its runs train the same concept more than once; pair single '
                     'runs instead')
  if all(_heldout_sums(r) is not None for r in runs):
    joined['heldout_examples'] = each
  return joined


def heldout_of(summary: dict, concept_ids) -> dict:
  """A runs_summary's held-out examples of the given concepts only."""
  each = summary['heldout_examples']
  keep = [i for i, c in enumerate(each['concept']) if c in concept_ids]
  return {'heldout_examples': {k: [v[i] for i in keep] for k, v in each.items()},
          'concept_ids': [c for c in summary['concept_ids'] if c in concept_ids]}


def has_heldout_examples(summary: dict | None) -> bool:
  """Whether a summary keeps per-example held-out figures (what heldout_difference pairs)."""
  return _heldout_sums(summary) is not None


def heldout_difference(a: dict, b: dict, draws: int = 2000, seed: int = 0,
                       level: float = 0.95) -> dict | None:
  """Held-out loss of run `a` minus run `b` (their summaries), paired on the same held-out
  examples, with a percentile bootstrap interval.

  The statistic is the heldout_loss column's: each concept's token-mean loss, then the mean
  over concepts. A draw resamples each concept's held-out examples with replacement, the same
  examples for both runs; the concepts stay fixed (a study selects for the concepts it trains,
  and two concepts are too few to resample). None when either summary has no per-example
  figures; a ValueError when the two were measured on different examples.

  Returns {diff, ci: [low, high], examples}.
  """
  sa, sb = _heldout_sums(a), _heldout_sums(b)
  if sa is None or sb is None:
    return None
  if not (np.array_equal(sa[0], sb[0]) and np.array_equal(sa[1], sb[1])):
    raise ValueError('the two runs were measured on different held-out examples; compare runs '
                     'of the same data and concepts')
  concept, tokens, nll_a = sa
  nll_b = sb[2]
  rng = np.random.default_rng(seed)
  point, stats = 0.0, np.zeros(draws)
  groups = [np.flatnonzero(concept == c) for c in np.unique(concept)]
  for idx in groups:
    t, d = tokens[idx], nll_a[idx] - nll_b[idx]
    point += d.sum() / t.sum()
    pick = rng.integers(0, idx.size, size=(draws, idx.size))
    stats += d[pick].sum(axis=1) / t[pick].sum(axis=1)
  return dict(diff=float(point / len(groups)),
              ci=list(percentile_interval(stats / len(groups), level)),
              examples=int(concept.size))


def _run_harmonics(folder: str) -> tuple[str, dict] | None:
  """(judge, {(concept, instruction, sample): harmonic}) of a scored run's whole responses at
  its own trained factor (launch/score_sweep.py's eval/), or None when it is not scored."""
  # pylint: disable=import-outside-toplevel
  from prosv_jax.eval.judge import harmonic_mean
  from prosv_jax.eval.steering import parse_gen_key
  path = os.path.join(folder, 'eval', 'ratings.jsonl')
  if not os.path.exists(path):
    return None
  config = _read_json(os.path.join(folder, CONFIG_FILE)) or {}
  method = _method_of(config.get('positions'))
  judges, out = set(), {}
  with open(path) as f:
    for line in f:
      r = json.loads(line)
      group, index, sample = parse_gen_key(r['gen'])
      if (r.get('part', 'whole') != 'whole' or group.method != method or group.attack
          or group.multiplier != 1.0):
        continue
      judges.add(r['judge'])
      out[(group.concept_id, index, sample)] = harmonic_mean(
          r['concept'], r['instruction'], r['fluency'])
  if len(judges) != 1:
    return None
  return judges.pop(), out


def score_difference(folder_a: str, folder_b: str, draws: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict | None:
  """Steering score (mean harmonic) of run a minus run b, paired on the same generations'
  prompts, with a percentile bootstrap interval.

  The statistic is the score column's: each concept's mean per-generation harmonic, then the
  mean over concepts. As in heldout_difference the concepts stay fixed (the runs' own trained
  concepts); a draw resamples each concept's instructions with replacement, the same ones for
  both runs, the samples of an instruction together. None when either run is unscored; a
  ValueError when the two were scored on different prompts or by different judges.

  Returns {diff, ci: [low, high], generations}.
  """
  ha, hb = _run_harmonics(folder_a), _run_harmonics(folder_b)
  if ha is None or hb is None:
    return None
  if ha[0] != hb[0]:
    raise ValueError(f'the two runs were scored by different judges ({ha[0]} and {hb[0]}); '
                     'score both with the same launch/score_sweep.py settings')
  if set(ha[1]) != set(hb[1]):
    raise ValueError('the two runs were scored on different instructions or concepts; score '
                     'both with the same --config.instructions.count')
  by_instruction = {}  # concept -> instruction -> the paired differences of its samples
  for (c, i, _), ra in sorted(ha[1].items()):
    by_instruction.setdefault(c, {}).setdefault(i, []).append(ra - hb[1][(c, i, _)])
  rng = np.random.default_rng(seed)
  point, stats = 0.0, np.zeros(draws)
  for per_instruction in by_instruction.values():
    d = np.array([np.mean(v) for v in per_instruction.values()])  # [instructions]
    point += d.mean()
    stats += d[rng.integers(0, d.size, size=(draws, d.size))].mean(axis=1)
  concepts = len(by_instruction)
  return dict(diff=float(point / concepts),
              ci=list(percentile_interval(stats / concepts, level)), generations=len(ha[1]))


def _add_heldout_pairs(root: str, rows: list[dict]) -> None:
  """heldout_vs_best (and its interval) on every finished row with per-example figures,
  against the best run trained on the same concepts (a root may hold one cell on several
  concepts, e.g. the transfer check's; losses on other examples do not pair)."""
  summaries = {r['run']: _read_json(os.path.join(root, r['run'], SUMMARY_FILE))
               for r in rows if r.get('status') == 'done'}
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    if row['run'] in summaries:
      key = tuple(summaries[row['run']].get('concept_ids') or ())
      groups.setdefault(key, []).append(row)
  for group in groups.values():
    try:
      ref = summaries[best(group)['run']]
    except ValueError:
      continue
    for row in group:
      pair = heldout_difference(summaries[row['run']], ref)
      if pair is not None:
        row.update(heldout_vs_best=pair['diff'], heldout_vs_best_lo=pair['ci'][0],
                   heldout_vs_best_hi=pair['ci'][1])


def _per_concept(values, fmt: str) -> str:
  """'1.05 / 1.35': one figure per trained concept, as the study's tables show them."""
  if values is None:
    return ''
  values = values if isinstance(values, list) else [values]
  return ' / '.join('-' if v is None else format(float(v), fmt) for v in values)


def markdown(root: str, rows: list[dict] | None = None) -> str:
  """The study's table of one sweep root (docs/STUDY.md), one line per finished run.

  Columns: the swept keys (sweep.json), then per trained concept the held-out loss change
  against unsteered, the mean held-out loss and its paired difference to the selected run,
  the edit's RMS over the residual's at the steered positions (summary's edit_rms_ratio), the
  trained factor and direction norm, the direction's cosine to its draw, training seconds,
  and the offline judge's concept / instruction / fluency -> harmonic of the run's method.
  """
  rows = collect(root) if rows is None else rows
  manifest = sweep.read_manifest(root).get('runs', {})
  axes = []
  for row in rows:
    axes += [k for k in manifest.get(row['run'], {}).get('overrides', {}) if k not in axes]
  try:
    chosen = best(rows)['run']
  except ValueError:
    chosen = None
  head = [*axes, 'held-out change', 'mean held-out loss', 'vs best [95% interval]',
          'edit ratio', 'factor', 'direction norm', 'cosine to init', 'train s',
          'score: concept / instruction / fluency -> harmonic']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for row in rows:
    if row.get('status') != 'done':
      continue
    folder = os.path.join(root, row['run'])
    summary = _read_json(os.path.join(folder, SUMMARY_FILE)) or {}
    if row['run'] == chosen:
      versus = '**best**'
    elif row.get('heldout_vs_best') is not None:
      versus = (f'{row["heldout_vs_best"]:+.4f} [{row["heldout_vs_best_lo"]:+.4f}, '
                f'{row["heldout_vs_best_hi"]:+.4f}]')
    else:
      versus = ''
    score = ''
    _, results = _results(folder)  # the evaluation the CSV's score column reads
    if results is not None:
      own = _own_method(results, row.get('positions'))
      mean = (results['methods'].get(own) or {}).get('mean') or {}
      if mean.get('harmonic') is not None:
        score = (f'{mean["concept"]:.2f} / {mean["instruction"]:.2f} / {mean["fluency"]:.2f} '
                 f'-> {mean["harmonic"]:.2f}')
    held_mean = _number(row.get('heldout_loss'))
    cells = [*(str(row.get(k, '')) for k in axes),
             _per_concept(_heldout_changes(summary), '+.3f'),
             '' if held_mean is None else f'{held_mean:.4f}', versus,
             _per_concept(summary.get('edit_rms_ratio'), '.2f'),
             _per_concept(summary.get('factor'), '.1f'),
             _per_concept(summary.get('direction_norm'), '.1f'),
             _per_concept(summary.get('direction_cosine_to_init'), '+.2f'),
             f'{summary["train_s"]:.0f}' if summary.get('train_s') else '', score]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def best(rows: list[dict], metric: str = SELECT_BY) -> dict:
  """The finished row with the lowest `metric` (the highest for score columns)."""
  done = [r for r in rows if r.get('status') == 'done' and _number(r.get(metric)) is not None]
  if not done:
    raise ValueError(f'no finished run with a {metric!r} figure; train the sweep to the end '
                     f'(held-out figures need an AxBench source with latent_eval_data)')
  sign = -1.0 if metric.startswith('score') else 1.0
  return min(done, key=lambda r: sign * _number(r[metric]))


def columns(rows: list[dict]) -> list[str]:
  """run, status, config keys, summary figures, scores, then anything else, in that order."""
  seen = []
  for row in rows:
    seen += [k for k in row if k not in seen]
  config = [k for k in seen if '.' in k or k in ('model', 'layer', 'positions')]
  summary = [k for k in SUMMARY_KEYS if k in seen and k not in config]
  scores = [k for k in seen if k.startswith('score')]
  head = ['run', 'status', *config, *summary, *scores]
  return head + [k for k in seen if k not in head]


def write_csv(rows: list[dict], path: str) -> str:
  """Writes rows to `path` (missing cells empty); returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns(rows), restval='')
    writer.writeheader()
    writer.writerows(rows)
  return path


def read_csv(path: str) -> list[dict]:
  """Rows of a study CSV, numbers as floats where a cell parses as one."""
  def parse(value):
    try:
      return float(value)
    except ValueError:
      return value
  with open(path, newline='') as f:
    return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(value):
  try:
    value = float(value)
  except (TypeError, ValueError):
    return None
  return value if math.isfinite(value) else None


def where(rows: list[dict], conditions: dict) -> list[dict]:
  """Rows whose columns equal the given values (numbers compared as floats)."""
  def match(row, key, want):
    have = row.get(key)
    if _number(have) is not None and _number(want) is not None:
      return math.isclose(_number(have), _number(want), rel_tol=1e-9)
    return str(have) == str(want)
  return [r for r in rows if all(match(r, k, v) for k, v in conditions.items())]


def _label(key: str) -> str:
  return {'steer.beta': 'beta (factor init size)', 'optim.factor_lr': 'factor LR',
          'optim.direction_lr': 'direction LR', 'width': 'hidden width n'}.get(key, key)


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')  # files only: no display on clusters and test machines
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def heatmap(rows: list[dict], out: str, metric: str = 'final_loss',
            x: str = 'optim.factor_lr', y: str = 'steer.beta', title: str = '') -> str:
  """The paper-style grid: `metric` over (y, x) with every cell annotated; writes a PNG.

  Failed runs and runs without the metric show as an empty cell marked 'x'; the best cell
  (lowest loss, highest score) is framed. Several rows in one cell are averaged.

  Args:
    rows: from collect() or read_csv().
    out: the PNG path.
    metric: a numeric column; names starting with 'score' count higher as better.
    x: the column across (default the factor LR).
    y: the column down (default beta).
    title: the figure title ('' = metric and run count).

  Returns:
    out.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  plt = _pyplot()
  xs = sorted({_number(r.get(x)) for r in rows} - {None})
  ys = sorted({_number(r.get(y)) for r in rows} - {None})
  if not xs or not ys:
    raise ValueError(f'no numeric {x!r} and {y!r} columns in the rows to plot')
  cells = {}
  for r in rows:
    key = (_number(r.get(y)), _number(r.get(x)))
    cells.setdefault(key, []).append(_number(r.get(metric)))
  grid = np.full((len(ys), len(xs)), np.nan)
  for i, yv in enumerate(ys):
    for j, xv in enumerate(xs):
      values = [v for v in cells.get((yv, xv), []) if v is not None]
      if values:
        grid[i, j] = float(np.mean(values))
  higher_better = metric.startswith('score')
  fig, ax = plt.subplots(figsize=(1.1 * len(xs) + 2.5, 0.8 * len(ys) + 1.8))
  image = ax.imshow(np.ma.masked_invalid(grid), cmap='viridis' if higher_better else 'viridis_r',
                    aspect='auto', origin='lower')
  fig.colorbar(image, ax=ax, label=metric)
  finite = np.isfinite(grid)
  span = (np.nanmin(grid), np.nanmax(grid)) if finite.any() else (0.0, 1.0)
  for i in range(len(ys)):
    for j in range(len(xs)):
      if not finite[i, j]:
        ax.text(j, i, 'x', ha='center', va='center', color='grey')
        continue
      # Dark text on the light end of the colour map, light text on the dark end.
      light = (grid[i, j] - span[0]) / ((span[1] - span[0]) or 1.0)
      light = light if higher_better else 1.0 - light
      ax.text(j, i, f'{grid[i, j]:.3g}', ha='center', va='center', fontsize=9,
              color='black' if light > 0.5 else 'white')
  if finite.any():
    best = np.unravel_index(np.nanargmax(grid) if higher_better else np.nanargmin(grid),
                            grid.shape)
    ax.add_patch(plt.Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False,
                               edgecolor='red', linewidth=2))
  ax.set_xticks(range(len(xs)), [f'{v:g}' for v in xs])
  ax.set_yticks(range(len(ys)), [f'{v:g}' for v in ys])
  ax.set_xlabel(_label(x))
  ax.set_ylabel(_label(y))
  ax.set_title(title or f'{metric} ({len(rows)} runs)')
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


def setting_label(row: dict, keys: list[str]) -> str:
  """'mup flr10': the width-exponent pair as mup/fixed, other keys as alias+value."""
  parts, keys = [], list(keys)
  pair = ('optim.factor_lr_width_exponent', 'optim.direction_lr_width_exponent')
  if all(k in keys for k in pair):
    have = (_number(row.get(pair[0])), _number(row.get(pair[1])))
    mode = next((m for m, v in sweep.TRANSFER.items() if v == have), None)
    if mode:
      parts.append(mode)
      keys = [k for k in keys if k not in pair]
  parts += [sweep.fragment(k, row.get(k)) for k in keys]
  return ' '.join(parts) or 'all runs'


def varying(rows: list[dict], exclude=()) -> list[str]:
  """Config columns (dotted keys) whose value differs between rows, less `exclude`."""
  keys = [k for k in columns(rows) if '.' in k and k not in exclude]
  return [k for k in keys if len({str(r.get(k)) for r in rows}) > 1]


def curves(rows: list[dict], out: str, metric: str = 'final_loss', x: str = 'width',
           series: list[str] | None = None, title: str = '', log_x: bool = True) -> str:
  """`metric` over `x` (default the hidden width), one line per setting; writes a PNG.

  Args:
    rows: from collect() or read_csv().
    out: the PNG path.
    metric: a numeric column.
    x: a numeric column for the horizontal axis.
    series: the columns that make a setting (default: every varying config key except the
      model, its layer and x itself).
    title: the figure title ('' = metric over x).
    log_x: a log2 horizontal axis (widths and LRs grow geometrically).

  Returns:
    out.
  """
  plt = _pyplot()
  if series is None:
    series = varying(rows, exclude=(x, 'model', 'layer'))
  lines = {}
  for r in rows:
    xv, yv = _number(r.get(x)), _number(r.get(metric))
    if xv is None:
      continue
    lines.setdefault(setting_label(r, series), []).append((xv, yv))
  if not lines:
    raise ValueError(f'no rows with a numeric {x!r} column to plot')
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for label, points in sorted(lines.items()):
    points = sorted(points)
    ax.plot([p[0] for p in points], [float('nan') if p[1] is None else p[1] for p in points],
            marker='o', label=label)
  if log_x:
    ax.set_xscale('log', base=2)
  xs = sorted({p[0] for pts in lines.values() for p in pts})
  ax.set_xticks(xs, [f'{v:g}' for v in xs], rotation=45)  # close widths (576, 640) overlap
  ax.minorticks_off()
  ax.set_xlabel(_label(x))
  ax.set_ylabel(metric)
  ax.set_title(title or f'{metric} over {_label(x)}')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


def bars(rows: list[dict], out: str, metric: str = 'heldout_vs_best', x: str = 'setting',
         title: str = '') -> str:
  """One bar of `metric` per row, labelled by column `x`; writes a PNG.

  For one-axis comparisons (positions, init rules) where a heatmap has nothing to lay out.
  Where the rows carry `{metric}_lo` and `{metric}_hi` (heldout_vs_best's paired bootstrap
  interval, from collect()), they are drawn as error bars, so a bar whose interval crosses
  zero reads as level with the best row.

  Args:
    rows: from collect() or read_csv().
    out: the PNG path.
    metric: a numeric column.
    x: the column that names each bar, or 'setting' (the default): the config keys that
      differ between the rows, e.g. 'initwidth beta0.0625', so rows of several CSVs
      (whose run folders may share a name) stay apart.
    title: the figure title ('' = metric and run count).

  Returns:
    out.
  """
  plt = _pyplot()
  kept = [r for r in rows if _number(r.get(metric)) is not None]
  if not kept:
    raise ValueError(f'no rows with a numeric {metric!r} column to plot')
  values = [_number(r[metric]) for r in kept]
  lows = [_number(r.get(f'{metric}_lo')) for r in kept]
  highs = [_number(r.get(f'{metric}_hi')) for r in kept]
  fig, ax = plt.subplots(figsize=(1.6 * len(kept) + 2.5, 4.5))
  positions = list(range(len(kept)))
  ax.bar(positions, values, color='tab:blue', alpha=0.8)
  if all(v is not None for v in lows + highs):
    ax.errorbar(positions, values,
                yerr=[[v - lo for v, lo in zip(values, lows)],
                      [hi - v for v, hi in zip(values, highs)]],
                fmt='none', ecolor='black', capsize=4)
  for p, v in zip(positions, values):
    ax.text(p, v, f'{v:.3g}', ha='center', va='bottom' if v >= 0 else 'top', fontsize=9)
  ax.axhline(0.0, color='grey', linewidth=0.8)
  labels = bar_labels(kept, x)
  ax.set_xticks(positions, labels, rotation=30, ha='right')
  ax.set_xlabel(_label(x))
  ax.set_ylabel(metric)
  ax.set_title(title or f'{metric} ({len(kept)} runs)')
  ax.grid(axis='y', alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


def bar_labels(rows: list[dict], x: str = 'setting') -> list[str]:
  """Each row's bar label: column `x`, or for 'setting' the config keys that differ."""
  if x != 'setting':
    return [str(r.get(x, '')) for r in rows]
  # Keys only some rows carry (a sweep root records its common overrides, a single run's
  # root does not) say nothing about the setting.
  keys = [k for k in varying(rows, exclude=('model', 'layer', 'workdir'))
          if all(r.get(k) not in (None, '') for r in rows)]
  # With no dotted key varying (a top-level one like positions), the run names say it.
  if not keys:
    return [str(r.get('run', '')) for r in rows]
  return [setting_label(r, keys) for r in rows]
