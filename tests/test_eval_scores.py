"""Score arithmetic, rating parsing, factor selection, threshold fitting and instruction draws."""

import json

import numpy as np
import pandas as pd
import pytest

from paths import CONCEPT10
from prosv_jax.errors import ProsvError
from prosv_jax.eval import calibrate, instructions, scores
from prosv_jax.eval.judge import Item, Ratings, harmonic_mean, parse_rating, rubric_prompt
from prosv_jax.eval.offline_judge import Calibration, Threshold, repeated_ngram_share


def test_harmonic_mean():
  assert harmonic_mean(2, 2, 2) == 2
  assert harmonic_mean(1, 2, 2) == pytest.approx(3 / (1 + 0.5 + 0.5))
  assert harmonic_mean(2, 0, 2) == 0  # any zero rating zeroes the generation
  assert Ratings(1, 1, 0.5).harmonic == pytest.approx(3 / 4)


@pytest.mark.parametrize('reply, want', [
    ('The concept is clear. Rating: [[2]]', 2.0),
    ('Rating: [[1]] on reflection... Rating: [[0]]', 0.0),  # the last one counts
    ('rating: [[ 1.5 ]]', 1.5),
    ('Rating: [[3]]', 0.0),  # out of range
    ('Rating: [[-1]]', 0.0),
    ('Rating: [[two]]', 0.0),
    ('Rating: 2', 0.0),  # not the required format
    ('', 0.0),
    (None, 0.0),
    ('Rating: [[nan]]', 0.0),
])
def test_parse_rating(reply, want):
  assert parse_rating(reply) == want


def test_rubric_prompts_carry_the_item_and_the_format():
  item = Item('Explain rain.', 'ocean life', 'Rain falls; whales sing.')
  for aspect in ('concept', 'instruction', 'fluency'):
    p = rubric_prompt(aspect, item)
    assert 'Rating: [[x]]' in p and item.response in p
  assert 'ocean life' in rubric_prompt('concept', item)
  assert 'Explain rain.' in rubric_prompt('instruction', item)
  assert 'ocean life' not in rubric_prompt('fluency', item)


def test_summaries_average_each_concept_once():
  a = [Ratings(2, 2, 2), Ratings(0, 2, 2)]  # harmonic 2, 0 -> 1
  b = [Ratings(1, 1, 1)] * 4  # harmonic 1
  sa, sb = scores.summarize(a), scores.summarize(b)
  assert sa['harmonic'] == 1 and sa['concept'] == 1 and sa['count'] == 2
  both = scores.over_concepts({0: sa, 1: sb})
  assert both['harmonic'] == 1 and both['harmonic_std'] == 0
  assert both['concept'] == 1 and both['fluency'] == 1.5 and both['fluency_std'] == 0.5


def test_selection_picks_on_first_half_and_breaks_ties_low():
  assert scores.split_halves(10) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
  assert scores.split_halves(5) == ([0, 1], [2, 3, 4])
  with pytest.raises(ValueError):
    scores.split_halves(1)
  assert scores.select_factor({0.5: 0.2, 1.0: 0.9, 2.0: 0.4}) == 1.0
  assert scores.select_factor({0.5: 0.9, 1.0: 0.9, 2.0: 0.4}) == 0.5


def test_auroc_matches_brute_force():
  rng = np.random.default_rng(0)
  s = np.round(rng.normal(size=60), 1)  # ties on purpose
  y = (rng.random(60) < 0.5).astype(int)
  pos, neg = s[y == 1], s[y == 0]
  brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
  assert calibrate.auroc(s, y) == pytest.approx(brute)


def test_threshold_fit_and_band():
  rng = np.random.default_rng(1)
  s = np.concatenate([rng.normal(1, 1, 400), rng.normal(-1, 1, 400)])
  y = np.r_[np.ones(400), np.zeros(400)].astype(int)
  t = calibrate.fit_threshold(s, y)
  assert t.low <= t.mid <= t.high
  assert abs(t.mid) < 0.3  # the symmetric optimum is near 0
  rep = calibrate.separation(s, y, t)
  assert 0.9 < rep['auroc'] < 0.95 and rep['accuracy'] > 0.8
  assert rep['positive_rating_share'][0] == pytest.approx(0.1, abs=0.02)  # band quantile
  assert rep['negative_rating_share'][2] == pytest.approx(0.1, abs=0.02)
  # Separable classes: the band is the gap between them, so a borderline score rates 1.
  t2 = calibrate.fit_threshold(np.r_[np.ones(5) * 3, np.zeros(5)], np.r_[np.ones(5), np.zeros(5)])
  assert t2.low <= 0.0 and t2.high == 3.0
  assert list(t2.rate([-1, 1.5, 3])) == [0, 1, 2]
  assert list(Threshold(0, 0.5, 1).rate([-1, 0, 0.7, 1, -np.inf])) == [0, 1, 1, 2, 0]


