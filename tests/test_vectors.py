"""SteeringVectors, the one steering-vector type: building, picking, scaling, the generation
seam it hands to generate_ids, save/load, and the evaluation prompting each method with its own
vectors' chat template."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from prosv_jax import steer
from prosv_jax.artifacts import load_vectors
from prosv_jax.errors import ProsvError
from prosv_jax.eval import steering
from prosv_jax.vectors import SteeringVectors

CONCEPTS = [{'concept_id': 7, 'description': 'the ocean'}, {'concept_id': 9, 'description': 'cats'}]


def make(**overrides):
  rng = np.random.default_rng(0)
  kwargs = dict(layer=3, positions='p2+s2', concepts=CONCEPTS, model='tiny',
                chat_template='gemma', training={'epochs': 1})
  return SteeringVectors.create(np.array([2.0, 5.0]), rng.normal(size=(2, 4)),
                                **{**kwargs, **overrides})


def test_create_fills_and_checks_the_config():
  v = make()
  assert v.factor.dtype == np.float32 and v.direction.shape == (2, 4) and len(v) == 2
  assert (v.layer, v.positions, v.model, v.width, v.chat_template) == (3, 'p2+s2', 'tiny', 4,
                                                                       'gemma')
  assert v.parsed_positions == steer.Positions(first=2, last=2)
  assert [c['index'] for c in v.concepts] == [0, 1]
  assert v.config['training'] == {'epochs': 1}  # metadata is kept
  with pytest.raises(ProsvError, match='valid forms'):
    make(positions='first2')
  with pytest.raises(ProsvError, match='config concepts has 1 entries'):
    make(concepts=CONCEPTS[:1])


def test_pick_and_scaled():
  v = make()
  for concept in (1, '9', 'cats', 'CATS'):
    one = v.pick(concept)
    assert len(one) == 1 and one.concepts[0]['concept_id'] == 9 and one.concepts[0]['index'] == 0
    np.testing.assert_array_equal(one.direction, v.direction[1:])
    assert (one.layer, one.positions, one.chat_template) == (v.layer, v.positions, 'gemma')
  with pytest.raises(ProsvError, match="no concept 'dogs'"):
    v.pick('dogs')
  half = v.scaled(0.5)
  np.testing.assert_array_equal(half.factor, np.float32([1.0, 2.5]))
  np.testing.assert_array_equal(half.direction, v.direction)
  np.testing.assert_array_equal(v.factor, np.float32([2.0, 5.0]))  # the original is unchanged


def test_stack_joins_sets_trained_apart():
  v = make()
  both = SteeringVectors.stack([v.pick('cats'), v.pick('the ocean')])
  assert [c['concept_id'] for c in both.concepts] == [9, 7]
  assert [c['index'] for c in both.concepts] == [0, 1]
  np.testing.assert_array_equal(both.factor, np.float32([5.0, 2.0]))
  np.testing.assert_array_equal(both.direction, v.direction[::-1])
  assert (both.layer, both.positions, both.model, both.chat_template) == (3, 'p2+s2', 'tiny',
                                                                          'gemma')
  assert both.config['training_runs'] == [{'epochs': 1}, {'epochs': 1}]
  with pytest.raises(ProsvError, match='different layer'):
    SteeringVectors.stack([v, make(layer=4)])


def test_generation_kwargs_give_each_row_its_concept_and_multiplier():
  v = make(positions='all')
  kwargs = v.generation_kwargs(['9', 0, 'cats'], [1.0, 2.0, 0.5])
  assert kwargs['steer_layer'] == 3 and kwargs['steer_decode']
  h = jnp.zeros((3, 1, 4))
  edit = np.asarray(kwargs['steer'](h))[:, 0]
  want = np.stack([5.0 * v.direction[1], 4.0 * v.direction[0], 2.5 * v.direction[1]])
  np.testing.assert_allclose(edit, want, rtol=1e-6)
  # One number scales every row; the mask is the spec's, as steer.generation_kwargs makes it.
  same = v.generation_kwargs([1, 1])
  np.testing.assert_allclose(np.asarray(same['steer'](jnp.zeros((2, 1, 4))))[:, 0],
                             np.stack([5.0 * v.direction[1]] * 2), rtol=1e-6)
  lengths = jnp.asarray([3, 5])
  raw = steer.generation_kwargs(v.params(), 1, 3, v.parsed_positions, 2)
  np.testing.assert_array_equal(same['steer_mask_fn'](lengths, 8), raw['steer_mask_fn'](lengths, 8))
  with pytest.raises(ProsvError, match='2 concepts but 3 multipliers'):
    v.generation_kwargs([0, 1], [1.0, 2.0, 3.0])
  with pytest.raises(ProsvError, match='names no layer'):
    SteeringVectors(v.factor, v.direction, {'positions': 'all'}).generation_kwargs([0])


def test_check_model():
  v = make()
  cfg = types.SimpleNamespace(hidden_size=4, check_layer=lambda layer: layer)
  v.check_model(cfg)
  with pytest.raises(ProsvError, match='the vectors have width 4 but the model has width 8'):
    v.check_model(types.SimpleNamespace(hidden_size=8, check_layer=lambda layer: layer))


def test_save_and_load_round_trip(tmp_path):
  v = make()
  loaded = load_vectors(v.save(tmp_path / 'v'))
  np.testing.assert_array_equal(loaded.factor, v.factor)
  np.testing.assert_array_equal(loaded.direction, v.direction)
  for key in ('layer', 'positions', 'model', 'chat_template', 'concepts'):
    assert getattr(loaded, key) == getattr(v, key), key
  assert loaded.config['training'] == {'epochs': 1}
  again = load_vectors(loaded.scaled(2.0).save(tmp_path / 'w'))  # a loaded set re-saves
  np.testing.assert_array_equal(again.factor, 2 * v.factor)


def test_chat_template_of_older_files_comes_from_training():
  v = make(chat_template='')
  assert v.chat_template == ''
  old = SteeringVectors(v.factor, v.direction, {'training': {'chat_template': 'gemma'}})
  assert old.chat_template == 'gemma'


def test_each_evaluation_group_is_prompted_with_its_own_template(monkeypatch, tmp_path):
  """Two vector sets with different templates share one tokenizer: no template leaks."""
  seen = []
  monkeypatch.setattr(steering, 'chat_prompt_ids',
                      lambda tok, text, template='': seen.append(template) or [1, 2])
  monkeypatch.setattr(steering, 'generate_ids', lambda params, cfg, ids, **kw: [[0]] * len(ids))
  tokenizer = types.SimpleNamespace(decode=lambda ids, skip_special_tokens: 'x')
  setup = steering.Setup(
      model=types.SimpleNamespace(tokenizer=tokenizer, params=None, cfg=None),
      vectors={'prosv': make(chat_template='gemma'), 'fssv': make(chat_template='{{ x }}')},
      descriptions={7: 'the ocean'}, instructions={7: ['hi']}, chat_template='base')
  store = steering.Store(str(tmp_path / 'generations.jsonl'))
  groups = [steering.Group(m, 7) for m in ('unsteered', 'prompting', 'fssv', 'prosv')]
  steering.generate_groups(setup, groups, store)
  by_method = {}
  for rec, template in zip(store.records.values(), seen):
    by_method[rec['method']] = template
  assert by_method == {'unsteered': 'base', 'prompting': 'base', 'fssv': '{{ x }}',
                       'prosv': 'gemma'}



def test_baselines_take_the_evaluated_vectors_template():
  from prosv_jax.eval.config import eval_config
  from prosv_jax.eval.evaluate import baseline_template
  c = eval_config()
  assert c.chat_template == 'vectors'
  assert baseline_template(c, {'prosv': make(chat_template='gemma')}) == 'gemma'
  assert baseline_template(c, {}) == ''  # nothing evaluated: the tokenizer's own
  both = {'prosv': make(chat_template='gemma'), 'fssv': make(chat_template='')}
  with pytest.raises(ProsvError, match='different chat templates.*set --config.chat_template'):
    baseline_template(c, both)
  c.chat_template = ''  # explicit: the tokenizer's own
  assert baseline_template(c, both) == ''
