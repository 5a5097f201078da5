"""The jitted training step: losses over response tokens, gradients for steering params only.

The frozen weights are a plain argument (never differentiated, copied or donated); the
steering state is donated. The step starts from block L's output, either read from a bank
computed once per example (blocks 0..L never run again) or recomputed from tokens; either way
no activations of blocks 0..L are kept for the backward pass, which covers blocks L+1.. only.

A batch is right-padded (data.pad_batch: one example per row) or packed (data.pack_batch:
several examples per row, each seeing only itself); the losses are the same up to fp32
rounding, and a packed step spends no compute on padded slots beyond a few percent.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from prosv_jax import data, steer
from prosv_jax.errors import ProsvError
from prosv_jax.models import transformer
from prosv_jax.train import optim


def lower_hidden(frozen, cfg, layer: int, tokens, length):
  """Block `layer`'s output [B, T, D] for right-padded rows: the part steering cannot change."""
  return batch_lower_hidden(frozen, cfg, layer, {'tokens': tokens, 'length': length})


def batch_lower_hidden(frozen, cfg, layer: int, batch: dict):
  """Block `layer`'s output [rows, T, D] of a right-padded or a packed batch."""
  h = transformer.embed(frozen, cfg, batch['tokens'])
  return transformer.run_blocks(frozen, cfg, h, batch_context(cfg, batch), 0, layer + 1)


lower_hidden_jit = jax.jit(lower_hidden, static_argnames=('cfg', 'layer'))
batch_lower_hidden_jit = jax.jit(batch_lower_hidden, static_argnames=('cfg', 'layer'))


def batch_context(cfg, batch: dict) -> transformer.AttnContext:
  """Attention context of a batch: per row from its length (right-padded), or per example
  from each token's segment and index within it (packed: data.pack_batch)."""
  if data.is_packed(batch):
    return transformer.attention_context(cfg, batch['rel'], batch['segment'] >= 0,
                                         segment=batch['segment'])
  pos, valid = transformer.positions_from_lengths(batch['length'], batch['tokens'].shape[1],
                                                  left_padded=False)
  return transformer.attention_context(cfg, pos, valid)


def _per_token(batch: dict, values, pad):
  """values [B] of each packed token's example [R, W] (`pad` on padding)."""
  segment = batch['segment']
  return jnp.where(segment >= 0, values[jnp.maximum(segment, 0)], pad)


def steer_mask(positions: steer.Positions, batch: dict):
  """Where the edit applies [rows, T], counted on each example's own prompt."""
  if data.is_packed(batch):
    return steer.token_mask(positions, batch['rel'], _per_token(batch, batch['prompt_len'], 0),
                            _per_token(batch, batch['length'], 0))
  return steer.position_mask(positions, batch['prompt_len'], batch['length'],
                             batch['tokens'].shape[1])


def token_concepts(batch: dict, pad: int = 0):
  """The concept of each row [B] (right-padded) or of each token [R, W] (packed; `pad` on
  padding)."""
  if data.is_packed(batch):
    return _per_token(batch, batch['concept'], pad)
  return batch['concept']


def bank_hidden(bank, batch: dict):
  """A batch's block-L outputs read from the bank [N, W, D] of every example: by global row
  (batch['rows'] [B]) and, when packed, by each token's index within its example."""
  if data.is_packed(batch):
    return bank[_per_token(batch, batch['rows'], batch['rows'][0]), batch['rel']]
  return bank[batch['rows'], :batch['tokens'].shape[1]]


def _upper_hidden(frozen, cfg, layer, positions, steer_params, batch, h_low, remat):
  """The last block's output [rows, T, D]: h_low (block `layer`'s output, recomputed when
  None), steered where steer_mask says, through the blocks above."""
  ctx = batch_context(cfg, batch)
  if h_low is None:
    h = transformer.embed(frozen, cfg, batch['tokens'])
    h_low = transformer.run_blocks(frozen, cfg, h, ctx, 0, layer + 1)
  if steer_params is not None:
    fn = steer.steer_fn(steer_params, token_concepts(batch))
    h_low = transformer.steer_at(h_low, fn, steer_mask(positions, batch))
  return transformer.run_blocks(frozen, cfg, h_low, ctx, layer + 1, cfg.num_layers, remat)


