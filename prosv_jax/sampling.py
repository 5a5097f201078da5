"""Batched generation with a KV cache: one jitted prefill, one jitted decode loop.

Prompts are left-padded so every row's next token lands in the same cache slot; positions and
attention validity come from each row's length. The steering seam acts in prefill at
`steer_mask` (prompt positions), and, only when `steer_decode` is set, at every decode step:
the first is PrOSV (the edit reaches generated tokens only through the cached keys/values), the
second FSSV.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from prosv_jax import parallel
from prosv_jax.errors import ProsvError
from prosv_jax.models import transformer
from prosv_jax.models.config import ModelConfig
from prosv_jax.padding import round_up


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 128
  temperature: float = 0.0  # 0 means greedy
  top_k: int = 0  # 0 means no top-k cut
  top_p: float = 1.0  # 1 means no nucleus cut

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ProsvError(f'max_new_tokens={self.max_new_tokens}; ask for at least 1 token')
    if not self.temperature >= 0:  # also refuses nan
      raise ProsvError(f'temperature={self.temperature}; use 0 (greedy) or a positive value')
    if not 0 < self.top_p <= 1:
      raise ProsvError(f'top_p={self.top_p}; use a value in (0, 1]')
    if self.top_k < 0:
      raise ProsvError(f'top_k={self.top_k}; use 0 (off) or a positive count')


def row_keys(seed, batch: int) -> jax.Array:
  """One PRNG key per row [B]: an int seed gives row r the key fold_in(key(seed), r); a
  sequence gives each row its own seed. A row's draws then depend on its key alone, not on
  which batch it shares (so a resumed evaluation regenerates the rows it lost exactly)."""
  if isinstance(seed, (int, np.integer)):
    return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(int(seed)),
                                                     jnp.arange(batch, dtype=jnp.uint32))
  seeds = np.asarray(seed, np.int64)
  if seeds.shape != (batch,):
    raise ProsvError(f'got {seeds.size} seeds for {batch} prompts; pass one int or one per prompt')
  return jax.vmap(jax.random.key)(jnp.asarray(seeds % 2 ** 32, jnp.uint32))


def _sortable(x: jax.Array) -> jax.Array:
  """uint32 keys in the same order as the fp32 values x (-0.0 just below +0.0)."""
  i = jax.lax.bitcast_convert_type(x, jnp.int32)
  i = jnp.where(i < 0, i ^ 0x7FFFFFFF, i)  # negatives: larger magnitude -> smaller key
  return jax.lax.bitcast_convert_type(i ^ jnp.int32(-2 ** 31), jnp.uint32)


def _unsortable(key: jax.Array) -> jax.Array:
  i = jax.lax.bitcast_convert_type(key, jnp.int32) ^ jnp.int32(-2 ** 31)
  return jax.lax.bitcast_convert_type(jnp.where(i < 0, i ^ 0x7FFFFFFF, i), jnp.float32)


def kth_largest(logits: jax.Array, k: int) -> jax.Array:
  """The k-th largest value of each row [B, 1] of fp32 logits [B, V], exactly.

  Bisection over the 32 bits of an order-preserving integer image of the floats: 32 passes
  that only compare and count. jax.lax.top_k sorts on CPU, which cost 260 ms per decode step at
  batch 32 over SmolLM2's 49k vocabulary (half the step); this costs ~16 ms.
  """
  key = _sortable(logits.astype(jnp.float32))
  lo, hi = jnp.min(key, axis=-1), jnp.max(key, axis=-1)

  def halve(_, bounds):  # invariant: count(key >= lo) >= k > count(key > hi)
    lo, hi = bounds
    gap = hi - lo
    mid = lo + gap // 2 + (gap & 1)  # the upper middle, without uint32 overflow
    enough = jnp.sum(key >= mid[:, None], axis=-1) >= k
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid - 1)

  lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, hi))
  return _unsortable(lo)[:, None]


def sample_logits(logits: jax.Array, rng: jax.Array, sampling: SamplingConfig) -> jax.Array:
  """Next tokens [B] from fp32 logits [B, V]; rng is one key, or one key per row [B]."""
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / sampling.temperature
  if sampling.top_k and sampling.top_k < logits.shape[-1]:
    logits = jnp.where(logits < kth_largest(logits, sampling.top_k), -jnp.inf, logits)
  if sampling.top_p < 1:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep a token if the mass before it is below top_p: the top token always survives.
    keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < sampling.top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(
        keep_sorted)
    logits = jnp.where(keep, logits, -jnp.inf)
  if rng.ndim:  # a key per row
    return jax.vmap(jax.random.categorical)(rng, logits).astype(jnp.int32)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('cfg', 'cache_size', 'steer_layer'))
def prefill(params, cfg: ModelConfig, tokens, lengths, *, cache_size: int, steer=None,
            steer_mask=None, steer_layer=None):
  """Runs left-padded prompts [B, P] into a fresh cache; returns (last logits [B, V], cache)."""
  b, p = tokens.shape
  positions, valid = transformer.positions_from_lengths(lengths, p, left_padded=True)
  dtype = params['embed']['embedding'].dtype
  cache = transformer.init_cache(cfg, b, cache_size, dtype)
  out = transformer.forward(params, cfg, tokens, positions, valid, cache=cache, steer=steer,
                            steer_mask=steer_mask, steer_layer=steer_layer,
                            compute_logits=False, cache_empty=True)
  return transformer.head(params, cfg, out.hidden[:, -1]), out.cache


@functools.partial(jax.jit, static_argnames=('cfg', 'sampling', 'eos_ids', 'pad_id',
                                             'steer_layer', 'steer_decode'))
def decode(params, cfg: ModelConfig, cache, logits, lengths, rng, *, sampling: SamplingConfig,
           eos_ids: tuple[int, ...], pad_id: int, steer=None, steer_layer=None,
           steer_decode: bool = False):
  """Samples up to sampling.max_new_tokens per row in one lax.while_loop.

  rng: one key per row [B] (row_keys); step t samples with fold_in(rng[b], t).
  Returns (tokens [B, max_new] with pad after a row's EOS, count [B] of tokens before EOS).
  """
  b = logits.shape[0]
  n = sampling.max_new_tokens
  eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)

  def pick(logits, rng, done):
    tok = sample_logits(logits, rng, sampling)
    return jnp.where(done, pad_id, tok), done | jnp.isin(tok, eos)

  step_keys = jax.vmap(jax.random.fold_in, (0, None))
  tok, done = pick(logits, step_keys(rng, 0), jnp.zeros((b,), bool))
  out = jnp.full((b, n), pad_id, jnp.int32).at[:, 0].set(tok)
  count = jnp.where(done, 0, 1)

  def cond(state):
    step, _, _, done, _, _ = state
    return (step < n) & ~jnp.all(done)

  def body(state):
    step, cache, tok, done, out, count = state
    positions = (lengths + step - 1)[:, None].astype(jnp.int32)
    fwd = transformer.forward(
        params, cfg, tok[:, None], positions, jnp.ones((b, 1), bool), cache=cache,
        steer=steer if steer_decode else None, steer_mask=jnp.ones((b, 1), bool),
        steer_layer=steer_layer)
    new_tok, new_done = pick(fwd.logits[:, 0], step_keys(rng, step), done)
    out = out.at[:, step].set(new_tok)
    count = count + (~new_done).astype(count.dtype)
    return step + 1, fwd.cache, new_tok, new_done, out, count

  state = (jnp.int32(1), cache, tok, done, out, count)
  _, _, _, _, out, count = jax.lax.while_loop(cond, body, state)
  return out, count


def check_context(cfg: ModelConfig, prompt_tokens: int, max_new_tokens: int) -> None:
  """The longest prompt plus the new tokens must fit the model's positions."""
  if prompt_tokens + max_new_tokens > cfg.max_position:
    raise ProsvError(f'a prompt of {prompt_tokens} tokens plus max_new_tokens={max_new_tokens} '
                     f'exceeds the model\'s {cfg.max_position} positions '
                     f'(max_position_embeddings); shorten the prompt or lower max_new_tokens')


def generate_ids(params, cfg: ModelConfig, prompts: list[list[int]], *,
                 sampling: SamplingConfig = SamplingConfig(), seed=0, steer=None,
                 steer_mask_fn=None, steer_layer: int | None = None, steer_decode: bool = False,
                 pad_to: int = 16) -> list[list[int]]:
  """Generates for token-id prompts; returns each row's new tokens up to (not incl.) EOS.

  seed: an int, or one int per prompt (see row_keys).
  steer_mask_fn(lengths [B], width P) -> bool [B, P] chooses the prompt positions to edit in
  prefill (it sees left-padded rows). Prompt widths are rounded up to `pad_to` so that
  prompts of similar length share one compiled prefill. With params placed on a mesh
  (prosv_jax.parallel), rows are split over its 'data' axis (every process passes the same
  prompts and gets every row back).
  """
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ProsvError('generate needs at least one non-empty prompt')
  if steer is not None:
    cfg.check_layer(steer_layer)
  check_context(cfg, max(len(p) for p in prompts), sampling.max_new_tokens)
  width = round_up(max(len(p) for p in prompts), pad_to)
  pad_id = cfg.pad_id if cfg.pad_id is not None else 0
  tokens = jnp.asarray([[pad_id] * (width - len(p)) + list(p) for p in prompts], jnp.int32)
  lengths = jnp.asarray([len(p) for p in prompts], jnp.int32)
  steer_mask = None
  if steer is not None:
    steer_mask = (steer_mask_fn(lengths, width) if steer_mask_fn is not None
                  else transformer.positions_from_lengths(lengths, width, left_padded=True)[1])
    steer_mask = jnp.asarray(steer_mask, bool)
  mesh = parallel.mesh_of(params)
  if mesh is not None:  # rows over 'data' (the cache follows them); steer params replicated
    tokens, lengths, steer_mask = (
        None if x is None else parallel.place(x, parallel.batch_sharding(mesh, x.shape))
        for x in (tokens, lengths, steer_mask))
    steer = jax.tree.map(lambda a: parallel.place(a, parallel.replicated(mesh)), steer)
  logits, cache = prefill(params, cfg, tokens, lengths, cache_size=width + sampling.max_new_tokens,
                          steer=steer, steer_mask=steer_mask, steer_layer=steer_layer)
  out, count = decode(params, cfg, cache, logits, lengths, row_keys(seed, len(prompts)),
                      sampling=sampling, eos_ids=tuple(cfg.eos_ids), pad_id=pad_id, steer=steer,
                      steer_layer=steer_layer, steer_decode=steer_decode)
  out, count = parallel.to_host((out, count))
  return [list(map(int, row[:c])) for row, c in zip(out, count)]


def generate_text(model, instructions: list[str], *, sampling: SamplingConfig = SamplingConfig(),
                  seed: int = 0, chat_template: str = '', **steer_kwargs) -> list[str]:
  """Chat-templated generation for a loaded Model; steer_kwargs go to generate_ids.

  chat_template: '' = the tokenizer's own, a name from chat.TEMPLATES, or Jinja text.
  """
  from prosv_jax.chat import chat_prompt_ids
  prompts = [chat_prompt_ids(model.tokenizer, x, chat_template) for x in instructions]
  ids = generate_ids(model.params, model.cfg, prompts, sampling=sampling, seed=seed,
                     **steer_kwargs)
  return [model.tokenizer.decode(row, skip_special_tokens=True) for row in ids]


def generate(model, instructions, vectors=None, concept: int | str = 0, *,
             multiplier: float = 1.0, sampling: SamplingConfig = SamplingConfig(),
             seed: int = 0, chat_template: str | None = None) -> list[str]:
  """Answers to instructions (a list, or one str), steered with one concept of `vectors`.

  vectors: a SteeringVectors, or None for unsteered answers. concept: its row index,
  concept_id or description. multiplier: times the trained factor. chat_template: None = the
  vectors' own (the one they were trained with; the tokenizer's without vectors), else '' (the
  tokenizer's), a name from chat.TEMPLATES or Jinja text.
  """
  if isinstance(instructions, str):
    instructions = [instructions]
  if not instructions:
    raise ProsvError('generate needs at least one instruction')
  if chat_template is None:
    chat_template = vectors.chat_template if vectors is not None else ''
  kwargs = {}
  if vectors is not None:
    vectors.check_model(model.cfg)
    kwargs = vectors.generation_kwargs([concept] * len(instructions), multiplier)
  return generate_text(model, list(instructions), sampling=sampling, seed=seed,
                       chat_template=chat_template, **kwargs)


def show_generations(model, vectors, concept: int | str, instructions: list[str],
                     max_new_tokens: int, seed: int = 0,
                     temperature: float = 0.0) -> list[tuple[str, str, str]]:
  """(instruction, unsteered answer, steered answer) for each instruction; both answers use
  the vectors' chat template, so they differ only by the steering."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature)
  template = vectors.chat_template
  # Two batched calls, each a minute or more on CPU with its compile: say which one runs.
  with tqdm(total=2, desc=f'concept {concept}: generating unsteered', unit='batch',
            leave=False, dynamic_ncols=True, disable=not parallel.is_main_process()) as bar:
    plain = generate(model, instructions, sampling=sampling, seed=seed, chat_template=template)
    bar.update()
    bar.set_description(f'concept {concept}: generating steered')
    steered = generate(model, instructions, vectors, concept, sampling=sampling, seed=seed)
    bar.update()
  return list(zip(instructions, plain, steered))
