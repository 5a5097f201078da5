"""The steering optimizer: two optax partitions, factor and direction, with their own LRs.

Both are Adam without weight decay and a linear decay from the base LR to 0 over the run; only
the direction gradient is clipped, and per concept (each concept's [n] gradient by its own
norm) so K concepts trained in one step behave exactly like K separate runs.

The muP-style rule: the factor starts at beta * sqrt(n) and directions at ~s / sqrt(n) per
coordinate, while Adam moves every coordinate by about one LR per step. So that the relative
step stays put when the width changes, LRs given at `base_width` are scaled to width n by
(n / base_width) ** exponent: +1/2 for the factor, -1/2 for the direction by default.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from prosv_jax.errors import ProsvError


def scaled_lrs(optim_cfg, width: int) -> tuple[float, float]:
  """(factor LR, direction LR) for a model of hidden width `width`."""
  factor_lr, direction_lr = float(optim_cfg.factor_lr), float(optim_cfg.direction_lr)
  if optim_cfg.base_width:
    ratio = width / float(optim_cfg.base_width)
    factor_lr *= ratio ** optim_cfg.factor_lr_width_exponent
    direction_lr *= ratio ** optim_cfg.direction_lr_width_exponent
  return factor_lr, direction_lr


def clip_per_concept(max_norm: float) -> optax.GradientTransformation:
  """Scales each row g[k] of a [K, n] gradient to norm <= max_norm (global-norm clip for K=1)."""

  def clip(g):
    norms = jnp.sqrt(jnp.sum(jnp.square(g), axis=-1, keepdims=True))
    return g * jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-30))

  def update(updates, state, params=None):
    del params  # multi_transform hands over the partition's subtree
    return jax.tree.map(clip, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(optim_cfg, total_steps: int, width: int) -> optax.GradientTransformation:
  """The multi_transform over {'factor': [K], 'direction': [K, n]} steering params."""
  if total_steps < 1:
    raise ProsvError(f'training would run {total_steps} steps; give more data or epochs')
  factor_lr, direction_lr = scaled_lrs(optim_cfg, width)
  for name, lr in (('factor_lr', factor_lr), ('direction_lr', direction_lr)):
    if not lr > 0:
      raise ProsvError(f'optim.{name}={lr}; give a positive learning rate')

  return _optimizer(float(factor_lr), float(direction_lr), float(optim_cfg.b1),
                    float(optim_cfg.b2), float(optim_cfg.eps), float(optim_cfg.clip_direction),
                    int(total_steps))


# The optimizer is a static argument of the jitted step, hashed by identity: runs with the same
# settings (one concept after another, a sweep in one process) get the same object back and so
# reuse the compiled step instead of compiling it again.
@functools.lru_cache(maxsize=64)
def _optimizer(factor_lr, direction_lr, b1, b2, eps, clip, total_steps):
  def adam(lr):
    schedule = optax.linear_schedule(lr, 0.0, total_steps)
    return optax.adam(schedule, b1=b1, b2=b2, eps=eps)

  direction = adam(direction_lr)
  if clip:
    direction = optax.chain(clip_per_concept(clip), direction)
  return optax.multi_transform({'factor': adam(factor_lr), 'direction': direction},
                               {'factor': 'factor', 'direction': 'direction'})


def finite(tree) -> jax.Array:
  """True when every leaf is finite (one scalar, cheap enough to check every step)."""
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# Bound on |factor| and on each direction's norm: past it a run has diverged, even while its
# loss stays finite (factor_lr=1e30 once gave factor -3e30 and a zero direction gradient).
# The factor starts at beta * sqrt(n) (~10..300 for the paper's betas and widths) and the
# directions at norm ~s / sqrt(3); Adam moves a coordinate by about one LR per step, so even
# LR MAX_LR (config.py) for a few hundred steps stays below it, while an edit this large swamps
# any residual stream (RMS O(1..100)).
MAX_PARAM = 1e6


def bounded(params, max_param: float) -> jax.Array:
  """True when |factor| and every direction norm are at most max_param (and finite)."""
  factor_ok = jnp.all(jnp.abs(params['factor']) <= max_param)
  norms = jnp.linalg.norm(params['direction'], axis=-1)
  return factor_ok & jnp.all(norms <= max_param)
