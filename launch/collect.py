"""Gathers a sweep's runs into one CSV: config, summary figures and steering score per run.

  python launch/collect.py --root=workdirs/sweeps/beta_lr --out=workdirs/sweeps/beta_lr/study.csv
  # and the cell a study picks (lowest loss on held-out positives), as --config flags
  python launch/collect.py --root=workdirs/sweeps/beta_lr --best=heldout_loss
  # and the finished runs as a markdown table, per concept (docs/STUDY.md's tables)
  python launch/collect.py --root=workdirs/sweeps/beta_lr --markdown

With --best=heldout_loss it also prints every run's held-out loss minus the best's with a
paired 95% interval (runs whose summaries keep per-example figures; launch/heldout.py adds
them to older runs). A run's score comes from an evaluation's results.json in its folder or its
eval/ subfolder (e.g. python launch/evaluate.py --config=configs/eval.py --config.methods=prosv
--config.vectors.prosv=<run>/vectors --config.workdir=<run>/eval). Columns: see
prosv_jax/study.py.
"""

from absl import app, flags

from prosv_jax import study, sweep

ROOT = flags.DEFINE_string('root', None, 'A sweep root (launch/sweep.py --root).')
OUT = flags.DEFINE_string('out', None, 'The CSV to write (default: <root>/study.csv).')
BEST = flags.DEFINE_string('best', '', 'Also print the finished run with the lowest value of '
                           'this column (highest for score*), e.g. heldout_loss, and its swept '
                           'keys as --config flags for the next sweep.')
MARKDOWN = flags.DEFINE_bool('markdown', False, 'Also print the finished runs as the study\'s '
                              'markdown table (prosv_jax.study.markdown), per concept.')
flags.mark_flags_as_required(['root'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  rows = study.collect(ROOT.value)
  if not rows:
    raise SystemExit(f'error: no runs under {ROOT.value}; pass the --root a sweep wrote to')
  out = study.write_csv(rows, OUT.value or f'{ROOT.value.rstrip("/")}/study.csv')
  counts = {}
  for r in rows:
    counts[r['status']] = counts.get(r['status'], 0) + 1
  print(f'{len(rows)} runs ({", ".join(f"{v} {k}" for k, v in sorted(counts.items()))}) '
        f'-> {out}')
  if MARKDOWN.value:
    print(study.markdown(ROOT.value, rows))
  if BEST.value:
    try:
      row = study.best(rows, BEST.value)
    except ValueError as e:
      raise SystemExit(f'error: {e}') from None
    swept = sweep.read_manifest(ROOT.value).get('runs', {}).get(row['run'], {})
    flags_ = sweep.config_flags_of(swept.get('overrides', {}))
    print(f'best by {BEST.value}: {row["run"]} ({BEST.value} {row[BEST.value]:.4f}) '
          f'{" ".join(flags_)}')
    paired = [r for r in rows if r.get('heldout_vs_best') is not None and r is not row]
    if paired and BEST.value == study.SELECT_BY:
      # Paired on the same held-out examples (study.heldout_difference); runs trained before
      # summaries kept per-example figures get them from launch/heldout.py.
      print(f'\n{"run":<28} {"heldout_loss":>12}  minus the best, 95% interval')
      for r in sorted(paired, key=lambda r: r['heldout_vs_best']):
        print(f'{r["run"]:<28} {r["heldout_loss"]:>12.4f}  {r["heldout_vs_best"]:+.4f} '
              f'[{r["heldout_vs_best_lo"]:+.4f}, {r["heldout_vs_best_hi"]:+.4f}]')


if __name__ == '__main__':
  app.run(main)
