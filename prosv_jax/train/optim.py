"""The steering optimizer: two optax partitions, factor and direction, with their own LRs.

Both are Adam without weight decay and a linear decay from the base LR to 0 over the run; only
the direction gradient is clipped, and per concept (each concept's [n] gradient by its own
norm) so K concepts trained in one step behave exactly like K separate runs. The LRs may differ
per param row (grid cells as slots, prosv_jax.train.slots), so a (beta, LR) grid trains in one
step too.

The muP-style rule: the factor starts at beta * sqrt(n) and directions at ~s / sqrt(n) per
coordinate, while Adam moves every coordinate by about one LR per step. So that the relative
step stays put when the width changes, LRs given at `base_width` are scaled to width n by
(n / base_width) ** exponent: +1/2 for the factor, -1/2 for the direction by default.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prosv_jax.errors import ProsvError


def scaled_lrs(optim_cfg, width: int, factor_lr: float | None = None,
               direction_lr: float | None = None) -> tuple[float, float]:
  """(factor LR, direction LR) for a model of hidden width `width`.

  factor_lr / direction_lr: LRs stated at optim_cfg.base_width (default: optim_cfg's own),
  e.g. a grid cell's (prosv_jax.train.slots).
  """
  factor_lr = float(optim_cfg.factor_lr if factor_lr is None else factor_lr)
  direction_lr = float(optim_cfg.direction_lr if direction_lr is None else direction_lr)
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


def scale_rows_by_decaying_lr(lrs: tuple, total_steps: int) -> optax.GradientTransformation:
  """Row k of every update ([S] or [S, n]) times -lrs[k] * (1 - step / total_steps).

  optax.adam takes one (scheduled) LR per leaf; grid cells need one per row. This is
  optax.scale_by_learning_rate(optax.linear_schedule(lr, 0, total_steps)) with an LR per row:
  the same arithmetic (so one LR for every row gives the same numbers) and the same state
  (ScaleByScheduleState), so checkpoints of either load into the other. lrs holds one LR
  (every row) or one per row.
  """
  lr = lrs[0] if len(lrs) == 1 else np.asarray(lrs, np.float32)

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    count = jnp.clip(state.count, 0, total_steps)
    step = -1 * (lr * (1 - count / total_steps))  # optax's linear_schedule, then its sign flip

    def one(g):
      size = step if np.ndim(lr) == 0 else step.reshape((-1,) + (1,) * (g.ndim - 1))
      return jnp.asarray(size, g.dtype) * g

    return (jax.tree.map(one, updates),
            optax.ScaleByScheduleState(count=optax.safe_increment(state.count)))

  return optax.GradientTransformation(init, update)


def make_optimizer(optim_cfg, total_steps: int, width: int,
                   row_lrs=None) -> optax.GradientTransformation:
  """The multi_transform over {'factor': [S], 'direction': [S, n]} steering params.

  row_lrs: one (factor LR, direction LR) per param row, stated at optim_cfg.base_width (grid
    cells, prosv_jax.train.slots); None = optim_cfg's LRs for every row.
  """
  if total_steps < 1:
    raise ProsvError(f'training would run {total_steps} steps; give more data or epochs')
  rows = [scaled_lrs(optim_cfg, width, f, d) for f, d in (row_lrs or [(None, None)])]
  for name, lrs in (('factor_lr', [f for f, _ in rows]), ('direction_lr', [d for _, d in rows])):
    for lr in lrs:
      if not lr > 0:
        raise ProsvError(f'optim.{name}={lr}; give a positive learning rate')

  def distinct(lrs):  # one LR when all rows share it: the same cached optimizer for any K
    lrs = tuple(float(x) for x in lrs)
    return lrs[:1] if len(set(lrs)) == 1 else lrs

  return _optimizer(distinct(f for f, _ in rows), distinct(d for _, d in rows),
                    float(optim_cfg.b1), float(optim_cfg.b2), float(optim_cfg.eps),
                    float(optim_cfg.clip_direction), int(total_steps))


# The optimizer is a static argument of the jitted step, hashed by identity: runs with the same
# settings (one concept after another, a sweep in one process) get the same object back and so
# reuse the compiled step instead of compiling it again.
@functools.lru_cache(maxsize=64)
def _optimizer(factor_lrs, direction_lrs, b1, b2, eps, clip, total_steps):
  def adam(lrs):  # optax.adam(linear_schedule(lr, 0, total_steps)), with an LR per row
    return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                       scale_rows_by_decaying_lr(lrs, total_steps))

  direction = adam(direction_lrs)
  if clip:
    direction = optax.chain(clip_per_concept(clip), direction)
  return optax.multi_transform({'factor': adam(factor_lrs), 'direction': direction},
                               {'factor': 'factor', 'direction': 'direction'})


# Bound on |factor| and on each direction's norm: past it a run has diverged, even while its
# loss stays finite (factor_lr=1e30 once gave factor -3e30 and a zero direction gradient).
# The factor starts at beta * sqrt(n) (~10..300 for the paper's betas and widths) and the
# directions at norm ~s / sqrt(3); Adam moves a coordinate by about one LR per step, so even
# LR MAX_LR (config.py) for a few hundred steps stays below it, while an edit this large swamps
# any residual stream (RMS O(1..100)).
MAX_PARAM = 1e6


def rows_finite(per_row_loss, grads) -> jax.Array:
  """Bool [S]: row s's loss and its factor and direction gradients are finite."""
  return (jnp.isfinite(per_row_loss) & jnp.isfinite(grads['factor'])
          & jnp.all(jnp.isfinite(grads['direction']), axis=-1))


def rows_bounded(params, max_param: float) -> jax.Array:
  """Bool [S]: row s's |factor| and direction norm are at most max_param (and finite)."""
  norms = jnp.linalg.norm(params['direction'], axis=-1)
  return (jnp.abs(params['factor']) <= max_param) & (norms <= max_param)


def whole_cells(ok, slot_cells) -> jax.Array:
  """ok [S] made all-or-nothing per cell: a cell's rows stand or fall together, as its
  separate run stops when any of its concepts goes bad. slot_cells: the cell of each row
  (a static tuple); None = all rows one cell."""
  if slot_cells is None:
    return jnp.broadcast_to(jnp.all(ok), ok.shape)
  cells = jnp.asarray(slot_cells, jnp.int32)
  bad = jax.ops.segment_max((~ok).astype(jnp.int32), cells, max(slot_cells) + 1)
  return bad[cells] == 0


def keep_rows(new, old, keep) -> dict:
  """`new` with the rows where keep [S] is False taken from `old`, in every leaf with a
  leading row axis (params, Adam moments); scalars such as step counters come from `new`."""
  rows = keep.shape[0]

  def one(n, o):
    if np.ndim(n) == 0 or np.shape(n)[0] != rows:
      return n
    return jnp.where(keep.reshape((rows,) + (1,) * (np.ndim(n) - 1)), n, o)

  return jax.tree.map(one, new, old)