def test_calibration_round_trip_and_errors(tmp_path):
  cal = Calibration('minilm', 'm', Threshold(0, 1, 2), Threshold(0, 1, 2), Threshold(-3, -2, -1),
                    2.0, {'x': 1})
  path = str(tmp_path / 'c.json')
  cal.save(path)
  assert Calibration.load(path) == cal
  (tmp_path / 'bad.json').write_text('{"embedder": 1}')
  with pytest.raises(ProsvError, match='rerun launch/calibrate.py'):
    Calibration.load(str(tmp_path / 'bad.json'))
  with pytest.raises(ProsvError, match='launch/calibrate.py'):
    Calibration.load(str(tmp_path / 'missing.json'))


def test_repeated_ngram_share_and_corruptions():
  assert repeated_ngram_share([1, 2, 3, 4, 5, 6]) == 0
  assert repeated_ngram_share([1, 2] * 20) > 0.9
  rng = np.random.default_rng(0)
  text = 'the quick brown fox jumps over the lazy dog near the river bank'
  for kind in calibrate.CORRUPTIONS:
    bad = calibrate.corrupt(text, kind, rng, text.split())
    assert bad != text and len(bad.split()) == len(text.split())
  assert sorted(calibrate.corrupt(text, 'shuffle', rng, []).split()) == sorted(text.split())


@pytest.mark.skipif(not CONCEPT10.exists(), reason='AxBench Concept10 data not present')
def test_calibration_pairs_from_axbench():
  source = str(CONCEPT10)
  c = calibrate.concept_pairs(source)
  assert set(np.unique(c.label)) == {0, 1} and len(c.response) == len(c.reference)
  meta = [json.loads(x) for x in open(f'{source}/metadata.jsonl')]
  assert set(c.reference) == {m['concept'] for m in meta}
  ins = calibrate.instruction_pairs(source, per_class=10)
  matched = dict(zip(np.array(ins.response)[ins.label == 1],
                     np.array(ins.reference)[ins.label == 1]))
  wrong = [(r, x) for r, x, lab in zip(ins.response, ins.reference, ins.label) if lab == 0]
  assert all(matched[r] != x for r, x in wrong)  # shuffled pairs never match by accident


def test_axbench_draw_rule_and_held_out_pool(tmp_path):
  pool = [f'q{i}' for i in range(805)]
  want = np.random.RandomState(7).choice(805, 10, replace=False)
  assert instructions.axbench_draw(pool, 7, 10) == [pool[i] for i in want]
  with pytest.raises(ProsvError, match='instructions.count'):
    instructions.axbench_draw(pool[:3], 0, 5)
  # A single-file source: the pool is its negatives' instructions, never a positive's.
  df = pd.DataFrame(dict(input=['a', 'b', 'c', 'd'], output=['x'] * 4,
                         concept_id=[0, 0, -1, -1], output_concept=['k', 'k', '', '']))
  df.to_parquet(tmp_path / 't.parquet')
  assert instructions.held_out_pool(str(tmp_path / 't.parquet')) == ['c', 'd']


@pytest.mark.skipif(not CONCEPT10.exists(), reason='AxBench Concept10 data not present')
def test_held_out_pool_never_holds_training_instructions():
  pool = instructions.held_out_pool(str(CONCEPT10))
  train = pd.read_parquet(f'{CONCEPT10}/train_data.parquet')
  assert len(pool) > 100 and not set(pool) & set(train['input'])


def test_alpaca_eval_reader(tmp_path):
  p = tmp_path / 'a.json'
  p.write_text(json.dumps([{'instruction': 'Say hi', 'output': 'x'}, {'instruction': 'Add 2+2'}]))
  assert instructions.read_alpaca_eval(str(p)) == ['Say hi', 'Add 2+2']
  p.write_text(json.dumps([{'instruction': ''}]))
  with pytest.raises(ProsvError, match='row 0'):
    instructions.read_alpaca_eval(str(p))
  p.write_text('[{"instruction": ')
  with pytest.raises(ProsvError, match='cannot parse'):
    instructions.read_alpaca_eval(str(p))


