"""The two optimizer partitions: own LRs, linear decay, direction-only per-concept clipping."""

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
