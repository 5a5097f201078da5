"""The frozen decoder: Flax Linen blocks driven by one ModelConfig, run as pure functions.

Weights are a plain pytree (layers stacked on a leading axis) and every entry point here is a
pure function of (params, tokens, positions, validity, cache, steer) that jits. Steering
parameters enter only through the `steer` seam, so they can be differentiated while the frozen
weights stay a non-differentiated argument.

Parameter tree (shapes for D=hidden, H/K=query/kv heads, E=head_dim, F=mlp width, N=layers):
  embed/embedding [V, D]; final_norm/scale [D]; lm_head/kernel [D, V] (untied models only)
  layers/attn_norm/scale [N, D]; layers/attn/{q,k,v}/kernel [N, D, H*E | K*E];
  layers/attn/o/kernel [N, H*E, D]; layers/mlp_norm/scale; layers/mlp/{gate,up}/kernel [N, D, F];
  layers/mlp/down/kernel [N, F, D]; optional biases, sandwich norms and q/k norms.
"""

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prosv_jax.errors import ProsvError
from prosv_jax.models.config import ModelConfig, rope_inv_freq

Params = Any
# steer(h [B, T, D]) -> h', applied where steer_mask is True. A jax.tree_util.Partial lets
# its arrays (the steering parameters) be traced while the function itself stays static.
SteerFn = Callable[[jax.Array], jax.Array]

_MASKED = -2.3819763e38  # most negative bf16/fp32-safe logit: masked rows never give NaN