def response_logprobs(frozen, cfg, layer: int, positions: steer.Positions, steer_params,
                      batch: dict, h_low, response_width: int, remat: bool = False):
  """Log-probs [B, R] of each response token (0 where absent) and the mask [B, R], for a
  right-padded batch (response_sums takes packed ones too).

  The LM head runs only at the R positions that predict response tokens.
  """
  if data.is_packed(batch):
    raise ProsvError('response_logprobs takes right-padded rows; use response_sums for a '
                     'packed batch')
  tokens = batch['tokens']
  b, t = tokens.shape
  h = _upper_hidden(frozen, cfg, layer, positions, steer_params, batch, h_low, remat)
  # Position i predicts token i + 1; response tokens sit at prompt_len .. length - 1.
  src = batch['prompt_len'][:, None] - 1 + jnp.arange(response_width)[None, :]
  present = src + 1 < batch['length'][:, None]
  src = jnp.clip(src, 0, t - 1)
  h_resp = jnp.take_along_axis(h, src[..., None], axis=1)  # [B, R, D]
  target = jnp.take_along_axis(tokens, jnp.clip(src + 1, 0, t - 1), axis=1)
  logp = token_logprobs(frozen, cfg, h_resp.reshape(b * response_width, -1),
                        target.reshape(-1)).reshape(b, response_width)
  return jnp.where(present, logp, 0.0), present


def response_sums(frozen, cfg, layer: int, positions: steer.Positions, steer_params,
                  batch: dict, h_low, response_width: int = 0, remat: bool = False):
  """Summed log-prob [B] and count [B] (fp32) of each example's response tokens.

  Right-padded: response_logprobs summed (response_width slots per row). Packed: the head
  runs only at the batch's head_src positions, one per response token plus the few padded
  slots of data.pack_batch, and each sum gathers its example's (response_width is unused).
  """
  if not data.is_packed(batch):
    logp, present = response_logprobs(frozen, cfg, layer, positions, steer_params, batch,
                                      h_low, response_width, remat)
    return logp.sum(-1), present.sum(-1).astype(jnp.float32)
  h = _upper_hidden(frozen, cfg, layer, positions, steer_params, batch, h_low, remat)
  src = batch['head_src']
  h_resp = h.reshape(-1, h.shape[-1])[src]  # [H, D]
  logp = token_logprobs(frozen, cfg, h_resp, batch['tokens'].reshape(-1)[src + 1])
  example, b = batch['head_example'], batch['length'].shape[0]  # padding: example b, dropped
  return (jax.ops.segment_sum(logp, example, b),
          jax.ops.segment_sum(jnp.ones_like(logp), example, b))