def test_prompt_rewrites():
  assert 'whales' in instructions.prompting('Explain rain.', 'whales')
  rewrites = {instructions.avoid('Explain rain.', 'whales', i) for i in range(6)}
  assert len(rewrites) == len(instructions.AVOID_TEMPLATES)
  assert all('Explain rain.' in r and 'whales' in r for r in rewrites)


def _units(rng, concepts=4, instructions=6, samples=2):
  """Per concept [1 method, instructions, samples] of harmonic-like scores in [0, 2]."""
  return [rng.choice([0.0, 0.75, 1.2, 2.0], size=(1, instructions, samples))
          for _ in range(concepts)]


def test_bootstrap_point_estimates_are_the_axbench_means():
  rng = np.random.default_rng(0)
  units = [np.concatenate([u, u[::-1] * 0.5]) for u in _units(rng)]
  out = scores.paired_bootstrap(units, ['a', 'b'], reference='a', draws=200)
  per_concept = [u[1].mean() for u in units]  # per concept, then over concepts
  assert out['b']['mean'] == pytest.approx(np.mean(per_concept))
  assert out['b']['ci'][0] <= out['b']['mean'] <= out['b']['ci'][1]
  assert 'diff' not in out['a']
  assert out['b']['diff'] == pytest.approx(out['b']['mean'] - out['a']['mean'])


def test_bootstrap_identical_methods_and_constant_shift():
  rng = np.random.default_rng(1)
  base = _units(rng)
  same = scores.paired_bootstrap([np.concatenate([u, u]) for u in base], ['prosv', 'x'],
                                 reference='prosv')
  assert same['x']['diff'] == 0 and same['x']['diff_ci'] == [0.0, 0.0]
  assert same['x']['ci'] == same['prosv']['ci'] and same['x']['ci'][0] < same['x']['ci'][1]
  shifted = scores.paired_bootstrap([np.concatenate([u, u + 0.25]) for u in base],
                                    ['prosv', 'x'], reference='prosv')
  assert shifted['x']['diff'] == pytest.approx(0.25, abs=1e-12)
  assert shifted['x']['diff_ci'] == pytest.approx([0.25, 0.25], abs=1e-12)


def test_bootstrap_is_seeded_and_resamples_the_hierarchy():
  rng = np.random.default_rng(2)
  units = _units(rng)
  a = scores.bootstrap_means(units, draws=300, seed=5)
  assert np.array_equal(a, scores.bootstrap_means(units, draws=300, seed=5))
  assert not np.array_equal(a, scores.bootstrap_means(units, draws=300, seed=6))
  # Concepts differ, instructions within a concept do not: only the concept draw spreads it.
  flat = [np.zeros((1, 5, 2)), np.full((1, 5, 2), 2.0)]
  assert scores.paired_bootstrap(flat, ['m'], draws=2000)['m']['ci'] == [0.0, 2.0]
  # One concept, instructions differ: the instruction draw spreads it.
  one = [np.array([[[0.0], [2.0]]])]
  assert scores.paired_bootstrap(one, ['m'], draws=2000)['m']['ci'] == [0.0, 2.0]
  # Samples of one instruction travel together: nothing to resample.
  together = [np.array([[[0.0, 2.0]]])]
  assert scores.paired_bootstrap(together, ['m'], draws=200)['m']['ci'] == [1.0, 1.0]


def test_concept_bootstrap_and_sides():
  a, b = [0.10, 0.20, 0.30], [0.50, 0.30, 0.70]
  out = scores.concept_bootstrap(a, b, weight=0.5, draws=500, seed=1)
  assert out['value'] == pytest.approx(np.mean(a) - 0.5 * np.mean(b)) and out['concepts'] == 3
  low, high = out['ci']
  # the concept means of a - b/2 are -0.15, 0.05, -0.05: every draw lies between their extremes
  assert -0.15 - 1e-12 <= low <= out['value'] <= high <= 0.05 + 1e-12
  assert scores.concept_bootstrap(a, b, 0.5, 500, 1) == out  # seeded
  same = scores.concept_bootstrap([0.2, 0.4], [0.4, 0.8], weight=0.5)
  assert same['value'] == pytest.approx(0.0) and same['ci'] == pytest.approx([0.0, 0.0])
  assert [scores.side(c) for c in ([0.1, 0.3], [-0.3, -0.1], [-0.1, 0.2])] == [
      'above 0', 'below 0', 'spans 0']
  with pytest.raises(ValueError, match='one value per concept'):
    scores.concept_bootstrap([0.1], [0.1, 0.2])
