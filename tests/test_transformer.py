"""The decoder's own properties on tiny random configs: cache, steering seam, padding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prosv_jax import sampling
from prosv_jax.errors import ProsvError
from prosv_jax.models import transformer
from prosv_jax.models.config import ModelConfig, RopeConfig

jax.config.update('jax_default_matmul_precision', 'highest')

LLAMA = ModelConfig(family='llama', vocab_size=97, hidden_size=32, intermediate_size=48,
                    num_layers=4, num_heads=4, num_kv_heads=2, head_dim=8, pad_id=0, eos_ids=(1,))
GEMMA = dataclasses.replace(
    LLAMA, family='gemma2', norm_plus_one=True, scale_embeddings=True, sandwich_norms=True,
    qk_norm=True, activation='gelu_tanh', attn_softcap=5.0, final_softcap=4.0, sliding_window=3,
    sliding_layers=(True, False, True, False), rope_local=RopeConfig(theta=100.0))
CONFIGS = {'llama': LLAMA, 'gemma': GEMMA}


def _params(cfg, seed=0):
  # Larger weights than init so attention is far from uniform and differences show.
  params = transformer.init_params(cfg, jax.random.key(seed))
  return jax.tree.map(lambda a: a * 8 if a.ndim == 3 else a, params)


def _tokens(b, t, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(2, 97, size=(b, t)), jnp.int32)


@pytest.mark.parametrize('name', list(CONFIGS))
def test_kv_cache_decoding_matches_full_forward(name):
  cfg = CONFIGS[name]
  params = _params(cfg)
  b, prompt, total = 3, 6, 11
  lengths = np.array([6, 4, 2])  # left-padded prompts of different lengths
  tokens = _tokens(b, total)
  # Full forward over [left-padded prompt + continuation].
  pos, valid = transformer.positions_from_lengths(lengths + (total - prompt), total, True)
  full = transformer.forward(params, cfg, tokens, pos, valid).logits
  # Prefill the prompt into a cache, then feed the continuation one token at a time.
  cache = transformer.init_cache(cfg, b, total)
  ppos, pvalid = transformer.positions_from_lengths(lengths, prompt, True)
  out = transformer.forward(params, cfg, tokens[:, :prompt], ppos, pvalid, cache=cache)
  got = [out.logits]
  cache = out.cache
  for t in range(prompt, total):
    step_pos = jnp.asarray(lengths + t - prompt)[:, None]
    out = transformer.forward(params, cfg, tokens[:, t:t + 1], step_pos,
                              jnp.ones((b, 1), bool), cache=cache)
    got.append(out.logits)
    cache = out.cache
  got = jnp.concatenate(got, axis=1)
  mask = np.asarray(valid)
  np.testing.assert_allclose(np.asarray(got)[mask], np.asarray(full)[mask], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize('name', list(CONFIGS))
def test_left_and_right_padding_agree(name):
  cfg = CONFIGS[name]
  params = _params(cfg)
  lengths = np.array([7, 3])
  t = 7
  toks = np.asarray(_tokens(2, t))
  right = np.where(np.arange(t)[None] < lengths[:, None], toks, 0)
  left = np.stack([np.concatenate([np.zeros(t - n, int), toks[i, :n]])
                   for i, n in enumerate(lengths)])
  pr, vr = transformer.positions_from_lengths(lengths, t, False)
  pl, vl = transformer.positions_from_lengths(lengths, t, True)
  lr = np.asarray(transformer.forward(params, cfg, jnp.asarray(right), pr, vr).logits)
  ll = np.asarray(transformer.forward(params, cfg, jnp.asarray(left), pl, vl).logits)
  np.testing.assert_allclose(lr[np.asarray(vr)], ll[np.asarray(vl)], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize('name', list(CONFIGS))
def test_identity_seam_is_bit_identical(name):
  cfg = CONFIGS[name]
  params = _params(cfg)
  tokens = _tokens(2, 8)
  pos, valid = transformer.positions_from_lengths(np.array([8, 5]), 8, False)
  base = transformer.forward(params, cfg, tokens, pos, valid).logits
  for layer in range(cfg.num_layers):
    seam = transformer.forward(params, cfg, tokens, pos, valid, steer=lambda h: h,
                               steer_mask=jnp.ones((2, 8), bool), steer_layer=layer).logits
    assert np.array_equal(np.asarray(seam), np.asarray(base)), layer


@pytest.mark.parametrize('name', list(CONFIGS))
def test_steer_touches_only_masked_positions(name):
  cfg = CONFIGS[name]
  params = _params(cfg)
  tokens = _tokens(2, 8)
  pos, valid = transformer.positions_from_lengths(np.array([8, 8]), 8, False)
  shift = 3.0 * jax.random.normal(jax.random.key(1), (cfg.hidden_size,))
  mask = jnp.zeros((2, 8), bool).at[0, 5].set(True)  # one position of row 0
  layer = 1
  seen = {}

  def steer(h):
    seen['h'] = h
    return h + shift

  # Block-L output with the edit, read from the upper blocks' input: recompute both sides.
  ctx = transformer.attention_context(cfg, pos, valid)
  h_low = transformer.run_blocks(params, cfg, transformer.embed(params, cfg, tokens), ctx, 0,
                                 layer + 1)
  edited = jnp.where(mask[..., None], h_low + shift, h_low)
  diff = np.asarray(jnp.any(edited != h_low, axis=-1))
  assert diff.sum() == 1 and diff[0, 5]
  base = np.asarray(transformer.forward(params, cfg, tokens, pos, valid).logits)
  steered = np.asarray(transformer.forward(params, cfg, tokens, pos, valid, steer=steer,
                                           steer_mask=mask, steer_layer=layer).logits)
  # Causality: positions before the edit and the whole other row are bit-identical.
  assert np.array_equal(steered[0, :5], base[0, :5])
  assert np.array_equal(steered[1], base[1])
  assert np.abs(steered[0, 5:] - base[0, 5:]).max() > 1e-3


@pytest.mark.parametrize('name', list(CONFIGS))
def test_packed_rows_equal_each_sequence_alone(name):
  """Several sequences in one row (segment ids, positions within each): every one gets the
  logits it gets alone, sliding windows included (gemma: window 3), and none sees another."""
  cfg = CONFIGS[name]
  params = _params(cfg)
  lengths = np.array([5, 3, 6, 2])
  toks = np.asarray(_tokens(4, 6))
  pos, valid = transformer.positions_from_lengths(lengths, 6, False)
  alone = np.asarray(transformer.forward(params, cfg, jnp.asarray(toks), pos, valid).logits)
  layout = [(0, 0), (0, 5), (1, 0), (1, 6)]  # (row, start): rows [5 | 3 | pad], [6 | 2 | pad]
  tokens, segment, rel = np.zeros((2, 9), np.int32), np.full((2, 9), -1), np.zeros((2, 9), int)
  for i, (row, start) in enumerate(layout):
    n = lengths[i]
    tokens[row, start:start + n] = toks[i, :n]
    segment[row, start:start + n] = i
    rel[row, start:start + n] = np.arange(n)

  def packed(tokens):
    ctx = transformer.attention_context(cfg, jnp.asarray(rel), jnp.asarray(segment >= 0),
                                        segment=jnp.asarray(segment))
    h = transformer.run_blocks(params, cfg, transformer.embed(params, cfg, jnp.asarray(tokens)),
                               ctx, 0, cfg.num_layers)
    return np.asarray(transformer.head(params, cfg, h))

  got = packed(tokens)
  for i, (row, start) in enumerate(layout):
    n = lengths[i]
    np.testing.assert_allclose(got[row, start:start + n], alone[i, :n], atol=2e-5, rtol=1e-5)
  # Other tokens in sequence 0's slots leave its neighbour in the row bit-identical.
  other = tokens.copy()
  other[0, :5] = (other[0, :5] + 7) % 97
  changed = packed(other)
  assert np.array_equal(changed[0, 5:8], got[0, 5:8]) and np.array_equal(changed[1], got[1])
  assert np.abs(changed[0, :5] - got[0, :5]).max() > 1e-3
  with pytest.raises(ProsvError, match='no KV cache'):
    transformer.attention_context(cfg, jnp.asarray(rel), jnp.asarray(segment >= 0),
                                  cache=transformer.init_cache(cfg, 2, 9),
                                  segment=jnp.asarray(segment))


@pytest.mark.parametrize('name', list(CONFIGS))
def test_cached_prefill_steer_matches_uncached(name):
  """The seam inside the cached scan edits exactly what the split scan edits."""
  cfg = CONFIGS[name]
  params = _params(cfg)
  tokens = _tokens(2, 8)
  lengths = np.array([8, 5])
  pos, valid = transformer.positions_from_lengths(lengths, 8, True)
  mask = valid & (jnp.arange(8)[None] % 3 == 0)
  shift = jax.random.normal(jax.random.key(2), (cfg.hidden_size,))
  kw = dict(steer=lambda h: h + shift, steer_mask=mask, steer_layer=2)
  plain = transformer.forward(params, cfg, tokens, pos, valid, **kw).logits
  cached = transformer.forward(params, cfg, tokens, pos, valid,
                               cache=transformer.init_cache(cfg, 2, 12), **kw).logits
  m = np.asarray(valid)
  np.testing.assert_allclose(np.asarray(cached)[m], np.asarray(plain)[m], atol=2e-5, rtol=1e-5)


def test_prompt_only_generation_equals_full_forward_with_prompt_edit():
  """Steer in prefill only: each greedy token is the argmax of a full forward whose edit covers
  the prompt positions only; steering every decode step as well changes the tokens."""
  cfg = LLAMA
  params = _params(cfg)
  prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]
  shift = 40.0 * jax.random.normal(jax.random.key(3), (cfg.hidden_size,))
  steer = jax.tree_util.Partial(lambda s, h: h + s, shift)
  sc = sampling.SamplingConfig(max_new_tokens=6)
  gen = sampling.generate_ids(params, cfg, prompts, sampling=sc, steer=steer, steer_layer=1)
  assert gen != sampling.generate_ids(params, cfg, prompts, sampling=sc)  # the edit matters
  for prompt, new in zip(prompts, gen):
    seq = prompt + new
    t = len(seq)
    pos, valid = transformer.positions_from_lengths(np.array([t]), t, False)
    mask = jnp.arange(t)[None] < len(prompt)
    logits = transformer.forward(params, cfg, jnp.asarray([seq]), pos, valid, steer=steer,
                                 steer_mask=mask, steer_layer=1).logits[0]
    want = [int(i) for i in jnp.argmax(logits[len(prompt) - 1:-1], axis=-1)]
    assert new == want[:len(new)]
  full = sampling.generate_ids(params, cfg, prompts, sampling=sc, steer=steer, steer_layer=1,
                               steer_decode=True)
  assert full != gen


def test_generation_stops_at_eos_and_is_seeded():
  cfg = LLAMA
  params = _params(cfg)
  sc = sampling.SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9)
  a = sampling.generate_ids(params, cfg, [[3, 4, 5], [6, 7]], sampling=sc, seed=7)
  b = sampling.generate_ids(params, cfg, [[3, 4, 5], [6, 7]], sampling=sc, seed=7)
  c = sampling.generate_ids(params, cfg, [[3, 4, 5], [6, 7]], sampling=sc, seed=8)
  assert a == b and a != c
  # A row's draws depend on its own seed, not on the batch it shares (resumed evaluations).
  alone = sampling.generate_ids(params, cfg, [[6, 7]], sampling=sc, seed=[12])
  pair = sampling.generate_ids(params, cfg, [[3, 4, 5], [6, 7]], sampling=sc, seed=[11, 12])
  assert alone[0] == pair[1]
  with pytest.raises(ProsvError, match='one per prompt'):
    sampling.generate_ids(params, cfg, [[3, 4, 5]], sampling=sc, seed=[1, 2])
  # Make token 1 (EOS) the certain next token after 3 steps: rows end there.
  eos_cfg = dataclasses.replace(cfg, eos_ids=tuple(range(97)))
  out = sampling.generate_ids(params, eos_cfg, [[3, 4, 5]], sampling=sc)
  assert out == [[]]


def test_top_k_and_top_p_cut_the_tail():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.key(0), 400)
  rows = jnp.tile(logits, (len(keys), 1))  # 400 draws at once: one key per row
  draw = lambda sc: set(np.asarray(sampling.sample_logits(rows, keys, sc)).tolist())
  assert draw(sampling.SamplingConfig(temperature=1.0)) == {0, 1, 2, 3}
  assert draw(sampling.SamplingConfig(temperature=1.0, top_k=2)) == {0, 1}
  assert draw(sampling.SamplingConfig(temperature=1.0, top_p=0.7)) == {0, 1}
  assert draw(sampling.SamplingConfig(temperature=1.0, top_p=0.1)) == {0}


def test_kth_largest_is_exact():
  """The bisection threshold equals a sort's k-th value: ties, infinities, tiny and huge
  magnitudes, signed zeros, k = 1 and k = V."""
  rng = np.random.default_rng(0)
  # k traced and four widths: one compile per width rather than per trial (eager fori_loops
  # compile on every call).
  kth = jax.jit(sampling.kth_largest)
  for trial in range(32):
    v = (1, 5, 37, 200)[trial % 4]
    x = (rng.standard_normal((4, v)) * rng.choice([1e-30, 1.0, 1e30])).astype(np.float32)
    if trial % 3 == 0:
      x = np.round(x)  # ties and signed zeros
    if trial % 8 >= 4:
      x[:, :v // 2] = -np.inf
    for k in {1, min(v, 5), v}:
      got = np.asarray(kth(jnp.asarray(x), k))[:, 0]
      np.testing.assert_array_equal(got, np.sort(x, axis=-1)[:, -k])


@pytest.mark.parametrize('name', list(CONFIGS))
def test_prefill_into_an_empty_cache_skips_reading_it(name):
  cfg = CONFIGS[name]
  params = _params(cfg)
  lengths = np.array([5, 3])
  pos, valid = transformer.positions_from_lengths(lengths, 5, True)
  tokens = _tokens(2, 5)
  read = transformer.forward(params, cfg, tokens, pos, valid,
                             cache=transformer.init_cache(cfg, 2, 9))
  skip = transformer.forward(params, cfg, tokens, pos, valid,
                             cache=transformer.init_cache(cfg, 2, 9), cache_empty=True)
  # The two paths attend over 5 and 9 slots, so float32 sums round differently and the
  # difference grows layer by layer: CI's CPU measured 1.2e-5 on keys of size ~20 (1e-6 here).
  tol = dict(rtol=1e-5, atol=1e-4)
  mask = np.asarray(valid)
  np.testing.assert_allclose(np.asarray(skip.logits)[mask], np.asarray(read.logits)[mask], **tol)
  for key in ('pos', 'valid', 'index'):
    np.testing.assert_array_equal(np.asarray(skip.cache[key]), np.asarray(read.cache[key]))
  slots = np.asarray(read.cache['valid'])  # [B, S]; pad rows' keys/values are never read
  for key in ('k', 'v'):  # [N, B, K, S, E]
    got, want = (np.asarray(c.cache[key]).transpose(1, 3, 0, 2, 4)[slots] for c in (skip, read))
    np.testing.assert_allclose(got, want, **tol)


def test_bad_inputs_are_named():
  with pytest.raises(ProsvError, match='pick a layer in 0..3'):
    LLAMA.check_layer(4)
  with pytest.raises(ProsvError, match='top_p'):
    sampling.SamplingConfig(top_p=0)
  with pytest.raises(ProsvError, match='out of range'):
    transformer.forward(_params(LLAMA), LLAMA, _tokens(1, 3), jnp.zeros((1, 3), jnp.int32),
                        jnp.ones((1, 3), bool), steer=lambda h: h,
                        steer_mask=jnp.ones((1, 3), bool), steer_layer=-1)


@pytest.mark.parametrize('name', list(CONFIGS))
def test_dot_product_attention_matches_the_einsum_path(name):
  """attention='dot_product' (jax.nn.dot_product_attention, cuDNN on GPUs) gives the einsum
  path's logits on right-padded rows; softcapped Gemma-2 keeps the einsum path."""
  cfg = CONFIGS[name]
  params = _params(cfg)
  lengths = np.array([7, 4])
  pos, valid = transformer.positions_from_lengths(lengths, 7, False)
  tokens = _tokens(2, 7)
  want = transformer.forward(params, cfg, tokens, pos, valid).logits
  fused = dataclasses.replace(cfg, attention='dot_product', attn_softcap=None)
  plain = dataclasses.replace(cfg, attn_softcap=None)
  got = transformer.forward(params, fused, tokens, pos, valid).logits
  ref = transformer.forward(params, plain, tokens, pos, valid).logits
  mask = np.asarray(valid)
  np.testing.assert_allclose(np.asarray(got)[mask], np.asarray(ref)[mask], rtol=1e-5, atol=1e-5)
  capped = dataclasses.replace(cfg, attention='dot_product')
  np.testing.assert_array_equal(
      np.asarray(transformer.forward(params, capped, tokens, pos, valid).logits), np.asarray(want))
  with pytest.raises(ProsvError, match='einsum or dot_product'):
    dataclasses.replace(cfg, attention='flash')
