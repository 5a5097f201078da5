"""The steering transform: h <- h + factor * direction at chosen positions of block L's output.

Steering parameters are a pytree {'factor': [C], 'direction': [C, n]} in fp32, one row per
concept; each batch row picks its concept by index, so one batch can mix concepts.

Position specs (where the edit applies):
  pN, sM, pN+sM   first N and/or last M tokens of each row's prompt (never more than its length)
  prompt          every prompt token
  all             every prompt and response token (FSSV); in generation also every new token
PrOSV is `p2+s2` and edits during prefill only.
"""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from prosv_jax.errors import ProsvError

VALID_SPECS = 'pN, sM, pN+sM (e.g. p2+s2), prompt, all'
_SPEC = re.compile(r'^(?:p(\d+)(?:\+s(\d+))?|s(\d+))$')


@dataclasses.dataclass(frozen=True)
class Positions:
  """A parsed position spec (hashable: it is a static argument of jitted code)."""
  first: int = 0  # first N prompt tokens
  last: int = 0  # last M prompt tokens
  whole_prompt: bool = False
  full_sequence: bool = False  # prompt, response, and every generated token


def parse_positions(spec: str) -> Positions:
  """'p2+s2' -> Positions(first=2, last=2); anything else invalid fails naming the valid forms."""
  text = str(spec).strip().lower()
  if text == 'all':
    return Positions(full_sequence=True)
  if text == 'prompt':
    return Positions(whole_prompt=True)
  m = _SPEC.match(text)
  if not m:
    raise ProsvError(f'position spec {spec!r} does not parse; valid forms: {VALID_SPECS}')
  pos = Positions(first=int(m.group(1) or 0), last=int(m.group(2) or m.group(3) or 0))
  if pos.first == 0 and pos.last == 0:
    raise ProsvError(f'position spec {spec!r} selects no token; valid forms: {VALID_SPECS}')
  return pos


def position_mask(pos: Positions, prompt_len, length, width: int, pad_left=None) -> jax.Array:
  """Bool [B, width]: where to edit, counted on each row's own prompt.

  prompt_len [B]: prompt tokens per row; length [B]: prompt + response tokens present;
  pad_left [B]: pad slots before a left-padded row (None for right padding).
  """
  t = jnp.arange(width)[None, :]
  start = jnp.zeros_like(jnp.asarray(prompt_len)) if pad_left is None else jnp.asarray(pad_left)
  rel = t - start[:, None]  # index within the row's own tokens
  return token_mask(pos, rel, jnp.asarray(prompt_len)[:, None], jnp.asarray(length)[:, None])


def token_mask(pos: Positions, rel, prompt_len, length) -> jax.Array:
  """Where to edit, token by token: rel is each token's index within its own example, and
  prompt_len / length are that example's (all broadcast together, e.g. [R, W] for packed rows,
  where each token carries its own example's numbers; length 0 marks padding)."""
  in_row = (rel >= 0) & (rel < length)
  if pos.full_sequence:
    return in_row
  if pos.whole_prompt:
    return in_row & (rel < prompt_len)
  first = rel < jnp.minimum(pos.first, prompt_len)
  last = (rel >= prompt_len - pos.last) & (rel < prompt_len)
  return in_row & (first | last)


def init_steer_params(rng: jax.Array, width: int, num_concepts: int, beta: float,
                      direction_scale: float) -> dict:
  """factor0 = beta * sqrt(n) for every concept; direction ~ U(-s/sqrt(n), s/sqrt(n))."""
  bound = direction_scale / math.sqrt(width)
  return {
      'factor': jnp.full((num_concepts,), beta * math.sqrt(width), jnp.float32),
      'direction': jax.random.uniform(rng, (num_concepts, width), jnp.float32, -bound, bound),
  }


def apply_steer(steer_params: dict, concept_ids: jax.Array, h: jax.Array) -> jax.Array:
  """h [B, T, D] + factor[c] * direction[c] (computed in fp32), c the concept of each row
  (concept_ids [B]) or of each token (concept_ids [B, T]: packed rows mix examples)."""
  factor = steer_params['factor'][concept_ids]  # [B] or [B, T]
  direction = steer_params['direction'][concept_ids]  # [B, D] or [B, T, D]
  if concept_ids.ndim == 1:
    factor, direction = factor[:, None], direction[:, None, :]
  edit = factor[..., None] * direction
  return (h.astype(jnp.float32) + edit).astype(h.dtype)


def steer_fn(steer_params: dict, concept_ids) -> jax.tree_util.Partial:
  """A jit-friendly closure for the model's steer seam (its arrays stay traced)."""
  return jax.tree_util.Partial(apply_steer, steer_params, jnp.asarray(concept_ids, jnp.int32))


def vector(steer_params: dict, concept: int = 0) -> np.ndarray:
  """factor * direction of one concept, as numpy (what a full-sequence control vector adds)."""
  return np.asarray(steer_params['factor'][concept] * steer_params['direction'][concept])


def generation_kwargs(steer_params: dict, concept, layer: int, positions: Positions,
                      batch: int) -> dict:
  """Keyword arguments for sampling.generate_ids: every row steered with `concept` (a row
  index), or row b with concept[b] (a list of indices, one per row).

  (SteeringVectors.generation_kwargs is the user-facing form: concepts by id or description,
  per-row factor multipliers.)

  Prompt-only specs edit their prompt positions during prefill only; 'all' edits every prompt
  token and every decode step.
  """
  def mask_fn(lengths, width):  # prompts arrive left-padded
    return position_mask(positions, lengths, lengths, width, pad_left=width - lengths)

  concepts = [concept] * batch if isinstance(concept, (int, np.integer)) else list(concept)
  if len(concepts) != batch:
    raise ProsvError(f'{len(concepts)} concepts for a batch of {batch}; pass one per row')
  return dict(steer=steer_fn(steer_params, concepts), steer_mask_fn=mask_fn,
              steer_layer=layer, steer_decode=positions.full_sequence)
