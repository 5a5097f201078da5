"""The steering transform: specs, masks, init statistics, per-row concepts, factor 0."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prosv_jax import steer
from prosv_jax.errors import ProsvError
from prosv_jax.models import transformer
from prosv_jax.models.config import ModelConfig


@pytest.mark.parametrize('spec,want', [
    ('p2+s2', steer.Positions(first=2, last=2)), ('p3', steer.Positions(first=3)),
    ('s1', steer.Positions(last=1)), ('prompt', steer.Positions(whole_prompt=True)),
    ('all', steer.Positions(full_sequence=True)), (' P1+S4 ', steer.Positions(first=1, last=4))])
def test_parse_valid_specs(spec, want):
  assert steer.parse_positions(spec) == want


@pytest.mark.parametrize('spec', ['', 'p', 'p2s2', '+s2', 's2+p2', 'p2+', 'x3', 'p0', 'first2'])
def test_parse_rejects_with_valid_forms(spec):
  with pytest.raises(ProsvError, match='valid forms: pN, sM, pN\\+sM'):
    steer.parse_positions(spec)


def test_mask_counts_on_each_rows_own_prompt():
  prompt_len = jnp.array([5, 3, 1])
  length = jnp.array([8, 6, 1])
  got = np.asarray(steer.position_mask(steer.parse_positions('p2+s2'), prompt_len, length, 9))
  want = np.zeros((3, 9), bool)
  want[0, [0, 1, 3, 4]] = True
  want[1, [0, 1, 2]] = True  # first 2 and last 2 overlap on a 3-token prompt
  want[2, [0]] = True  # never more than the prompt
  np.testing.assert_array_equal(got, want)
  full = np.asarray(steer.position_mask(steer.parse_positions('all'), prompt_len, length, 9))
  np.testing.assert_array_equal(full, np.arange(9)[None] < np.asarray(length)[:, None])
  prompt = np.asarray(steer.position_mask(steer.parse_positions('prompt'), prompt_len, length, 9))
  np.testing.assert_array_equal(prompt, np.arange(9)[None] < np.asarray(prompt_len)[:, None])


@pytest.mark.parametrize('spec', ['p2+s2', 'p1', 's3', 'prompt', 'all'])
def test_left_padding_shifts_the_mask_with_the_row(spec):
  pos = steer.parse_positions(spec)
  prompt_len, length, width = jnp.array([5, 3]), jnp.array([7, 4]), 10
  right = np.asarray(steer.position_mask(pos, prompt_len, length, width))
  pad = width - length
  left = np.asarray(steer.position_mask(pos, prompt_len, length, width, pad_left=pad))
  for row in range(2):
    np.testing.assert_array_equal(left[row, int(pad[row]):], right[row, :int(length[row])])
    assert not left[row, :int(pad[row])].any()  # padding is never edited


def test_init_statistics():
  n, beta, s = 2304, 4.0, 8.0
  p = steer.init_steer_params(jax.random.key(42), n, 20, beta, s)
  np.testing.assert_allclose(np.asarray(p['factor']), beta * math.sqrt(n))
  d = np.asarray(p['direction'])
  bound = s / math.sqrt(n)
  assert d.shape == (20, n) and d.dtype == np.float32
  assert np.abs(d).max() <= bound and np.abs(d).max() > 0.99 * bound
  # ||v0|| ~ s / sqrt(3): each norm within 5 sigma (sigma ~ 0.93% here), their mean within 1%.
  norms = np.linalg.norm(d, axis=-1)
  np.testing.assert_allclose(norms, s / math.sqrt(3), rtol=0.05)
  np.testing.assert_allclose(norms.mean(), s / math.sqrt(3), rtol=0.01)
  np.testing.assert_allclose(d.mean(), 0.0, atol=4 * bound / math.sqrt(3 * d.size))


def test_each_row_uses_its_own_concept():
  params = {'factor': jnp.array([1.0, 2.0]), 'direction': jnp.array([[1.0, 0.0], [0.0, 1.0]])}
  h = jnp.zeros((3, 2, 2))
  out = np.asarray(steer.apply_steer(params, jnp.array([0, 1, 0]), h))
  np.testing.assert_array_equal(out[:, 0], [[1, 0], [0, 2], [1, 0]])


def test_each_token_may_carry_its_own_concept():
  """Packed rows mix examples: concept ids [B, T] pick per token, and rows of one id give
  exactly the per-row result."""
  params = {'factor': jnp.array([1.0, 2.0]), 'direction': jnp.array([[1.0, 0.0], [0.0, 1.0]])}
  h = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 2)), jnp.float32)
  per_row = np.asarray(steer.apply_steer(params, jnp.array([1, 0]), h))
  per_token = np.asarray(steer.apply_steer(params, jnp.array([[1, 1, 1], [0, 0, 0]]), h))
  assert np.array_equal(per_row, per_token)
  mixed = np.asarray(steer.apply_steer(params, jnp.array([[0, 1, 0], [1, 1, 0]]),
                                       jnp.zeros((2, 3, 2))))
  np.testing.assert_array_equal(mixed, [[[1, 0], [0, 2], [1, 0]], [[0, 2], [0, 2], [1, 0]]])


@pytest.mark.parametrize('spec', ['p2+s2', 'p1', 's3', 'prompt', 'all'])
def test_token_mask_counts_on_each_tokens_own_example(spec):
  """Two examples side by side in one row, then padding (length 0): the same mask as each
  alone in its own right-padded row."""
  pos = steer.parse_positions(spec)
  prompt_len, length = np.array([5, 3]), np.array([7, 4])
  alone = np.asarray(steer.position_mask(pos, prompt_len, length, 7))
  example = np.array([0] * 7 + [1] * 4 + [-1] * 2)
  rel = np.concatenate([np.arange(7), np.arange(4), [0, 0]])
  per = lambda v: np.where(example >= 0, v[np.maximum(example, 0)], 0)
  got = np.asarray(steer.token_mask(pos, rel, per(prompt_len), per(length)))
  np.testing.assert_array_equal(got[:7], alone[0])
  np.testing.assert_array_equal(got[7:11], alone[1, :4])
  assert not got[11:].any()


def test_factor_zero_is_bit_identical():
  cfg = ModelConfig(family='llama', vocab_size=61, hidden_size=32, intermediate_size=40,
                    num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8)
  params = transformer.init_params(cfg, jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 61, (2, 7)))
  pos, valid = transformer.positions_from_lengths(np.array([7, 4]), 7, False)
  sp = steer.init_steer_params(jax.random.key(1), 32, 2, 0.0, 8.0)
  base = transformer.forward(params, cfg, tokens, pos, valid).logits
  zero = transformer.forward(params, cfg, tokens, pos, valid, steer=steer.steer_fn(sp, [0, 1]),
                             steer_mask=jnp.ones((2, 7), bool), steer_layer=1).logits
  assert np.array_equal(np.asarray(base), np.asarray(zero))
  sp['factor'] = jnp.ones(2)
  one = transformer.forward(params, cfg, tokens, pos, valid, steer=steer.steer_fn(sp, [0, 1]),
                            steer_mask=jnp.ones((2, 7), bool), steer_layer=1).logits
  assert not np.array_equal(np.asarray(base), np.asarray(one))


@pytest.mark.parametrize('spec', ['p2+s2', 'all'])
def test_steered_generation_equals_full_forward_with_the_spec_mask(spec):
  """PrOSV: prefill-only edits at p2+s2 (left-padded) == a right-padded full forward editing
  those prompt positions only. FSSV ('all'): prefill and every decode step == editing all."""
  from prosv_jax import sampling
  cfg = ModelConfig(family='llama', vocab_size=61, hidden_size=32, intermediate_size=40,
                    num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8, pad_id=0, eos_ids=(1,))
  params = jax.tree.map(lambda a: a * 6 if a.ndim == 3 else a,
                        transformer.init_params(cfg, jax.random.key(0)))
  sp = steer.init_steer_params(jax.random.key(5), 32, 2, 4.0, 8.0)
  pos = steer.parse_positions(spec)
  prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
  sc = sampling.SamplingConfig(max_new_tokens=5)
  kwargs = steer.generation_kwargs(sp, 1, 1, pos, len(prompts))
  gen = sampling.generate_ids(params, cfg, prompts, sampling=sc, **kwargs)
  assert gen != sampling.generate_ids(params, cfg, prompts, sampling=sc)
  for prompt, new in zip(prompts, gen):
    seq = prompt + new
    t = len(seq)
    p, v = transformer.positions_from_lengths(np.array([t]), t, False)
    mask = steer.position_mask(pos, jnp.array([len(prompt)]), jnp.array([t]), t)
    logits = transformer.forward(params, cfg, jnp.asarray([seq]), p, v,
                                 steer=steer.steer_fn(sp, [1]), steer_mask=mask,
                                 steer_layer=1).logits[0]
    want = [int(i) for i in jnp.argmax(logits[len(prompt) - 1:-1], axis=-1)]
    assert new == want
