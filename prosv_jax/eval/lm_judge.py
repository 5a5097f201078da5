"""The local LM judge: any model prosv_jax loads rates by its probabilities of '0', '1', '2'.

For each (item, aspect) the judge model reads the rubric of `judge.rubric_prompt` as a user turn
(chat-templated when the tokenizer has a template), told to reply with the rating only, and the
assistant turn is pre-filled with 'Rating: [[' so that its next token is the rating digit. The
next-token probabilities of the three digits are renormalised over the three, and the rating is
their expected value sum_k k * p_k in [0, 2]: a smooth score that never needs generation or
reply parsing, and that keeps the judge's uncertainty instead of rounding it away.

Prompts are right-padded to widths that are multiples of `pad_to` and batched in row counts that
are powers of two (up to `batch_size`), so a whole evaluation compiles a handful of shapes. One
jitted forward pass per batch runs the blocks, gathers each row's last real hidden state and
applies the LM head to that row only: never the full [B, T, vocab] logits.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prosv_jax.errors import ProsvError
from prosv_jax.eval.judge import ASPECTS, Item, Progress, Ratings, rubric_prompt
from prosv_jax.models import transformer
from prosv_jax.models.config import ModelConfig
from prosv_jax.padding import round_up

DIGITS = ('0', '1', '2')
# The rubric asks for reasoning first; reading probabilities needs the rating straight away.
# No second "[[x]]" here: small judges copy the placeholder 'x' instead of choosing a digit.
REPLY_INSTRUCTION = 'Reply with the rating only.'
ASSISTANT_PREFIX = 'Rating: [['


@functools.partial(jax.jit, static_argnames=('cfg',))
def digit_log_probs(params, cfg: ModelConfig, tokens: jax.Array, lengths: jax.Array,
                    digit_ids: jax.Array) -> jax.Array:
  """Next-token log-probs (over the whole vocabulary) of `digit_ids` [3] after each prompt.

  Args:
    params: the frozen model weights.
    cfg: the model config (static).
    tokens: right-padded prompts [B, W].
    lengths: each row's real length [B], at least 1.
    digit_ids: the token ids of '0', '1', '2' [3].

  Returns:
    fp32 [B, 3]: log p(digit | prompt) at each row's last real position.
  """
  positions, valid = transformer.positions_from_lengths(lengths, tokens.shape[1],
                                                        left_padded=False)
  ctx = transformer.attention_context(cfg, positions, valid)
  h = transformer.embed(params, cfg, tokens)
  h = transformer.run_blocks(params, cfg, h, ctx, 0, cfg.num_layers)
  last = jnp.take_along_axis(h, (lengths - 1)[:, None, None].astype(jnp.int32), axis=1)[:, 0]
  logp = jax.nn.log_softmax(transformer.head(params, cfg, last), axis=-1)  # [B, V]
  return logp[:, digit_ids]


def _next_pow2(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


class LMJudge:
  """A Judge backed by a local model: the rating is the expected digit after 'Rating: [['.

  Attributes:
    name: 'lm:<model source>', identifying the judge in results and caches.
    model: the loaded judge Model.
    digit_ids: the token ids of '0', '1', '2' as the model would emit them after the prefix.
  """

  def __init__(self, model, *, batch_size: int = 16, pad_to: int = 16, name: str | None = None):
    """Wraps a loaded Model (prosv_jax.models.load.Model).

    Args:
      model: the judge model; its tokenizer must encode each digit after 'Rating: [[' as
        one token.
      batch_size: prompts per forward pass (the largest compiled row count).
      pad_to: prompt widths are rounded up to a multiple of this.
      name: overrides the default 'lm:<model.source>'.
    """
    if model.tokenizer is None:
      raise ProsvError('the judge model has no tokenizer; load a model folder or GGUF file '
                       'that includes one')
    if batch_size < 1 or pad_to < 1:
      raise ProsvError(f'batch_size={batch_size}, pad_to={pad_to}; use positive values')
    self.model = model
    self.batch_size = batch_size
    self.pad_to = pad_to
    self.name = name or f'lm:{model.source}'
    self.digit_ids = self._find_digit_ids()
    self._pad_id = model.cfg.pad_id if model.cfg.pad_id is not None else 0

  @classmethod
  def load(cls, spec: str | None = None, dtype: str = 'float32', **kwargs) -> 'LMJudge':
    """Loads the judge model with load_model(spec, dtype); kwargs go to the constructor."""
    from prosv_jax.models.load import DEFAULT_MODEL, load_model
    spec = spec or DEFAULT_MODEL
    model = load_model(spec, dtype=dtype)
    kwargs.setdefault('name', f'lm:{model.source or spec}')
    return cls(model, **kwargs)

  # ------------------------------------------------------------------------------- prompts

  def prompt_text(self, aspect: str, item: Item) -> str:
    """The full judge input as text: templated user turn, then the assistant's 'Rating: [['."""
    message = rubric_prompt(aspect, item) + '\n' + REPLY_INSTRUCTION
    tok = self.model.tokenizer
    if getattr(tok, 'chat_template', None):
      # The template writes BOS itself where the model wants one.
      return tok.apply_chat_template([{'role': 'user', 'content': message}],
                                     add_generation_prompt=True, tokenize=False) + ASSISTANT_PREFIX
    return message + '\n\n' + ASSISTANT_PREFIX

  def prompt_ids(self, aspect: str, item: Item) -> list[int]:
    """The judge input as token ids; the model's next token after them is the rating digit."""
    return self._encode(self.prompt_text(aspect, item))

  def _encode(self, text: str) -> list[int]:
    tok = self.model.tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    if getattr(tok, 'chat_template', None):
      return ids
    # Plain text: keep a BOS if this tokenizer adds one, but never a trailing EOS (which
    # some tokenizers append) because the next token must follow the prefix directly.
    bos = tok.bos_token_id
    if bos is not None and tok.encode('a', add_special_tokens=True)[:1] == [bos]:
      if ids[:1] != [bos]:
        ids = [bos] + ids
    return ids

  def _find_digit_ids(self) -> tuple[int, int, int]:
    """The ids of '0', '1', '2' as tokenised right after the prefix, checked to be single tokens.

    What matters is how the digit tokenises in context: a SentencePiece tokenizer encodes a
    lone '0' as ['▁', '0'] yet emits the single token '0' after '[['. So each digit is
    appended to a real prompt and must add exactly one token (leaving the prefix's tokens
    alone) that decodes back to the digit.
    """
    tok = self.model.tokenizer
    text = self.prompt_text('fluency', Item('instruction', 'concept', 'response'))
    base = self._encode(text)
    ids = []
    for d in DIGITS:
      with_digit = self._encode(text + d)
      extra = with_digit[len(base):]
      if (with_digit[:len(base)] != base or len(extra) != 1
          or tok.decode(extra).strip() != d):
        raise ProsvError(
            f'the judge tokenizer does not emit {d!r} as one token after {ASSISTANT_PREFIX!r} '
            f'(got {extra} = {tok.convert_ids_to_tokens(extra)}); use a judge model whose '
            'tokenizer has single-token digits')
      ids.append(extra[0])
    if len(set(ids)) != 3:
      raise ProsvError(f'the digits 0, 1, 2 share token ids {ids}; use a judge model whose '
                       'tokenizer has distinct single-token digits')
    return tuple(ids)

  # ------------------------------------------------------------------------------- scoring

  def _log_probs(self, prompts: list[list[int]], on_batch=None) -> np.ndarray:
    """Full-vocabulary log-probs of the three digits after each prompt, [len(prompts), 3]."""
    max_len = self.model.cfg.max_position
    out = np.zeros((len(prompts), 3), np.float64)
    digit_ids = jnp.asarray(self.digit_ids, jnp.int32)
    for start in range(0, len(prompts), self.batch_size):
      batch = prompts[start:start + self.batch_size]
      longest = max(len(p) for p in batch)
      if longest > max_len:
        raise ProsvError(f'a judge prompt has {longest} tokens, more than the judge model\'s '
                         f'{max_len}; shorten the responses or use a longer-context judge')
      width = round_up(longest, self.pad_to)
      rows = min(_next_pow2(len(batch)), self.batch_size)
      # Filler rows (one pad token) keep the row count on a few compiled shapes.
      filled = list(batch) + [[self._pad_id]] * (rows - len(batch))
      tokens = np.full((rows, width), self._pad_id, np.int32)
      for i, p in enumerate(filled):
        tokens[i, :len(p)] = p
      lengths = np.asarray([len(p) for p in filled], np.int32)
      logp = digit_log_probs(self.model.params, self.model.cfg, jnp.asarray(tokens),
                             jnp.asarray(lengths), digit_ids)
      out[start:start + len(batch)] = np.asarray(jax.device_get(logp), np.float64)[:len(batch)]
      if on_batch is not None:
        on_batch(start + len(batch))
    return out

  def log_probs(self, items: Sequence[Item], aspect: str) -> np.ndarray:
    """log p(digit | prompt) over the whole vocabulary, [N, 3] for '0', '1', '2'.

    exp(...).sum(-1) is the probability mass the judge puts on a valid rating at all.
    """
    return self._log_probs([self.prompt_ids(aspect, it) for it in items])

  def probabilities(self, items: Sequence[Item], aspect: str) -> np.ndarray:
    """The digit probabilities renormalised over '0', '1', '2', [N, 3] (rows sum to 1)."""
    return _renormalise(self.log_probs(items, aspect))

  def expected(self, items: Sequence[Item], aspect: str) -> np.ndarray:
    """The rating of one aspect, sum_k k * p_k in [0, 2], [N]."""
    return self.probabilities(items, aspect) @ np.arange(3.0)

  def rate(self, items: Sequence[Item], progress: Progress | None = None) -> list[Ratings]:
    """Rates every item on every aspect; progress(n) follows each batch that finished n items.

    The N * 3 prompts are batched item by item (an item's three aspects are adjacent), so an
    item counts as finished as soon as the batch holding its last aspect is done.
    """
    items = list(items)
    if not items:
      return []
    prompts = [self.prompt_ids(a, it) for it in items for a in ASPECTS]
    reported = 0

    def on_batch(prompts_done):
      nonlocal reported
      done = prompts_done // len(ASPECTS)
      if progress is not None and done > reported:
        progress(done - reported)
      reported = done

    probs = _renormalise(self._log_probs(prompts, on_batch))
    scores = (probs @ np.arange(3.0)).reshape(len(items), len(ASPECTS))
    return [Ratings(**{a: float(s) for a, s in zip(ASPECTS, row)}) for row in scores]


def _renormalise(logp: np.ndarray) -> np.ndarray:
  logp = logp - logp.max(axis=-1, keepdims=True)
  p = np.exp(logp)
  return p / p.sum(axis=-1, keepdims=True)