def token_logprobs(frozen, cfg, h, target, chunk_floats: int = 2 ** 28):
  """log p(target) [N] from hidden states [N, D], in row chunks under jax.checkpoint.

  The full [N, V] logits can dominate memory (16 concepts x 12 rows x 128 tokens x 49k vocab
  is 4.8 GB in fp32, twice with its gradient): above `chunk_floats` logits (1 GiB) they are
  made in even chunks that the backward pass recomputes instead of storing. (At 256 MB one
  SmolLM2 concept's whole-response batch was chunked, and recomputing its head cost 16% of
  the step: docs/PERFORMANCE.md.)
  """
  n = h.shape[0]

  def one(args):
    hc, tc = args
    logits = transformer.head(frozen, cfg, hc)  # [rows, V] fp32
    picked = jnp.take_along_axis(logits, tc[:, None], axis=-1)[:, 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)

  chunks = -(-n * cfg.vocab_size // chunk_floats)
  if chunks <= 1:  # small enough to keep whole: no recomputation
    return one((h, target))
  chunk = -(-n // chunks)  # even chunks: at most chunks - 1 padded rows
  pad = chunk * chunks - n
  h = jnp.pad(h, ((0, pad), (0, 0)))
  target = jnp.pad(target, (0, pad))
  one = jax.checkpoint(one)
  out = jax.lax.map(one, (h.reshape(-1, chunk, h.shape[-1]), target.reshape(-1, chunk)))
  return out.reshape(-1)[:n]


def lang_loss(logp, present, concept, num_concepts: int):
  """Token-mean cross-entropy per concept [K]; the total is their sum (gradients separate)."""
  return lang_loss_sums(logp.sum(-1), present.sum(-1).astype(jnp.float32), concept,
                        num_concepts)


def lang_loss_sums(total, count, concept, num_concepts: int):
  """lang_loss from each example's summed response log-prob [B] and token count [B]."""
  nll = jax.ops.segment_sum(-total, concept, num_concepts)
  tokens = jax.ops.segment_sum(count, concept, num_concepts)
  return nll / jnp.maximum(tokens, 1.0)


def simpo_loss(logp, present, concept, ref_logp, num_concepts: int):
  """RePS-style preference loss per concept [K] over rows laid out [winners; losers].

  r = max(ref(y_l) - ref(y_w), 1); loss = -log sigmoid(r/|y_w| logp(y_w) - logp(y_l)/|y_l|).
  """
  return simpo_loss_sums(logp.sum(-1), present.sum(-1).astype(jnp.float32), concept, ref_logp,
                         num_concepts)


def simpo_loss_sums(total, count, concept, ref_logp, num_concepts: int):
  """simpo_loss from each example's summed response log-prob [B] and token count [B]."""
  half = total.shape[0] // 2
  count = jnp.maximum(count, 1.0)
  w, l = total[:half], total[half:]
  r = jnp.maximum(ref_logp[half:] - ref_logp[:half], 1.0)
  pair = -jax.nn.log_sigmoid(r / count[:half] * w - l / count[half:])
  sums = jax.ops.segment_sum(pair, concept[:half], num_concepts)
  pairs = jax.ops.segment_sum(jnp.ones_like(pair), concept[:half], num_concepts)
  return sums / jnp.maximum(pairs, 1.0)


def loss_fn(steer_params, frozen, cfg, layer, positions, loss_kind, num_concepts, batch, h_low,
            response_width, remat=False):
  total, count = response_sums(frozen, cfg, layer, positions, steer_params, batch, h_low,
                               response_width, remat)
  if loss_kind == 'simpo':
    per_concept = simpo_loss_sums(total, count, batch['concept'], batch['ref_logp'],
                                  num_concepts)
  else:
    per_concept = lang_loss_sums(total, count, batch['concept'], num_concepts)
  return per_concept.sum(), per_concept


@functools.partial(jax.jit, static_argnames=('cfg', 'layer', 'positions', 'loss_kind',
                                             'num_concepts', 'optimizer', 'response_width',
                                             'remat', 'max_param', 'slot_cells'),
                   donate_argnames=('state',))
def train_step(state, frozen, batch, bank, *, cfg, layer, positions, loss_kind, num_concepts,
               optimizer, response_width, remat=False, max_param=optim.MAX_PARAM,
               slot_cells=None):
  """One update of every slot's steering params. `bank` is [N, W, D] or None; `batch` is
  right-padded (data.pad_batch) or packed (data.pack_batch; response_width is then unused).

  num_concepts is the number of param rows S (concepts, or slots: prosv_jax.train.slots);
  slot_cells (static tuple [S]) names each row's grid cell, None = all rows one cell.

  A row whose loss or gradient is not finite (finite [S] False), or whose new params pass
  max_param (bounded [S] False: diverged), fails its whole cell: the cell's rows keep their
  last good params and Adam moments and, through state['live'] [S] (when the state has it),
  stay frozen from then on while the other cells train on. When no row is live any more the
  whole state stays as it was (step included), so the caller can save the last good state
  before stopping: with one cell, exactly a run that stops at its first bad step. The metrics
  show the rejected values.
  """
  h_low = None if bank is None else bank_hidden(bank, batch)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, per_concept), grads = grad_fn(state['steer'], frozen, cfg, layer, positions, loss_kind,
                                       num_concepts, batch, h_low, response_width, remat)
  del loss  # the sum of per_concept: each row is judged on its own below
  updates, opt_state = optimizer.update(grads, state['opt'], state['steer'])
  new = {'steer': optax.apply_updates(state['steer'], updates), 'opt': opt_state,
         'step': state['step'] + 1}
  finite = optim.rows_finite(per_concept, grads)
  bounded = optim.rows_bounded(new['steer'], max_param)
  live = optim.whole_cells(finite & bounded, slot_cells)
  if 'live' in state:
    live = live & state['live']
  metrics = {
      'loss': per_concept,
      'finite': finite,
      'bounded': bounded,
      'live': live,
      'direction_grad_norm': jnp.linalg.norm(grads['direction'], axis=-1),
      'factor': new['steer']['factor'],
      'direction_norm': jnp.linalg.norm(new['steer']['direction'], axis=-1),
  }
  old = {k: v for k, v in state.items() if k != 'live'}
  new = optim.keep_rows(new, old, live)
  if 'live' in state:
    new['live'] = live
  new = jax.tree.map(lambda n, o: jnp.where(jnp.any(live), n, o), new, state)
  return new, metrics


@functools.partial(jax.jit, static_argnames=('cfg', 'layer', 'response_width'))
def reference_logprobs(frozen, batch, *, cfg, layer, response_width):
  """Summed log-probs [B] of each example's response under the unsteered model (SimPO
  reference), from a right-padded or a packed batch."""
  total, _ = response_sums(frozen, cfg, layer, steer.Positions(), None, batch, None,
                           response_width)
  return total


@functools.partial(jax.jit, static_argnames=('cfg', 'layer', 'positions', 'num_concepts',
                                             'response_width'))
def eval_sums(steer_params, frozen, batch, *, cfg, layer, positions, num_concepts,
              response_width):
  """Per-concept sums [K] over one batch (right-padded, or packed with response_width
  unused), to be added up over many batches, and the same per example.

  Blocks 0..L run once; the rest twice, with and without the steering vector. Returns
  steered_nll and unsteered_nll (summed response cross-entropy), tokens (response tokens),
  and residual_sq / residual_n: the sum of squares and the count of block-L output
  coordinates at the steered positions (the scale the edit competes with there). Examples of
  concept -1 or num_concepts (batch fillers) count nowhere. example_steered_nll,
  example_unsteered_nll and example_tokens [B] are the first three per example of the batch
  (B = its length array's size, fillers included): what a paired comparison of two vectors
  on the same examples resamples.
  """
  concept = batch['concept']
  h_low = batch_lower_hidden(frozen, cfg, layer, batch)
  per = lambda x: jax.ops.segment_sum(x, concept, num_concepts)
  out = {}
  for name, params in (('steered', steer_params), ('unsteered', None)):
    total, count = response_sums(frozen, cfg, layer, positions, params, batch, h_low,
                                 response_width)
    out[f'example_{name}_nll'] = -total
    out[f'{name}_nll'] = per(-total)
  out['example_tokens'] = count
  out['tokens'] = per(count)
  mask = steer_mask(positions, batch)
  sq = jnp.where(mask, jnp.sum(jnp.square(h_low.astype(jnp.float32)), axis=-1), 0.0)
  if data.is_packed(batch):  # token by token, to its own example's concept
    tok = token_concepts(batch, pad=num_concepts).reshape(-1)
    n = mask.astype(jnp.float32) * h_low.shape[-1]
    out['residual_sq'] = jax.ops.segment_sum(sq.reshape(-1), tok, num_concepts)
    out['residual_n'] = jax.ops.segment_sum(n.reshape(-1), tok, num_concepts)
  else:
    out['residual_sq'] = per(sq.sum(-1))
    out['residual_n'] = per(mask.sum(-1).astype(jnp.float32) * h_low.shape[-1])
  return out
