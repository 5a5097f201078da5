"""The one model config: every supported family is this dataclass with other values.

Family differences are fields (norm style, softcapping, sliding window, biases...), never
copies of the model code. A config is built from a transformers ``PretrainedConfig`` (what
a Hugging Face folder and the GGUF reader both give) by :func:`from_hf_config`.
"""

import dataclasses
import math
from typing import Any

from prosv_jax.errors import ProsvError

# transformers `model_type` -> our family name.
SUPPORTED_MODEL_TYPES = {
    'llama': 'llama',
    'qwen2': 'qwen2',
    'gemma2': 'gemma2',
    'gemma3_text': 'gemma3',
    'gemma3': 'gemma3',
}
SUPPORTED_ROPE_TYPES = ('default', 'linear', 'llama3')


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """Rotary embedding of one attention kind (hashable, so configs can be static jit args)."""
  theta: float = 10000.0
  rope_type: str = 'default'  # one of SUPPORTED_ROPE_TYPES
  factor: float = 1.0  # 'linear' and 'llama3'
  low_freq_factor: float = 1.0  # 'llama3'
  high_freq_factor: float = 4.0  # 'llama3'
  original_max_position: int = 8192  # 'llama3'


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and arithmetic of a decoder-only transformer."""
  family: str  # 'llama' | 'qwen2' | 'gemma2' | 'gemma3'
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope: RopeConfig = RopeConfig()
  # Rope of sliding-window layers when it differs (Gemma-3 uses a smaller theta there).
  rope_local: RopeConfig | None = None
  activation: str = 'silu'  # 'silu' | 'gelu_tanh' (GeGLU)
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  tie_embeddings: bool = True
  norm_plus_one: bool = False  # Gemma RMSNorm scales by (1 + w)
  scale_embeddings: bool = False  # Gemma multiplies embeddings by sqrt(hidden_size)
  sandwich_norms: bool = False  # Gemma-2/3 norm before AND after attention and MLP
  qk_norm: bool = False  # Gemma-3 RMSNorm on each query/key head
  query_scale: float = 0.0  # 0 means head_dim ** -0.5
  attn_softcap: float | None = None
  final_softcap: float | None = None
  sliding_window: int | None = None
  # Per layer: True where the layer attends within `sliding_window` only.
  sliding_layers: tuple[bool, ...] = ()
  max_position: int = 8192
  bos_id: int | None = None
  eos_ids: tuple[int, ...] = ()
  pad_id: int | None = None
  # How the uncached attention runs: 'einsum' (this module's own masked einsums) or
  # 'dot_product' (jax.nn.dot_product_attention, which picks cuDNN's fused kernel on GPUs).
  # A runtime choice, not part of the checkpoint; softcapped attention always uses 'einsum'.
  attention: str = 'einsum'

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ProsvError(f'num_heads={self.num_heads} is not a multiple of num_kv_heads='
                       f'{self.num_kv_heads}; fix the model config')
    if self.attention not in ('einsum', 'dot_product'):
      raise ProsvError(f'attention={self.attention!r}; use einsum or dot_product')
    if self.activation not in ('silu', 'gelu_tanh'):
      raise ProsvError(f'activation {self.activation!r} is not supported; use silu or gelu_tanh')
    if not self.sliding_layers:
      object.__setattr__(self, 'sliding_layers', (False,) * self.num_layers)
    if len(self.sliding_layers) != self.num_layers:
      raise ProsvError(f'sliding_layers has {len(self.sliding_layers)} entries for '
                       f'{self.num_layers} layers; give one per layer')

  @property
  def attn_scale(self) -> float:
    return self.query_scale or self.head_dim ** -0.5

  def check_layer(self, layer: int) -> int:
    """Returns `layer` if it names a block of this model, else a one-line error."""
    if not 0 <= layer < self.num_layers:
      raise ProsvError(f'layer {layer} is out of range for this {self.num_layers}-layer model; '
                       f'pick a layer in 0..{self.num_layers - 1}')
    return layer


def _get(hf: Any, name: str, default: Any = None) -> Any:
  value = getattr(hf, name, default)
  return default if value is None else value


def _rope_from_params(params: dict[str, Any] | None, default_theta: float) -> RopeConfig:
  params = dict(params or {})
  rope_type = params.get('rope_type', params.get('type', 'default')) or 'default'
  if rope_type not in SUPPORTED_ROPE_TYPES:
    raise ProsvError(f'rope type {rope_type!r} is not supported; supported: '
                     f'{", ".join(SUPPORTED_ROPE_TYPES)}')
  return RopeConfig(
      theta=float(params.get('rope_theta', default_theta)),
      rope_type=rope_type,
      factor=float(params.get('factor', 1.0)),
      low_freq_factor=float(params.get('low_freq_factor', 1.0)),
      high_freq_factor=float(params.get('high_freq_factor', 4.0)),
      original_max_position=int(params.get('original_max_position_embeddings', 8192)),
  )


def _as_tuple(ids: Any) -> tuple[int, ...]:
  if ids is None:
    return ()
  if isinstance(ids, int):
    return (ids,)
  return tuple(int(i) for i in ids)


def from_hf_config(hf: Any) -> ModelConfig:
  """Builds a ModelConfig from a transformers config object (or its text_config)."""
  hf = getattr(hf, 'text_config', None) or hf
  model_type = getattr(hf, 'model_type', None)
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ProsvError(f'model type {model_type!r} is not supported; supported: '
                     f'{", ".join(sorted(set(SUPPORTED_MODEL_TYPES)))}')
  family = SUPPORTED_MODEL_TYPES[model_type]
  hidden = int(hf.hidden_size)
  heads = int(hf.num_attention_heads)
  head_dim = int(_get(hf, 'head_dim', hidden // heads))
  layers = int(hf.num_hidden_layers)
  gemma = family in ('gemma2', 'gemma3')

  # transformers 5 keeps rope settings in `rope_parameters`; Gemma-3 has one per layer kind.
  rope_params = _get(hf, 'rope_parameters', {})
  default_theta = float(_get(hf, 'rope_theta', 10000.0))
  if 'full_attention' in rope_params or 'sliding_attention' in rope_params:
    rope = _rope_from_params(rope_params.get('full_attention'), default_theta)
    rope_local = _rope_from_params(rope_params.get('sliding_attention'), default_theta)
  else:
    if not rope_params and getattr(hf, 'rope_scaling', None):
      rope_params = dict(hf.rope_scaling)
    rope = _rope_from_params(rope_params, default_theta)
    rope_local = None

  layer_types = _get(hf, 'layer_types', None)
  sliding_window = _get(hf, 'sliding_window', None)
  if family == 'qwen2' and not _get(hf, 'use_sliding_window', False):
    sliding_window = None
  if layer_types and sliding_window:
    sliding = tuple(t == 'sliding_attention' for t in layer_types)
  else:
    sliding = (False,) * layers
    sliding_window = None if not any(sliding) else sliding_window

  if gemma:
    activation = _get(hf, 'hidden_activation', _get(hf, 'hidden_act', 'gelu_pytorch_tanh'))
  else:
    activation = _get(hf, 'hidden_act', 'silu')
  activation = {'silu': 'silu', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu_tanh': 'gelu_tanh'}.get(
      activation, activation)

  qscalar = _get(hf, 'query_pre_attn_scalar', None) if gemma else None
  attention_bias = bool(_get(hf, 'attention_bias', False))
  return ModelConfig(
      family=family,
      vocab_size=int(hf.vocab_size),
      hidden_size=hidden,
      intermediate_size=int(hf.intermediate_size),
      num_layers=layers,
      num_heads=heads,
      num_kv_heads=int(_get(hf, 'num_key_value_heads', heads)),
      head_dim=head_dim,
      rms_norm_eps=float(_get(hf, 'rms_norm_eps', 1e-6)),
      rope=rope,
      rope_local=rope_local,
      activation=activation,
      qkv_bias=attention_bias or family == 'qwen2',
      o_bias=attention_bias and family == 'llama',
      mlp_bias=bool(_get(hf, 'mlp_bias', False)),
      tie_embeddings=bool(_get(hf, 'tie_word_embeddings', True)),
      norm_plus_one=gemma,
      scale_embeddings=gemma,
      sandwich_norms=gemma,
      qk_norm=family == 'gemma3',
      query_scale=float(qscalar) ** -0.5 if qscalar else 0.0,
      attn_softcap=_get(hf, 'attn_logit_softcapping', None) if gemma else None,
      final_softcap=_get(hf, 'final_logit_softcapping', None) if gemma else None,
      sliding_window=int(sliding_window) if sliding_window else None,
      sliding_layers=sliding,
      max_position=int(_get(hf, 'max_position_embeddings', 8192)),
      bos_id=_get(hf, 'bos_token_id', None),
      eos_ids=_as_tuple(_get(hf, 'eos_token_id', None)),
      pad_id=_get(hf, 'pad_token_id', None),
  )


def rope_inv_freq(rope: RopeConfig, head_dim: int):
  """Inverse frequencies [head_dim // 2] as numpy float64, per the rope type."""
  import numpy as np  # local: this module stays importable without array libraries
  inv = 1.0 / (rope.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  if rope.rope_type == 'linear':
    return inv / rope.factor
  if rope.rope_type == 'llama3':
    low_wavelen = rope.original_max_position / rope.low_freq_factor
    high_wavelen = rope.original_max_position / rope.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
    smooth = ((rope.original_max_position / wavelen - rope.low_freq_factor)
              / (rope.high_freq_factor - rope.low_freq_factor))
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled)
  return inv
