"""Plots a study CSV (launch/collect.py): a (beta, factor LR) heatmap or curves over width.

  # paper-style grid of the final loss (or --metric=score once evaluated)
  python launch/plot_study.py --csv=study.csv --kind=heatmap --out=beta_lr.png
  # width transfer: final loss over hidden width, one line per setting (mup/fixed x factor LR)
  python launch/plot_study.py --csv=study.csv --kind=curves --out=width.png
  # one axis (positions, init rules): a bar per run with its paired interval against the best
  python launch/plot_study.py --csv=study.csv --kind=bars --metric=heldout_vs_best --out=pos.png
  # rows of several CSVs together: --csv=a.csv,b.csv
  # only some rows: --where=steer.direction_scale=8 (repeatable)
"""

from absl import app, flags

from prosv_jax import study

CSV = flags.DEFINE_list('csv', None, 'Study CSVs from launch/collect.py (several: their rows '
                       'together, e.g. one model\'s cells from two roots).')
OUT = flags.DEFINE_string('out', None, 'The PNG to write.')
KIND = flags.DEFINE_enum('kind', 'heatmap', ['heatmap', 'curves', 'bars'], 'What to draw.')
METRIC = flags.DEFINE_string('metric', 'final_loss', 'A numeric column: final_loss, score, '
                             'factor, edit_rms_ratio, ...')
X = flags.DEFINE_string('x', None, 'Horizontal column (heatmap: optim.factor_lr; curves: width; '
                       'bars: setting, the config keys that differ).')
Y = flags.DEFINE_string('y', 'steer.beta', 'Heatmap: the vertical column.')
SERIES = flags.DEFINE_list('series', None, 'Curves: the columns that make one line '
                           '(default: every varying config key but model, layer and x).')
WHERE = flags.DEFINE_multi_string('where', [], 'Keep rows with column=value (repeatable).')
TITLE = flags.DEFINE_string('title', '', 'Figure title.')
flags.mark_flags_as_required(['csv', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  rows = [row for path in CSV.value for row in study.read_csv(path)]
  conditions = {}
  for item in WHERE.value:
    key, sep, value = item.partition('=')
    if not sep:
      raise app.UsageError(f'--where={item}: write column=value')
    conditions[key] = value
  rows = study.where(rows, conditions)
  if not rows:
    raise SystemExit(f'error: no rows of {",".join(CSV.value)} match {conditions}; check --where')
  try:
    if KIND.value == 'heatmap':
      out = study.heatmap(rows, OUT.value, METRIC.value, X.value or 'optim.factor_lr', Y.value,
                          TITLE.value)
    elif KIND.value == 'bars':
      out = study.bars(rows, OUT.value, METRIC.value, X.value or 'setting', TITLE.value)
    else:
      out = study.curves(rows, OUT.value, METRIC.value, X.value or 'width', SERIES.value,
                         TITLE.value)
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  print(out)


if __name__ == '__main__':
  app.run(main)
