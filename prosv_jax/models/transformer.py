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
  """What attention needs besides the hidden states; built once per call, shared by layers.

  Keys are the call's own T tokens and, with a KV cache, the S cache slots written before it.
  """
  q_slot: jax.Array  # [B, T] index of each query among the call's own tokens
  q_pos: jax.Array  # [B, T] rope position of each query (and of its own key)
  k_pos: jax.Array  # [B, T] rope position of each of the call's own keys
  k_valid: jax.Array  # [B, T] whether each of the call's own tokens is real
  cos: jax.Array  # [B, T, E/2] global-attention rope
  sin: jax.Array
  cos_local: jax.Array  # sliding-window-layer rope (same as global when there is one rope)
  sin_local: jax.Array
  cache_pos: jax.Array | None = None  # [B, S] rope position of each cache slot (KV cache only)
  cache_valid: jax.Array | None = None  # [B, S] slot holds a token written by an earlier call
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
  def __call__(self, x, ctx: AttnContext, is_sliding, kv_cache=None):
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

    if kv_cache is None:  # also returns the keys/values, heads first, for a cache to keep
      out = _attend(cfg, q, k, v, ctx, is_sliding)
      new_kv = (k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))
    else:
      out, new_kv = _attend_cached(cfg, q, k, v, ctx, is_sliding, kv_cache)
    return nn.Dense(cfg.hidden_size, use_bias=cfg.o_bias, name='o')(out), new_kv


