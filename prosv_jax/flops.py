"""Useful FLOPs of a training step: what benchmarks divide by time and by a measured peak."""

from prosv_jax.models.config import ModelConfig


def block_matmul_params(cfg: ModelConfig) -> int:
  """Weights one token multiplies through in one block: q, k, v, o and the gated MLP."""
  d, e = cfg.hidden_size, cfg.head_dim
  return d * e * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * d * cfg.intermediate_size


def attention_pairs(cfg: ModelConfig, layer: int, length: int) -> int:
  """(query, key) pairs a causal row of `length` tokens attends over in one block."""
  window = cfg.sliding_window if cfg.sliding_layers[layer] else None
  if not window or window >= length:
    return length * (length + 1) // 2
  return window * (window + 1) // 2 + (length - window) * window


def rows_cost(cfg: ModelConfig, rows: int, width: int) -> float:
  """FLOPs one block spends on `rows` rows of `width` token slots as they are computed, padding
  and masked pairs included: the weight matmuls of every slot (forward and input gradient) and
  the dense attention of every row (each query x key of its width). What a batch layout
  costs, to compare layouts (Trainer's data.pack='auto'); not useful work (step_flops)."""
  he = cfg.num_heads * cfg.head_dim
  return 4.0 * block_matmul_params(cfg) * rows * width + 12.0 * he * rows * width * width


def step_flops(cfg: ModelConfig, layer: int, examples) -> float:
  """Useful FLOPs of one training step over `examples` (the step's real, unpadded rows).

  Steering the output of block L = `layer` leaves blocks 0..L unchanged: their output is read
  from the block-L bank, computed once before training, so a step never runs them and they are
  not counted (nor when the bank is off and they run every step, forward only). For a row of
  t real tokens of which r are response tokens, with a multiply-add as 2 FLOPs:

    blocks L+1..N-1, weight matmuls   4 * P * t, P = sum over those blocks of
                                      block_matmul_params = D*E*(2H + 2Hkv) + 3*D*F;
                                      forward 2*P*t plus the input gradient 2*P*t. The usual
                                      6*P*t counts a weight gradient too, which frozen weights
                                      never get.
    their attention                   12 * H * E * pairs, pairs = sum over the blocks of
                                      attention_pairs (causal, window-limited where sliding);
                                      forward QK^T and PV (4*H*E a pair), backward dQ, dK, dP,
                                      dV (8*H*E a pair).
    LM head at response positions     4 * D * V * r (forward and input gradient).

  Not counted: padding, norms, rope, softmax, the steering edit, the optimizer, and work done
  twice by design (train.remat's recomputed forward, token_logprobs' recomputed logit chunks).
  """
  blocks = range(layer + 1, cfg.num_layers)
  p = block_matmul_params(cfg) * len(blocks)
  he = cfg.num_heads * cfg.head_dim
  total = 0.0
  for ex in examples:
    t, r = int(ex.length), len(ex.response)
    pairs = sum(attention_pairs(cfg, i, t) for i in blocks)
    total += 4.0 * p * t + 12.0 * he * pairs + 4.0 * cfg.hidden_size * cfg.vocab_size * r
  return total
