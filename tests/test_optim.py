"""The two optimizer partitions: own LRs, linear decay, direction-only per-concept clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prosv_jax.train import optim
from prosv_jax.train.config import base_config
from prosv_jax.errors import ProsvError


def _cfg(**kw):
  c = base_config().optim
  c.base_width = 0  # LRs as given at any width, unless a test sets one
  for k, v in kw.items():
    c[k] = v
  return c


def _run(tx, grads_seq, params):
  state = tx.init(params)
  moves = []
  for g in grads_seq:
    updates, state = tx.update(g, state, params)
    moves.append(jax_np(updates))
    params = optax.apply_updates(params, updates)
  return moves


def jax_np(tree):
  return {k: np.asarray(v) for k, v in tree.items()}


def test_each_partition_gets_its_own_lr_with_linear_decay():
  tx = optim.make_optimizer(_cfg(factor_lr=10.0, direction_lr=0.04), total_steps=4, width=8)
  params = {'factor': jnp.ones(2), 'direction': jnp.ones((2, 8))}
  g = {'factor': jnp.full(2, 0.3), 'direction': jnp.full((2, 8), 0.01)}
  moves = _run(tx, [g] * 4, params)
  # Adam with a constant gradient moves each coordinate by its LR; the LR decays to 0 linearly.
  for k, m in enumerate(moves):
    np.testing.assert_allclose(m['factor'], -10.0 * (1 - k / 4), rtol=1e-4)
    np.testing.assert_allclose(m['direction'], -0.04 * (1 - k / 4), rtol=1e-4)


def test_only_the_direction_is_clipped():
  tx = optim.make_optimizer(_cfg(factor_lr=1.0, direction_lr=1.0), total_steps=1000, width=1)
  params = {'factor': jnp.ones(1), 'direction': jnp.ones((1, 1))}
  big, small = 100.0, 1.0  # clipped to norm 1, both direction gradients look the same to Adam
  moves = _run(tx, [{'factor': jnp.full(1, big), 'direction': jnp.full((1, 1), big)},
                    {'factor': jnp.full(1, small), 'direction': jnp.full((1, 1), small)}], params)
  lr2 = 1.0 * (1 - 1 / 1000)
  np.testing.assert_allclose(moves[1]['direction'], -lr2, rtol=1e-4)
  # Unclipped factor: m_hat / sqrt(v_hat) after gradients 100 then 1.
  m = (0.9 * 0.1 * big + 0.1 * small) / (1 - 0.9 ** 2)
  v = (0.999 * 0.001 * big ** 2 + 0.001 * small ** 2) / (1 - 0.999 ** 2)
  np.testing.assert_allclose(moves[1]['factor'], -lr2 * m / np.sqrt(v), rtol=1e-3)


def test_clip_is_per_concept():
  clip = optim.clip_per_concept(1.0)
  g = jnp.array([[3.0, 4.0], [0.3, 0.4]])
  out, _ = clip.update(g, clip.init(g))
  np.testing.assert_allclose(np.asarray(out), [[0.6, 0.8], [0.3, 0.4]], rtol=1e-6)


def test_width_transfer_rule():
  c = _cfg(factor_lr=10.0, direction_lr=0.04, base_width=576)
  f, d = optim.scaled_lrs(c, 2304)
  np.testing.assert_allclose([f, d], [10.0 * 2, 0.04 / 2])
  assert optim.scaled_lrs(_cfg(factor_lr=10.0), 2304) == (10.0, 0.04)  # base_width 0: as given


def test_bad_lr_and_step_count():
  with pytest.raises(ProsvError, match='optim.factor_lr'):
    optim.make_optimizer(_cfg(factor_lr=0.0), 10, 8)
  with pytest.raises(ProsvError, match='give more data or epochs'):
    optim.make_optimizer(_cfg(), 0, 8)


def _reference_optimizer(factor_lr, direction_lr, total_steps, clip=1.0):
  """The optimizer as it was before LRs per row: optax.adam over a linear schedule."""
  def adam(lr):
    return optax.adam(optax.linear_schedule(lr, 0.0, total_steps), b1=0.9, b2=0.999, eps=1e-8)
  return optax.multi_transform(
      {'factor': adam(factor_lr),
       'direction': optax.chain(optim.clip_per_concept(clip), adam(direction_lr))},
      {'factor': 'factor', 'direction': 'direction'})


def _random_grads(steps, rows, width, seed=0):
  rng = np.random.default_rng(seed)
  return [{'factor': jnp.asarray(rng.normal(size=rows), jnp.float32),
           'direction': jnp.asarray(rng.normal(size=(rows, width)) * 2, jnp.float32)}
          for _ in range(steps)]


def test_one_lr_for_every_row_is_the_old_optimizer_bit_for_bit():
  params = {'factor': jnp.full(3, 2.0), 'direction': jnp.ones((3, 8)) * 0.1}
  grads = _random_grads(6, 3, 8)
  f, d = optim.scaled_lrs(_cfg(), 8)
  old = _run(_reference_optimizer(f, d, 6), grads, params)
  for row_lrs in (None, [(10.0, 0.04)] * 3):
    new = _run(optim.make_optimizer(_cfg(), 6, 8, row_lrs), grads, params)
    for a, b in zip(new, old):
      np.testing.assert_array_equal(a['factor'], b['factor'])
      np.testing.assert_array_equal(a['direction'], b['direction'])
  # Same state structure: checkpoints of either load into the other.
  tx = optim.make_optimizer(_cfg(), 6, 8, [(1.0, 0.1), (2.0, 0.2), (3.0, 0.3)])
  assert (jax.tree.structure(tx.init(params))
          == jax.tree.structure(_reference_optimizer(f, d, 6).init(params)))


def test_lrs_per_row_equal_one_optimizer_per_row():
  lrs = [(0.5, 0.02), (5.0, 0.04), (50.0, 0.08)]
  params = {'factor': jnp.asarray([1.0, 2.0, 3.0]),
            'direction': jnp.asarray(np.random.default_rng(1).normal(size=(3, 8)), jnp.float32)}
  grads = _random_grads(5, 3, 8, seed=2)
  together = _run(optim.make_optimizer(_cfg(), 5, 8, lrs), grads, params)
  for k, (f, d) in enumerate(lrs):
    alone = _run(_reference_optimizer(f, d, 5), [{key: g[key][k:k + 1] for key in g}
                                                 for g in grads],
                 {key: p[k:k + 1] for key, p in params.items()})
    for a, b in zip(together, alone):
      np.testing.assert_allclose(a['factor'][k:k + 1], b['factor'], rtol=1e-6)
      np.testing.assert_allclose(a['direction'][k:k + 1], b['direction'], rtol=1e-6)
  with pytest.raises(ProsvError, match='optim.direction_lr=0.0'):
    optim.make_optimizer(_cfg(), 5, 8, [(1.0, 0.1), (1.0, 0.0)])


def test_width_rule_applies_to_every_row():
  c = _cfg(base_width=16)
  assert optim.scaled_lrs(c, 64, 2.0, 0.5) == (2.0 * 2, 0.5 / 2)
  tx = optim.make_optimizer(c, 4, 64, [(1.0, 0.1), (4.0, 0.1)])
  params = {'factor': jnp.ones(2), 'direction': jnp.ones((2, 64))}
  moves = _run(tx, [{'factor': jnp.full(2, 0.3), 'direction': jnp.full((2, 64), 0.01)}], params)
  np.testing.assert_allclose(moves[0]['factor'], [-2.0, -8.0], rtol=1e-4)
  np.testing.assert_allclose(moves[0]['direction'], -0.05, rtol=1e-4)


def test_rows_fail_by_whole_cell_and_frozen_rows_keep_their_values():
  ok = jnp.asarray([True, False, True, True])
  np.testing.assert_array_equal(optim.whole_cells(ok, (0, 0, 1, 1)), [False, False, True, True])
  np.testing.assert_array_equal(optim.whole_cells(ok, None), [False] * 4)
  new = {'a': jnp.arange(4.0), 'b': jnp.ones((4, 2)), 'count': jnp.asarray(5)}
  old = {'a': jnp.zeros(4), 'b': jnp.zeros((4, 2)), 'count': jnp.asarray(4)}
  kept = optim.keep_rows(new, old, jnp.asarray([True, False, True, False]))
  np.testing.assert_array_equal(kept['a'], [0.0, 0.0, 2.0, 0.0])
  np.testing.assert_array_equal(kept['b'][:, 0], [1.0, 0.0, 1.0, 0.0])
  assert int(kept['count']) == 5  # shared counters move on