def _attend(cfg, q, k, v, ctx, is_sliding):
  """Causal attention of the call's own tokens: q [B, T, H, E], k/v [B, T, K, E] -> [B, T, H*E]."""
  b, t, h, e = q.shape
  kh = cfg.num_kv_heads
  allowed = (jnp.arange(t)[None, None, :] <= ctx.q_slot[:, :, None]) & ctx.k_valid[:, None, :]
  if ctx.q_seg is not None:  # segments are contiguous: with the above, causal per example
    allowed = allowed & (ctx.q_seg[:, :, None] == ctx.k_seg[:, None, :])
  if cfg.sliding_window:
    near = (ctx.q_pos[:, :, None] - ctx.k_pos[:, None, :]) < cfg.sliding_window
    allowed = allowed & (near | ~is_sliding)
  if cfg.attention == 'dot_product' and not cfg.attn_softcap:
    # The GQA layouts match ([B, T, H, E] queries, [B, T, K, E] keys); fully masked (pad)
    # queries get finite outputs here too, and nothing reads them.
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype),
                                        mask=allowed[:, None],
                                        scale=cfg.attn_scale).reshape(b, t, h * e)
  q = q.reshape(b, t, kh, h // kh, e)
  logits = jnp.einsum('btkge,bske->bkgts', q, k.astype(q.dtype),
                      preferred_element_type=jnp.float32) * cfg.attn_scale
  if cfg.attn_softcap:
    logits = jnp.tanh(logits / cfg.attn_softcap) * cfg.attn_softcap
  logits = jnp.where(allowed[:, None, None, :, :], logits, _MASKED)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('bkgts,bske->btkge', probs, v).reshape(b, t, h * e)


def _attend_cached(cfg, q, k, v, ctx, is_sliding, kv_cache):
  """Attention over one layer's cache [B, K, S, E] (read only) and the call's own T keys.

  The cache is laid out heads-first so both products are plain batched matmuls, and it is not
  written here: the caller writes every layer's new keys/values once, after the scan over
  layers. (Writing it inside the scan made XLA copy whole cache buffers at every decode step:
  on CPU a step cost 2.5x the uncached forward and grew with the cache size.)
  Returns (output [B, T, H*E], (k, v) [B, K, T, E] to be written at the cache index).
  """
  b, t, h, e = q.shape
  kh = cfg.num_kv_heads
  k_cache, v_cache = kv_cache
  q = q.reshape(b, t, kh, h // kh, e).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, E]
  k = k.transpose(0, 2, 1, 3)  # [B, K, T, E]
  v = v.transpose(0, 2, 1, 3)

  def scores(keys, allowed):  # allowed [B, T, S]
    logits = jnp.einsum('bkgte,bkse->bkgts', q, keys.astype(q.dtype),
                        preferred_element_type=jnp.float32) * cfg.attn_scale
    if cfg.attn_softcap:
      logits = jnp.tanh(logits / cfg.attn_softcap) * cfg.attn_softcap
    return jnp.where(allowed[:, None, None], logits, _MASKED)

  def near(k_pos):
    if not cfg.sliding_window:
      return True
    return ((ctx.q_pos[:, :, None] - k_pos[:, None, :]) < cfg.sliding_window) | ~is_sliding

  own = (jnp.arange(t)[None, None, :] <= ctx.q_slot[:, :, None]) & ctx.k_valid[:, None, :]
  cached = ctx.cache_valid[:, None, :] & near(ctx.cache_pos)
  logits = jnp.concatenate([scores(k_cache, cached), scores(k, own & near(ctx.k_pos))], axis=-1)
  probs = jax.nn.softmax(logits, axis=-1)
  s = k_cache.shape[2]
  out = (jnp.einsum('bkgts,bkse->bkgte', probs[..., :s].astype(v_cache.dtype), v_cache)
         + jnp.einsum('bkgts,bkse->bkgte', probs[..., s:].astype(v.dtype), v))
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h * e), (k, v)


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
  def __call__(self, x, ctx, is_sliding, kv_cache=None):
    cfg = self.cfg
    norm = lambda name: RMSNorm(cfg.rms_norm_eps, cfg.norm_plus_one, name=name)
    a, new_kv = Attention(cfg, name='attn')(norm('attn_norm')(x), ctx, is_sliding, kv_cache)
    if cfg.sandwich_norms:
      a = norm('post_attn_norm')(a)
    x = x + a
    m = MLP(cfg, name='mlp')(norm('mlp_norm')(x))
    if cfg.sandwich_norms:
      m = norm('post_mlp_norm')(m)
    return x + m, new_kv


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


def attention_context(cfg, positions, valid, cache=None, segment=None) -> AttnContext:
  """Rope tables and key positions/validity shared by every layer of one call; with a cache,
  also its slots written by earlier calls.

  segment [B, T]: for packed rows (no cache), the example of each token; positions are then
  each token's index within its own example, so every example sees what it would alone.
  """
  if segment is not None and cache is not None:
    raise ProsvError('packed rows (segment) take no KV cache; pass one of them')
  b, t = positions.shape
  cos, sin = _rope_tables(cfg, cfg.rope, positions)
  cos_l, sin_l = _rope_tables(cfg, cfg.rope_local, positions) if cfg.rope_local else (cos, sin)
  q_slot = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  cache_pos = cache_valid = None
  if cache is not None:
    cache_pos, cache_valid = cache['pos'], cache['valid']
  return AttnContext(q_slot, positions, positions, valid, cos, sin, cos_l, sin_l, cache_pos,
                     cache_valid, segment, segment)


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


def _run_cached(params, cfg, h, ctx, cache, steer, steer_mask, steer_layer, empty=False):
  """All blocks over a KV cache; returns (h, k, v) with the call's keys/values written.

  Each layer reads its own cache slice (scan input; not at all when `empty`) and returns its
  new keys/values (scan output); they are written into the cache once, after the scan, where
  XLA updates the buffers in place. The steer edit happens inside the scan after block
  `steer_layer`.
  """
  block = Block(cfg)

  def body(x, xs):
    p, is_sliding, layer, kv_cache = xs
    x, (k, v) = block.apply({'params': p}, x, ctx, is_sliding, kv_cache)
    if steer is not None:
      x = steer_at(x, steer, (layer == steer_layer) & steer_mask)
    return x, (k, v)

  xs = (params['layers'], jnp.asarray(cfg.sliding_layers), jnp.arange(cfg.num_layers),
        None if empty else (cache['k'], cache['v']))
  h, (k, v) = jax.lax.scan(body, h, xs)  # k, v [N, B, K, T, E]
  at = (0, 0, 0, cache['index'], 0)
  k = jax.lax.dynamic_update_slice(cache['k'], k.astype(cache['k'].dtype), at)
  v = jax.lax.dynamic_update_slice(cache['v'], v.astype(cache['v'].dtype), at)
  return h, k, v


def init_cache(cfg: ModelConfig, batch: int, size: int, dtype=jnp.float32) -> dict:
  """An empty KV cache of `size` slots per row, heads before slots: k/v [N, B, K, S, E]."""
  shape = (cfg.num_layers, batch, cfg.num_kv_heads, size, cfg.head_dim)
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
            compute_logits: bool = True, cache_empty: bool = False) -> Output:
  """The model on tokens [B, T] at rope positions [B, T]; valid [B, T] marks real tokens.

  With a cache, the T new tokens are written at cache['index'] and attend to every valid slot
  before them; cache_empty=True (prefill into a fresh cache) skips reading it. With `steer`, the output of block `steer_layer` (0-indexed) becomes
  steer(h) where steer_mask [B, T] is True and stays bit-for-bit h elsewhere.
  """
  if steer is not None:
    cfg.check_layer(steer_layer)
  ctx = attention_context(cfg, positions, valid, cache)
  h = embed(params, cfg, tokens)
  new_cache = None
  if cache is not None:
    h, k, v = _run_cached(params, cfg, h, ctx, cache, steer, steer_mask, steer_layer,
                          cache_empty)
    index = cache['index']
    new_cache = {
        'k': k, 'v': v, 'index': index + tokens.shape[1],
        'pos': jax.lax.dynamic_update_slice_in_dim(cache['pos'], positions.astype(jnp.int32),
                                                   index, axis=1),
        'valid': jax.lax.dynamic_update_slice_in_dim(cache['valid'], valid, index, axis=1)}
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