class RMSNorm(nn.Module):
  eps: float
  plus_one: bool  # Gemma: scale by (1 + w) in fp32, then cast; Llama: cast, then scale by w

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale = self.param('scale', init, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    if self.plus_one:
      return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
    return scale * normed.astype(x.dtype)


class AttnContext(NamedTuple):
  """What attention needs besides the hidden states; built once per call, shared by layers."""
  q_slot: jax.Array  # [B, T] index of each query in the key axis
  q_pos: jax.Array  # [B, T] rope position of each query
  k_pos: jax.Array  # [B, S] rope position of each key slot
  k_valid: jax.Array  # [B, S] whether a key slot holds a real token
  cos: jax.Array  # [B, T, E/2] global-attention rope
  sin: jax.Array
  cos_local: jax.Array  # sliding-window-layer rope (same as global when there is one rope)
  sin_local: jax.Array
  # Packed rows (several examples per row): the example each query / key slot belongs to
  # [B, T] / [B, S]; a query sees only keys of its own example. None: one example per row.
  q_seg: jax.Array | None = None
  k_seg: jax.Array | None = None


def _rotate(x, cos, sin):
  # Non-interleaved ("rotate half") layout, as in Hugging Face checkpoints.
  x1, x2 = jnp.split(x, 2, axis=-1)
  cos = cos[:, :, None, :].astype(x.dtype)
  sin = sin[:, :, None, :].astype(x.dtype)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class Attention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, ctx: AttnContext, is_sliding, kv_cache, cache_index):
    cfg = self.cfg
    b, t, _ = x.shape
    e, h, kh = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    q = nn.Dense(h * e, use_bias=cfg.qkv_bias, name='q')(x).reshape(b, t, h, e)
    k = nn.Dense(kh * e, use_bias=cfg.qkv_bias, name='k')(x).reshape(b, t, kh, e)
    v = nn.Dense(kh * e, use_bias=cfg.qkv_bias, name='v')(x).reshape(b, t, kh, e)
    if cfg.qk_norm:
      q = RMSNorm(cfg.rms_norm_eps, cfg.norm_plus_one, name='q_norm')(q)
      k = RMSNorm(cfg.rms_norm_eps, cfg.norm_plus_one, name='k_norm')(k)
    cos = jnp.where(is_sliding, ctx.cos_local, ctx.cos)
    sin = jnp.where(is_sliding, ctx.sin_local, ctx.sin)
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)

    if kv_cache is not None:  # write this chunk into the layer's cache slots, attend over all
      k_all, v_all, layer = kv_cache  # [N, B, S, K, E] for every layer; write in place
      k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype),
                                           (layer, 0, cache_index, 0, 0))
      v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype),
                                           (layer, 0, cache_index, 0, 0))
      new_cache = (k_all, v_all)
      k, v = k_all[layer], v_all[layer]
    else:
      new_cache = None
    k_all, v_all = k, v

    s = k_all.shape[1]
    q = q.reshape(b, t, kh, h // kh, e)
    logits = jnp.einsum('btkge,bske->bkgts', q, k_all.astype(q.dtype),
                        preferred_element_type=jnp.float32) * cfg.attn_scale
    if cfg.attn_softcap:
      logits = jnp.tanh(logits / cfg.attn_softcap) * cfg.attn_softcap
    allowed = (jnp.arange(s)[None, None, :] <= ctx.q_slot[:, :, None]) & ctx.k_valid[:, None, :]
    if ctx.q_seg is not None:  # segments are contiguous: with the above, causal per example
      allowed = allowed & (ctx.q_seg[:, :, None] == ctx.k_seg[:, None, :])
    if cfg.sliding_window:
      near = (ctx.q_pos[:, :, None] - ctx.k_pos[:, None, :]) < cfg.sliding_window
      allowed = allowed & (near | ~is_sliding)
    logits = jnp.where(allowed[:, None, None, :, :], logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_all.dtype)
    out = jnp.einsum('bkgts,bske->btkge', probs, v_all).reshape(b, t, h * e)
    return nn.Dense(cfg.hidden_size, use_bias=cfg.o_bias, name='o')(out), new_cache


class MLP(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    gate = nn.Dense(cfg.intermediate_size, use_bias=cfg.mlp_bias, name='gate')(x)
    up = nn.Dense(cfg.intermediate_size, use_bias=cfg.mlp_bias, name='up')(x)
    act = jax.nn.silu(gate) if cfg.activation == 'silu' else jax.nn.gelu(gate, approximate=True)
    return nn.Dense(cfg.hidden_size, use_bias=cfg.mlp_bias, name='down')(act * up)


class Block(nn.Module):
  """One decoder block; Gemma's sandwich norms are a config switch, not another class."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, ctx, is_sliding, kv_cache=None, cache_index=0):
    cfg = self.cfg
    norm = lambda name: RMSNorm(cfg.rms_norm_eps, cfg.norm_plus_one, name=name)
    a, new_cache = Attention(cfg, name='attn')(norm('attn_norm')(x), ctx, is_sliding, kv_cache,
                                               cache_index)
    if cfg.sandwich_norms:
      a = norm('post_attn_norm')(a)
    x = x + a
    m = MLP(cfg, name='mlp')(norm('mlp_norm')(x))
    if cfg.sandwich_norms:
      m = norm('post_mlp_norm')(m)
    return x + m, new_cache


# ---------------------------------------------------------------- pure functions over params

def init_params(cfg: ModelConfig, rng: jax.Array, dtype=jnp.float32) -> Params:
  """Random weights of the right shapes (tests and throughput benchmarks)."""
  k_embed, k_layers, k_head = jax.random.split(rng, 3)
  ctx = attention_context(cfg, jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool))
  x = jnp.zeros((1, 1, cfg.hidden_size), dtype)
  layers = jax.vmap(lambda k: Block(cfg).init(k, x, ctx, False)['params'])(
      jax.random.split(k_layers, cfg.num_layers))
  params = {
      'embed': {'embedding': 0.02 * jax.random.normal(k_embed, (cfg.vocab_size, cfg.hidden_size))},
      'layers': layers,
      'final_norm': {'scale': jnp.zeros if cfg.norm_plus_one else jnp.ones}
  }
  params['final_norm']['scale'] = params['final_norm']['scale']((cfg.hidden_size,))
  if not cfg.tie_embeddings:
    params['lm_head'] = {
        'kernel': 0.02 * jax.random.normal(k_head, (cfg.hidden_size, cfg.vocab_size))}
  return jax.tree.map(lambda a: a.astype(dtype), params)


def param_shapes(cfg: ModelConfig) -> Params:
  """The parameter tree as ShapeDtypeStructs, for validating loaded weights."""
  return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


def _rope_tables(cfg, rope, positions):
  inv = jnp.asarray(rope_inv_freq(rope, cfg.head_dim), jnp.float32)
  angles = positions.astype(jnp.float32)[..., None] * inv  # [B, T, E/2]
  return jnp.cos(angles), jnp.sin(angles)


def attention_context(cfg, positions, valid, cache=None, cache_index=0,
                      segment=None) -> AttnContext:
  """Rope tables and key positions/validity shared by every layer of one call.

  segment [B, T]: for packed rows (no cache), the example of each token; positions are then
  each token's index within its own example, so every example sees what it would alone.
  """
  if segment is not None and cache is not None:
    raise ProsvError('packed rows (segment) take no KV cache; pass one of them')
  b, t = positions.shape
  cos, sin = _rope_tables(cfg, cfg.rope, positions)
  cos_l, sin_l = _rope_tables(cfg, cfg.rope_local, positions) if cfg.rope_local else (cos, sin)
  q_slot = jnp.broadcast_to(cache_index + jnp.arange(t, dtype=jnp.int32), (b, t))
  if cache is None:
    k_pos, k_valid = positions, valid
  else:
    k_pos = jax.lax.dynamic_update_slice_in_dim(cache['pos'], positions.astype(jnp.int32),
                                                cache_index, axis=1)
    k_valid = jax.lax.dynamic_update_slice_in_dim(cache['valid'], valid, cache_index, axis=1)
  return AttnContext(q_slot, positions, k_pos, k_valid, cos, sin, cos_l, sin_l, segment, segment)


def embed(params: Params, cfg: ModelConfig, tokens: jax.Array) -> jax.Array:
  table = params['embed']['embedding']
  h = jnp.take(table, tokens, axis=0)  # [B, T, D]
  if cfg.scale_embeddings:
    h = h * jnp.asarray(cfg.hidden_size ** 0.5, h.dtype)
  return h


def head(params: Params, cfg: ModelConfig, h: jax.Array) -> jax.Array:
  """Final norm and LM head: hidden [..., D] -> fp32 logits [..., V]."""
  h = RMSNorm(cfg.rms_norm_eps, cfg.norm_plus_one).apply({'params': params['final_norm']}, h)
  if cfg.tie_embeddings:
    kernel = params['embed']['embedding'].T
  else:
    kernel = params['lm_head']['kernel']
  logits = jnp.einsum('...d,dv->...v', h, kernel.astype(h.dtype),
                      preferred_element_type=jnp.float32)
  if cfg.final_softcap:
    logits = jnp.tanh(logits / cfg.final_softcap) * cfg.final_softcap
  return logits


def run_blocks(params: Params, cfg: ModelConfig, h, ctx: AttnContext, start: int, stop: int,
               remat: bool = False):
  """Blocks start..stop-1 without a cache, as one lax.scan over the stacked weights.

  remat: keep only each block's input for the backward pass and recompute the rest (about one
  more forward of compute for much less memory when differentiating through the blocks).
  """
  if stop <= start:
    return h
  layers = jax.tree.map(lambda a: a[start:stop], params['layers'])
  sliding = jnp.asarray(cfg.sliding_layers[start:stop])
  block = Block(cfg)

  def body(x, xs):
    p, is_sliding = xs
    return block.apply({'params': p}, x, ctx, is_sliding)[0], None

  if remat:
    body = jax.checkpoint(body)
  return jax.lax.scan(body, h, (layers, sliding))[0]


def steer_at(h: jax.Array, steer, mask: jax.Array) -> jax.Array:
  """The steering seam: steer(h) [B, T, D] where mask [B, T] is true, h untouched elsewhere."""
  return jnp.where(mask[..., None], steer(h).astype(h.dtype), h)


def _run_cached(params, cfg, h, ctx, cache, steer, steer_mask, steer_layer):
  """All blocks over a KV cache carried through one scan, so XLA updates it in place.

  The steer edit happens inside the scan after block `steer_layer`: splitting the scan there
  would split (and copy) the cache at every decode step.
  """
  block = Block(cfg)
  index = cache['index']

  def body(carry, xs):
    x, k_all, v_all = carry
    p, is_sliding, layer = xs
    x, (k_all, v_all) = block.apply({'params': p}, x, ctx, is_sliding, (k_all, v_all, layer),
                                    index)
    if steer is not None:
      x = steer_at(x, steer, (layer == steer_layer) & steer_mask)
    return (x, k_all, v_all), None

  xs = (params['layers'], jnp.asarray(cfg.sliding_layers), jnp.arange(cfg.num_layers))
  (h, k, v), _ = jax.lax.scan(body, (h, cache['k'], cache['v']), xs)
  return h, k, v


def init_cache(cfg: ModelConfig, batch: int, size: int, dtype=jnp.float32) -> dict:
  """An empty KV cache of `size` slots per row."""
  shape = (cfg.num_layers, batch, size, cfg.num_kv_heads, cfg.head_dim)
  return {
      'k': jnp.zeros(shape, dtype),
      'v': jnp.zeros(shape, dtype),
      'pos': jnp.zeros((batch, size), jnp.int32),
      'valid': jnp.zeros((batch, size), bool),
      'index': jnp.zeros((), jnp.int32),  # next slot to write (the same for every row)
  }


class Output(NamedTuple):
  logits: jax.Array | None  # [B, T, V] fp32 (None when only hidden states were asked for)
  cache: dict | None
  hidden: jax.Array | None  # [B, T, D] after the last block, before the final norm


def forward(params: Params, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array,
            valid: jax.Array, *, cache: dict | None = None, steer: SteerFn | None = None,
            steer_mask: jax.Array | None = None, steer_layer: int | None = None,
            compute_logits: bool = True) -> Output:
  """The model on tokens [B, T] at rope positions [B, T]; valid [B, T] marks real tokens.

  With a cache, the T new tokens are written at cache['index'] and attend to every valid slot
  before them. With `steer`, the output of block `steer_layer` (0-indexed) becomes
  steer(h) where steer_mask [B, T] is True and stays bit-for-bit h elsewhere.
  """
  if steer is not None:
    cfg.check_layer(steer_layer)
  cache_index = cache['index'] if cache is not None else 0
  ctx = attention_context(cfg, positions, valid, cache, cache_index)
  h = embed(params, cfg, tokens)
  new_cache = None
  if cache is not None:
    h, k, v = _run_cached(params, cfg, h, ctx, cache, steer, steer_mask, steer_layer)
    new_cache = {'k': k, 'v': v, 'pos': ctx.k_pos, 'valid': ctx.k_valid,
                 'index': cache_index + tokens.shape[1]}
  elif steer is None:
    h = run_blocks(params, cfg, h, ctx, 0, cfg.num_layers)
  else:  # split at the seam, so gradients w.r.t. steer never enter blocks 0..L
    h = run_blocks(params, cfg, h, ctx, 0, steer_layer + 1)
    h = steer_at(h, steer, steer_mask)
    h = run_blocks(params, cfg, h, ctx, steer_layer + 1, cfg.num_layers)
  logits = head(params, cfg, h) if compute_logits else None
  return Output(logits, new_cache, h)


def positions_from_lengths(lengths: jax.Array, width: int, left_padded: bool):
  """Rope positions [B, T] and validity [B, T] from each row's own length, never from pad ids."""
  t = jnp.arange(width)[None, :]
  lengths = jnp.asarray(lengths)[:, None]
  if left_padded:
    start = width - lengths
    return jnp.maximum(t - start, 0).astype(jnp.int32), t >= start
  return jnp.minimum(t, jnp.maximum(lengths - 1, 0)).astype(jnp.int32), t < lengths

