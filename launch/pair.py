"""Two finished runs compared, paired: held-out loss and steering score, each a minus b with
a 95% bootstrap interval over the same examples (prosv_jax/study.py).

  python launch/pair.py runs/study/prosv_beta_lr/beta0.0625_flr10 runs/study/fssv_beta_lr/beta1_flr1

Held-out loss: the token-mean loss on AxBench's held-out positives of each trained concept
(lower is better; the runs must share their data and concepts). A folder of one-concept runs,
such as an evaluation's training folder, counts as one run of all its concepts, and each
concept's own difference is printed too:

  python launch/pair.py runs/eval_concept10/train_prosv-smollm2 runs/eval_concept10/train_prosv

Score: the mean harmonic of each run's own evaluation by launch/score_sweep.py (higher is
better; the same instructions and judge). A figure either run lacks is reported as missing
with the command that adds it.

Two methods of one evaluation (launch/evaluate.py's workdir), any pair, from its stores: the
harmonic mean a - b with the evaluation's own paired bootstrap, and the utility loss a - b
over concepts (optionally on a subset of its concepts):

  python launch/pair.py --eval=runs/eval_concept10 fssv:smollm2 fssv
  python launch/pair.py --eval=runs/eval_concept10 --concepts=2,3,4,5,6,7,8,9 fssv:smollm2 fssv
"""

from absl import app
from absl import flags

from prosv_jax import study
from prosv_jax.errors import ProsvError
from prosv_jax.train.workdir import SUMMARY_FILE

EVAL = flags.DEFINE_string('eval', '', 'An evaluation workdir: the two arguments are then '
                           'methods evaluated there (e.g. fssv:smollm2 fssv).')
RESULTS = flags.DEFINE_string('results_name', 'results', 'With --eval: the results file whose '
                              'methods, concepts and bootstrap settings are read.')
CONCEPTS = flags.DEFINE_list('concepts', [], 'With --eval: a subset of its concepts.')


def _line(name: str, pair: dict | None, unit: str, missing: str) -> str:
  if pair is None:
    return f'{name}: missing ({missing})'
  return (f'{name}: {pair["diff"]:+.4f} [{pair["ci"][0]:+.4f}, {pair["ci"][1]:+.4f}] '
          f'(a - b, 95% paired interval over {pair[unit]} {unit})')


def _methods(a: str, b: str) -> None:
  from prosv_jax.eval.steering import stored_difference
  try:
    concepts = [int(c) for c in CONCEPTS.value]
  except ValueError:
    raise SystemExit(f'error: --concepts={",".join(CONCEPTS.value)}; give concept ids, e.g. '
                     '--concepts=2,3,4') from None
  try:
    d = stored_difference(EVAL.value, a, b, RESULTS.value, concepts)
  except ProsvError as e:
    raise SystemExit(f'error: {e}') from None
  print(f'a = {a}\nb = {b}\n{EVAL.value}, concepts {d["concepts"]}')
  h = d['harmonic']
  print(f'harmonic: {h["a"]:.3f} - {h["b"]:.3f} = {h["diff"]:+.3f} [{h["ci"][0]:+.3f}, '
        f'{h["ci"][1]:+.3f}] (95% paired interval: concepts, then instructions)')
  u = d['utility']
  if u is None:
    print('utility loss: missing (the evaluation ran with utility off)')
  else:
    print(f'utility loss (nats/token): {u["a"]:.3f} - {u["b"]:.3f} = {u["diff"]:+.3f} '
          f'[{u["ci"][0]:+.3f}, {u["ci"][1]:+.3f}] (95% paired interval over concepts)')


def main(argv):
  if len(argv) == 3 and EVAL.value:
    return _methods(*argv[1:])
  if len(argv) != 3:
    raise app.UsageError('give two run folders (python launch/pair.py RUN_A RUN_B), or --eval=WORKDIR '
                         'and two of its methods')
  a, b = argv[1:]
  try:
    summaries = [study.runs_summary(folder) for folder in (a, b)]
    for folder, summary in zip((a, b), summaries):
      if summary is None:
        raise ValueError(f'{folder} has no {SUMMARY_FILE}, nor runs with one; pass the folder '
                         'of a finished run (launch/train.py or launch/sweep.py)')
    # Folders of one-concept runs pair on the concepts both have finished.
    ids = [s.get('concept_ids') or [] for s in summaries]
    common = [c for c in ids[0] if c in ids[1]]
    if ids[0] != ids[1] and common and all(study.has_heldout_examples(s) for s in summaries):
      print(f'concepts both runs hold: {common} (a: {ids[0]}, b: {ids[1]})')
      summaries = [study.heldout_of(s, common) for s in summaries]
    held = study.heldout_difference(*summaries)
    score = study.score_difference(a, b)
    per_concept = []
    if held is not None and len(common) > 1:
      per_concept = [(c, study.heldout_difference(*[study.heldout_of(s, [c]) for s in summaries]))
                     for c in common]
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  print(f'a = {a}\nb = {b}')
  print(_line('held-out loss', held, 'examples',
              'per-example figures: python launch/heldout.py --root=<its sweep root>'))
  for cid, pair in per_concept:
    print(_line(f'  concept {cid}', pair, 'examples', ''))
  print(_line('score', score, 'generations',
              'python launch/score_sweep.py --root=<its sweep root> '
              '--config.instructions.count=10'))


if __name__ == '__main__':
  app.run(main)
