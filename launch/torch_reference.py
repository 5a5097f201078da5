"""PyTorch reference: one concept's steering-vector training the way the paper's code runs it.

launch/bench.py times this against our JAX training, side by side. It mirrors the
paper's recipe on a frozen ``transformers`` model: a forward hook on block L adds
factor * direction at the steered positions, the loss is HF's token-mean
cross-entropy over response tokens (``labels=``), and one Adam step per batch with
a linear-to-zero schedule and the direction's gradient clipped to norm 1.

  model = torch_model_from_gguf(path)
  result = train_reference(model, batches, layer=10, width=576, beta=..., ...)

torch is fine here (benchmark code); prosv_jax itself never imports it.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
import transformers

# SmolLM2-135M on a 2-core CPU, batch 12 x ~158 real tokens (padded to 176), steering at layer 10:
# sdpa 4.56 s/step, eager 4.60 (best of 3). Attention is a small share at these lengths (the MLPs
# and the 49k-row lm_head dominate), so sdpa wins only slightly; it is also HF's own default.
ATTN_IMPLEMENTATION = 'sdpa'


def torch_model_from_gguf(path: str, attn_implementation: str = ATTN_IMPLEMENTATION
                         ) -> transformers.PreTrainedModel:
  """A frozen fp32 ``AutoModelForCausalLM`` with the GGUF file's weights, in eval mode."""
  from prosv_jax.models.gguf_reader import read_gguf
  hf_config, state, _ = read_gguf(path)
  model = transformers.AutoModelForCausalLM.from_config(
      hf_config, attn_implementation=attn_implementation, dtype=torch.float32)
  result = model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in state.items()},
                                 strict=False)
  # strict=False only so a tied lm_head may be absent; anything else missing is a broken load.
  allowed = {'lm_head.weight'} if hf_config.tie_word_embeddings else set()
  if set(result.missing_keys) - allowed or result.unexpected_keys:
    raise ValueError(f'{path}: state dict does not fit {type(model).__name__}: missing '
                     f'{result.missing_keys}, unexpected {result.unexpected_keys}')
  if hf_config.tie_word_embeddings:
    model.tie_weights()
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
      raise ValueError(f'{path}: lm_head is not tied to the embeddings after loading')
  model.float().eval().requires_grad_(False)
  return model


def steer_mask(prompt_len, length, width: int, positions=(2, 2), full_sequence: bool = False) -> np.ndarray:
  """Bool [B, width] of right-padded rows: the first N / last M prompt tokens, or every real token."""
  t = np.arange(width)[None, :]
  prompt_len = np.asarray(prompt_len)[:, None]
  in_row = t < np.asarray(length)[:, None]
  if full_sequence:
    return in_row
  first, last = positions
  return in_row & ((t < np.minimum(first, prompt_len)) | ((t >= prompt_len - last) & (t < prompt_len)))


def batch_inputs(batch: dict) -> dict:
  """Torch model kwargs for one right-padded batch: ids, attention mask, positions, response labels."""
  tokens = torch.from_numpy(np.asarray(batch['tokens'], np.int64))
  t = torch.arange(tokens.shape[1])[None, :]
  prompt_len = torch.from_numpy(np.asarray(batch['prompt_len'], np.int64))[:, None]
  length = torch.from_numpy(np.asarray(batch['length'], np.int64))[:, None]
  real = t < length
  labels = torch.where(real & (t >= prompt_len), tokens, torch.full_like(tokens, -100))
  return {'input_ids': tokens, 'attention_mask': real.long(),
          'position_ids': t.expand_as(tokens), 'labels': labels}


class _SteerHook:
  """Forward hook: block output h -> h + factor * direction where `mask` [B, T] is set."""

  def __init__(self, factor: torch.Tensor, direction: torch.Tensor):
    self.factor, self.direction = factor, direction
    self.mask = None

  def __call__(self, module, args, output):
    del module, args
    h = output[0] if isinstance(output, tuple) else output
    # where, not h + mask * edit: unsteered positions stay bit-for-bit h.
    edited = torch.where(self.mask[..., None], h + self.factor * self.direction, h)
    return (edited,) + tuple(output[1:]) if isinstance(output, tuple) else edited


@contextlib.contextmanager
def steering(model, layer: int, factor: torch.Tensor, direction: torch.Tensor):
  """Hooks block `layer`'s output for the duration; set `.mask` (bool [B, T]) before each forward."""
  layers = model.model.layers
  if not 0 <= layer < len(layers):
    raise ValueError(f'layer {layer} is out of range for a {len(layers)}-layer model')
  hook = _SteerHook(factor, direction)
  # prepend: transformers' own output_hidden_states hooks on the block then record the edited output.
  handle = layers[layer].register_forward_hook(hook, prepend=True)
  try:
    yield hook
  finally:
    handle.remove()


def train_reference(model, batches: list[dict], *, layer: int, width: int, beta: float, factor_lr: float,
                    direction_scale: float, direction_lr: float, total_steps: int, seed: int = 42,
                    positions=(2, 2), full_sequence: bool = False, init=None) -> dict:
  """Trains one concept's (factor, direction) on `batches`, one Adam step each, in order.

  init: (factor, direction [width]) to start from instead of the paper's seeded init, so a
  run can be compared step by step with another implementation started at the same point.

  Returns wall_s (training only, no model build), steps, per-step losses, the final factor
  and direction, tokens (non-pad tokens seen), and factors / directions: the params after
  every step ([steps] and [steps, width] float32).
  """
  if width != model.config.hidden_size:
    raise ValueError(f'width {width} is not the model hidden size {model.config.hidden_size}')
  if len(batches) != total_steps:
    raise ValueError(f'got {len(batches)} batches for total_steps={total_steps}; pass one batch per step')
  torch.manual_seed(seed)
  factor = torch.nn.Parameter(torch.tensor(beta * math.sqrt(width), dtype=torch.float32))
  bound = direction_scale / math.sqrt(width)
  direction = torch.nn.Parameter(torch.empty(width, dtype=torch.float32).uniform_(-bound, bound))
  if init is not None:
    with torch.no_grad():
      factor.copy_(torch.tensor(float(init[0]), dtype=torch.float32))
      direction.copy_(torch.as_tensor(np.asarray(init[1], np.float32).reshape(width)))
  optimizer = torch.optim.Adam([{'params': [factor], 'lr': factor_lr},
                                {'params': [direction], 'lr': direction_lr}],
                               betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
  schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / total_steps)
  losses, tokens, factors, directions = [], 0, [], []
  with steering(model, layer, factor, direction) as hook, torch.enable_grad():
    start = time.perf_counter()
    for batch in batches:
      inputs = batch_inputs(batch)
      hook.mask = torch.from_numpy(steer_mask(batch['prompt_len'], batch['length'],
                                              inputs['input_ids'].shape[1], positions, full_sequence))
      loss = model(**inputs, use_cache=False).loss
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_([direction], 1.0)  # the factor's gradient is left unclipped
      optimizer.step()
      schedule.step()
      losses.append(loss.item())
      factors.append(float(factor.detach()))
      directions.append(direction.detach().numpy().copy())
      tokens += int(np.sum(batch['length']))
    wall_s = time.perf_counter() - start
  return {'wall_s': wall_s, 'steps': len(losses), 'losses': losses, 'factor': float(factor.detach()),
          'direction': direction.detach().numpy().copy(), 'tokens': tokens,
          'factors': np.asarray(factors, np.float32),
          'directions': np.asarray(directions, np.float32).reshape(len(losses), width)}
