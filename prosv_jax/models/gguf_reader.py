"""Reads a GGUF file into what a Hugging Face folder gives: config, weights, tokenizer.

``read_gguf`` returns a ``transformers`` config, a state dict with Hugging Face
names and layouts, and a ``PreTrainedTokenizerFast``, so loading a ``.gguf``
file goes down the same path as loading a HF folder.

llama.cpp's converter changes some tensors on the way into GGUF; we undo it:
  * llama: q/k projection rows are permuted for llama.cpp's rope layout.
  * gemma2/gemma3: every ``*norm.weight`` is stored as ``w + 1`` (HF's Gemma
    RMSNorm computes ``x * (1 + w)``, llama.cpp's computes ``x * w``).

Only public APIs of ``gguf``, ``tokenizers`` and ``transformers`` are used.
"""

from __future__ import annotations

import math
import os
from typing import Any

import gguf
import numpy as np
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from prosv_jax.errors import ProsvError

SUPPORTED_ARCHITECTURES = ('llama', 'qwen2', 'gemma2', 'gemma3')
_ARCH_ALIASES = {'gemma3_text': 'gemma3'}
_GEMMA_ARCHS = ('gemma2', 'gemma3')

# llama.cpp's token types (gguf.TokenType).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

_HF_FIX = 'pass a local HF folder instead'

# Pre-tokenizer regexes, as llama.cpp's tokenizer uses them per `tokenizer.ggml.pre`.
_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# name -> (split regex, split digits one by one first, ignore_merges).
_PRE_TOKENIZERS = {
    **{name: (_GPT2_SPLIT, False, False) for name in ('default', 'gpt-2', 'gpt2', 'phi-2', 'olmo', 'mpt',
                                                      'roberta-bpe')},
    **{name: (_GPT2_SPLIT, True, False) for name in ('smollm', 'starcoder', 'refact', 'command-r', 'codeshell',
                                                     'exaone', 'minerva-7b')},
    **{name: (_LLAMA3_SPLIT, False, True) for name in ('llama3', 'llama-v3', 'llama-bpe', 'falcon3', 'dbrx',
                                                       'smaug-bpe')},
    **{name: (_QWEN2_SPLIT, False, False) for name in ('qwen2', 'deepseek-r1-qwen', 'stablelm2')},
    'tekken': (_TEKKEN_SPLIT, False, False),
    **{name: (_GPT4O_SPLIT, False, False) for name in ('gpt-4o', 'llama4')},
}

# GGUF tensor name -> HF name; per-layer names are suffixes of blk.{i}. / model.layers.{i}.
_GLOBAL_NAMES = {
    'token_embd.weight': 'model.embed_tokens.weight',
    'output_norm.weight': 'model.norm.weight',
    'output.weight': 'lm_head.weight',
}
_LAYER_NAMES = {
    'attn_norm.weight': 'input_layernorm.weight',
    'attn_q.weight': 'self_attn.q_proj.weight',
    'attn_k.weight': 'self_attn.k_proj.weight',
    'attn_v.weight': 'self_attn.v_proj.weight',
    'attn_output.weight': 'self_attn.o_proj.weight',
    'attn_q.bias': 'self_attn.q_proj.bias',
    'attn_k.bias': 'self_attn.k_proj.bias',
    'attn_v.bias': 'self_attn.v_proj.bias',
    'attn_output.bias': 'self_attn.o_proj.bias',
    'ffn_gate.weight': 'mlp.gate_proj.weight',
    'ffn_up.weight': 'mlp.up_proj.weight',
    'ffn_down.weight': 'mlp.down_proj.weight',
}
_LLAMA_LAYER_NAMES = {**_LAYER_NAMES, 'ffn_norm.weight': 'post_attention_layernorm.weight'}
# Gemma's ffn_norm is the norm *before* the MLP; post_attention_norm is the one after attention.
_GEMMA_LAYER_NAMES = {
    **_LAYER_NAMES,
    'post_attention_norm.weight': 'post_attention_layernorm.weight',
    'ffn_norm.weight': 'pre_feedforward_layernorm.weight',
    'post_ffw_norm.weight': 'post_feedforward_layernorm.weight',
}
_LAYER_NAMES_BY_ARCH = {
    'llama': _LLAMA_LAYER_NAMES,
    'qwen2': _LLAMA_LAYER_NAMES,
    'gemma2': _GEMMA_LAYER_NAMES,
    'gemma3': {**_GEMMA_LAYER_NAMES, 'attn_q_norm.weight': 'self_attn.q_norm.weight',
               'attn_k_norm.weight': 'self_attn.k_norm.weight'},
}
# Read into the config (llama3 rope), not weights.
_CONFIG_ONLY_TENSORS = ('rope_freqs.weight',)


def read_gguf(
    path: str | os.PathLike, dtype=np.float32
) -> tuple[transformers.PretrainedConfig, dict[str, np.ndarray], transformers.PreTrainedTokenizerFast]:
  """Reads a GGUF model file as a Hugging Face config, state dict and tokenizer.

  Args:
    path: a ``.gguf`` file (one file, not a split set).
    dtype: numpy dtype of the returned weights (every tensor is dequantized to
      float32 first, then cast).

  Returns:
    ``(config, state_dict, tokenizer)``: a ``LlamaConfig``/``Qwen2Config``/
    ``Gemma2Config``/``Gemma3TextConfig``; weights named and shaped as in the
    HF checkpoint (``[out, in]`` linears; no ``lm_head.weight`` when the
    embeddings are tied); a ``PreTrainedTokenizerFast``.

  Raises:
    ProsvError: the file is missing, not GGUF, truncated, or holds an
      architecture, quantization or tokenizer this reader does not support.
  """
  path = os.fspath(path)
  reader = _open(path)
  meta = _Metadata(reader)
  arch = _architecture(meta, path)
  tensors = {t.name: t for t in reader.tensors}
  tokens = meta.get('tokenizer.ggml.tokens')
  if not tokens:
    raise ProsvError(f'GGUF file {path} has no tokenizer.ggml.tokens (no vocabulary); {_HF_FIX}')
  config = _build_config(arch, meta, tensors, len(tokens), path)
  tokenizer = _build_tokenizer(arch, meta, tokens, config, path)  # before the slow part: fail early
  state_dict = _build_state_dict(arch, config, tensors, dtype, path)
  return config, state_dict, tokenizer


# --- file and metadata -------------------------------------------------------


def _open(path: str) -> gguf.GGUFReader:
  if not os.path.exists(path):
    raise ProsvError(f'no such GGUF file: {path}; pass an existing .gguf file or a local HF folder')
  if os.path.isdir(path):
    raise ProsvError(f'{path} is a folder, not a GGUF file; pass the .gguf file inside it (a HF folder '
                     'loads with read_hf_folder)')
  try:
    with open(path, 'rb') as f:
      magic = f.read(4)
  except OSError as e:
    raise ProsvError(f'cannot read GGUF file {path}: {e.strerror}; check the path and its permissions') from e
  if magic != b'GGUF':
    raise ProsvError(f'{path} is not a GGUF file (it does not start with the GGUF magic bytes); pass a .gguf '
                     'file written by llama.cpp or a local HF folder')
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # gguf raises ValueError, IndexError, struct/numpy errors, ... on damaged files
    detail = ' '.join(str(e).split())[:200] or type(e).__name__
    raise ProsvError(f'GGUF file {path} is truncated or corrupt ({detail}); download or convert it again') from e


class _Metadata:
  """Typed access to a GGUFReader's key/value fields."""

  def __init__(self, reader: gguf.GGUFReader):
    self._fields = reader.fields

  def __contains__(self, key: str) -> bool:
    return key in self._fields

  def get(self, key: str, default: Any = None) -> Any:
    field = self._fields.get(key)
    if field is None or not field.types:
      return default
    types, parts = field.types, field.parts
    if types[0] == gguf.GGUFValueType.ARRAY:
      if len(types) > 2:  # nested arrays: nothing we read uses them
        return field.contents()
      if types[-1] == gguf.GGUFValueType.STRING:
        return [_decode(parts[i]) for i in field.data]
      if not field.data:
        return np.zeros((0,))
      return np.concatenate([parts[i] for i in field.data])
    if types[0] == gguf.GGUFValueType.STRING:
      return _decode(parts[field.data[0]])
    value = parts[field.data[0]][0]
    if types[0] in (gguf.GGUFValueType.FLOAT32,):
      # float32 metadata (eps 1e-5 reads 9.99999974e-06): keep the decimal that was written
      return float(str(np.float32(value)))
    return value.item()


def _decode(raw: np.ndarray) -> str:
  return bytes(raw).decode('utf-8', errors='replace')


def _architecture(meta: _Metadata, path: str) -> str:
  arch = meta.get('general.architecture')
  if arch is None:
    raise ProsvError(f'GGUF file {path} has no general.architecture key; download or convert it again')
  split_count = meta.get('split.count', 1)
  if split_count and split_count > 1:
    raise ProsvError(f'{path} is one part of a {split_count}-file split GGUF; merge the parts into one file '
                     'first (llama-gguf-split --merge)')
  arch = _ARCH_ALIASES.get(arch, arch)
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ProsvError(f'GGUF architecture {arch!r} in {path} is not supported (supported: '
                     f'{", ".join(SUPPORTED_ARCHITECTURES)}); {_HF_FIX}')
  return arch


# --- config ------------------------------------------------------------------


def _build_config(arch: str, meta: _Metadata, tensors: dict, n_tokens: int, path: str):
  """The HF config for the file's architecture, from `{arch}.*` and `tokenizer.ggml.*` keys."""
  key_arch = meta.get('general.architecture')  # keys use the file's own spelling of the name

  def get(key, default=None, required=False):
    value = meta.get(f'{key_arch}.{key}')
    if value is None:
      if required:
        raise ProsvError(f'GGUF file {path} lacks metadata key {key_arch}.{key}; download or convert it again')
      return default
    if isinstance(value, np.ndarray):  # per-layer arrays: fine only when all layers agree
      if value.size == 0 or np.any(value != value.flat[0]):
        raise ProsvError(f'GGUF file {path} gives {key_arch}.{key} per layer ({value.tolist()}), which '
                         f'{arch} models do not support; {_HF_FIX}')
      value = value.flat[0].item()
    return value

  n_layers = get('block_count', required=True)
  hidden = get('embedding_length', required=True)
  n_head = get('attention.head_count', required=True)
  n_kv = get('attention.head_count_kv', n_head)
  head_dim = get('attention.key_length', hidden // n_head)
  embd = tensors.get('token_embd.weight')
  # The embedding rows are the model's vocabulary; the token list normally has the same length.
  vocab_size = int(embd.shape[1]) if embd is not None and len(embd.shape) == 2 else n_tokens
  rope_theta = get('rope.freq_base', 10000.0)
  rope = _rope_parameters(arch, get, rope_theta, head_dim, tensors, path)

  kwargs = dict(
      architectures=[_HF_CLASS_NAMES[arch]],
      vocab_size=vocab_size,
      hidden_size=hidden,
      intermediate_size=get('feed_forward_length', required=True),
      num_hidden_layers=n_layers,
      num_attention_heads=n_head,
      num_key_value_heads=n_kv,
      head_dim=head_dim,
      max_position_embeddings=get('context_length', 2048),
      rms_norm_eps=get('attention.layer_norm_rms_epsilon', 1e-6),
      tie_word_embeddings='output.weight' not in tensors,
      bos_token_id=meta.get('tokenizer.ggml.bos_token_id'),
      eos_token_id=meta.get('tokenizer.ggml.eos_token_id'),
      pad_token_id=meta.get('tokenizer.ggml.padding_token_id'),
      rope_parameters=rope,
  )
  if arch == 'llama':
    kwargs['attention_bias'] = 'blk.0.attn_q.bias' in tensors
    kwargs['mlp_bias'] = False
    return transformers.LlamaConfig(**kwargs)
  if arch == 'qwen2':
    window = get('attention.sliding_window')
    kwargs.update(use_sliding_window=window is not None, sliding_window=window)
    return transformers.Qwen2Config(**kwargs)

  # Gemma: llama.cpp scales queries by 1/sqrt(hidden/heads) for the 27B models, by 1/sqrt(head_dim) otherwise.
  big = (arch == 'gemma2' and n_layers == 46) or (arch == 'gemma3' and n_layers == 62)
  kwargs.update(
      hidden_activation='gelu_pytorch_tanh',
      query_pre_attn_scalar=hidden // n_head if big else head_dim,
      sliding_window=get('attention.sliding_window', 4096),
      layer_types=_gemma_layer_types(arch, meta.get(f'{key_arch}.attention.sliding_window_pattern'), n_layers),
      attn_logit_softcapping=get('attn_logit_softcapping'),
      final_logit_softcapping=get('final_logit_softcapping'),
  )
  if arch == 'gemma2':
    return transformers.Gemma2Config(**kwargs)
  kwargs['rope_parameters'] = {
      'full_attention': rope,
      # Local layers: llama.cpp's gemma3 default base 10000, unscaled.
      'sliding_attention': {'rope_type': 'default', 'rope_theta': get('rope.freq_base_swa', 10000.0)},
  }
  return transformers.Gemma3TextConfig(**kwargs)


_HF_CLASS_NAMES = {
    'llama': 'LlamaForCausalLM',
    'qwen2': 'Qwen2ForCausalLM',
    'gemma2': 'Gemma2ForCausalLM',
    'gemma3': 'Gemma3ForCausalLM',
}


def _gemma_layer_types(arch: str, pattern, n_layers: int) -> list[str]:
  """Sliding/full attention per layer: the key if given, else llama.cpp's fixed pattern."""
  if isinstance(pattern, np.ndarray) and pattern.size == n_layers:
    sliding = [bool(x) for x in pattern]
  else:
    # llama.cpp: layer il slides when il % n < n - 1 (gemma2 n=2, gemma3 n=6).
    n = int(pattern) if isinstance(pattern, int) and pattern > 0 else (2 if arch == 'gemma2' else 6)
    sliding = [i % n < n - 1 for i in range(n_layers)]
  return ['sliding_attention' if s else 'full_attention' for s in sliding]


def _rope_parameters(arch, get, rope_theta, head_dim, tensors, path) -> dict:
  """HF `rope_parameters` from the `rope.*` keys (and llama3's `rope_freqs.weight`)."""
  rope = {'rope_type': 'default', 'rope_theta': rope_theta}
  scaling = get('rope.scaling.type')
  factor = get('rope.scaling.factor')
  if scaling is None and get('rope.scale_linear') is not None:  # pre-2024 files
    scaling, factor = 'linear', get('rope.scale_linear')
  if scaling in (None, 'none') or (scaling == 'linear' and factor in (None, 1.0)):
    pass
  elif scaling == 'linear':
    rope.update(rope_type='linear', factor=factor)
  elif scaling == 'yarn':
    rope.update(rope_type='yarn', factor=factor)
    for gguf_key, hf_key in (('rope.scaling.original_context_length', 'original_max_position_embeddings'),
                             ('rope.scaling.yarn_beta_fast', 'beta_fast'),
                             ('rope.scaling.yarn_beta_slow', 'beta_slow')):
      if get(gguf_key) is not None:
        rope[hf_key] = get(gguf_key)
  else:
    raise ProsvError(f'GGUF file {path} uses rope scaling {scaling!r}, which this reader does not support '
                     f'(supported: none, linear, yarn); {_HF_FIX}')

  if 'rope_freqs.weight' in tensors:
    if arch != 'llama' or rope['rope_type'] != 'default':
      raise ProsvError(f'GGUF file {path} has a rope_freqs tensor this reader cannot map for {arch}; {_HF_FIX}')
    freqs = gguf.quants.dequantize(tensors['rope_freqs.weight'].data, tensors['rope_freqs.weight'].tensor_type)
    rope.update(_llama3_rope(np.asarray(freqs, np.float64).reshape(-1), rope_theta, head_dim, path))

  rope_dim = get('rope.dimension_count', head_dim)
  if rope_dim != head_dim:
    rope['partial_rotary_factor'] = rope_dim / head_dim
  return rope


def _llama3_rope(factors: np.ndarray, theta: float, head_dim: int, path: str) -> dict:
  """Recovers HF's llama3 rope scaling from the per-frequency divisors llama.cpp stores.

  llama.cpp writes 1 for short wavelengths, `factor` for long ones and a
  smooth blend between; the blend only fixes low/high_freq_factor relative to
  original_max_position_embeddings, so that is taken as 8192 (Llama 3.x).
  """
  orig = 8192
  factor = float(factors.max())
  inv_freq = 1.0 / theta ** (np.arange(0, 2 * len(factors), 2, dtype=np.float64) / head_dim)
  wavelen = 2 * math.pi / inv_freq

  def expected(low, high):
    smooth = (orig / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < orig / high, 1.0, np.where(wavelen > orig / low, factor, mid))

  candidates = [(1.0, 4.0)]
  mid = (factors > 1 + 1e-4) & (factors < factor - 1e-4)
  if factor > 1 and mid.sum() >= 2:
    # smooth = (orig / wavelen - low) / (high - low) is linear in 1 / wavelen: fit it.
    smooth = (1 / factors[mid] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(1 / wavelen[mid], smooth, 1)
    span = orig / slope
    candidates.insert(0, (float(-intercept * span), float(-intercept * span + span)))
  for low, high in candidates:
    if low > 0 and high > low and np.allclose(expected(low, high), factors, rtol=1e-3, atol=1e-4):
      return {'rope_type': 'llama3', 'factor': factor, 'low_freq_factor': round(low, 4),
              'high_freq_factor': round(high, 4), 'original_max_position_embeddings': orig}
  raise ProsvError(f'GGUF file {path} has a rope_freqs tensor that is not llama3 rope scaling; {_HF_FIX}')


# --- weights -----------------------------------------------------------------


def _build_state_dict(arch: str, config, tensors: dict, dtype, path: str) -> dict[str, np.ndarray]:
  layer_names = _LAYER_NAMES_BY_ARCH[arch]
  n_layers = config.num_hidden_layers
  state_dict = {}
  for name, tensor in tensors.items():
    hf_name = _hf_name(name, layer_names, n_layers)
    if hf_name is None:
      if name in _CONFIG_ONLY_TENSORS:
        continue
      raise ProsvError(f'GGUF file {path} has tensor {name!r}, which a {arch} model does not have; {_HF_FIX}')
    w = _dequantize(tensor, path)
    if arch == 'llama' and hf_name.endswith(('q_proj.weight', 'q_proj.bias')):
      w = _unpermute_rope(w, config.num_attention_heads)
    elif arch == 'llama' and hf_name.endswith(('k_proj.weight', 'k_proj.bias')):
      w = _unpermute_rope(w, config.num_key_value_heads)
    if arch in _GEMMA_ARCHS and hf_name.endswith('norm.weight'):
      w = w - 1.0
    state_dict[hf_name] = np.asarray(w).astype(dtype)
  _check_shapes(arch, config, state_dict, path)
  return state_dict


def _hf_name(name: str, layer_names: dict, n_layers: int) -> str | None:
  if name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[name]
  prefix, _, rest = name.partition('.')
  layer, _, suffix = rest.partition('.')
  if prefix != 'blk' or not layer.isdigit() or int(layer) >= n_layers or suffix not in layer_names:
    return None
  return f'model.layers.{int(layer)}.{layer_names[suffix]}'


def _dequantize(tensor, path: str) -> np.ndarray:
  shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # GGUF lists dims innermost first
  if tensor.data.nbytes != tensor.n_bytes:
    raise ProsvError(f'GGUF file {path} is truncated: tensor {tensor.name} has {tensor.data.nbytes} of '
                     f'{tensor.n_bytes} bytes; download or convert it again')
  try:
    w = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
  except NotImplementedError as e:
    raise ProsvError(f'tensor {tensor.name} in {path} is {tensor.tensor_type.name}, which gguf '
                     f'{_gguf_version()} cannot dequantize; use a file quantized as F16, BF16, Q8_0, Q4_K, Q6_K '
                     f'or similar, or {_HF_FIX}') from e
  return np.asarray(w, dtype=np.float32).reshape(shape)


def _gguf_version() -> str:
  try:
    from importlib.metadata import version
    return version('gguf')
  except Exception:  # metadata missing in odd installs; the version is only for the message
    return '(installed)'


def _unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undoes llama.cpp's `permute`: per head, rows [2, d/2] were stored as [d/2, 2]."""
  return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _check_shapes(arch: str, config, state_dict: dict, path: str) -> None:
  """Every tensor a HF model needs is there with the HF shape; catches metadata/tensor mismatches."""
  d, ff, hd = config.hidden_size, config.intermediate_size, config.head_dim
  q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
  expected = {'model.embed_tokens.weight': (config.vocab_size, d), 'model.norm.weight': (d,)}
  if not config.tie_word_embeddings:
    expected['lm_head.weight'] = (config.vocab_size, d)
  layer = {
      'input_layernorm.weight': (d,),
      'post_attention_layernorm.weight': (d,),
      'self_attn.q_proj.weight': (q, d),
      'self_attn.k_proj.weight': (kv, d),
      'self_attn.v_proj.weight': (kv, d),
      'self_attn.o_proj.weight': (d, q),
      'mlp.gate_proj.weight': (ff, d),
      'mlp.up_proj.weight': (ff, d),
      'mlp.down_proj.weight': (d, ff),
  }
  if arch == 'qwen2':
    layer.update({'self_attn.q_proj.bias': (q,), 'self_attn.k_proj.bias': (kv,), 'self_attn.v_proj.bias': (kv,)})
  if arch in _GEMMA_ARCHS:
    layer.update({'pre_feedforward_layernorm.weight': (d,), 'post_feedforward_layernorm.weight': (d,)})
  if arch == 'gemma3':
    layer.update({'self_attn.q_norm.weight': (hd,), 'self_attn.k_norm.weight': (hd,)})
  for i in range(config.num_hidden_layers):
    expected.update({f'model.layers.{i}.{k}': v for k, v in layer.items()})
  for name, shape in expected.items():
    if name not in state_dict:
      raise ProsvError(f'GGUF file {path} lacks the tensor for {name}; download or convert it again')
    if state_dict[name].shape != shape:
      raise ProsvError(f'GGUF file {path}: {name} has shape {state_dict[name].shape}, but its metadata implies '
                       f'{shape}; download or convert it again')


# --- tokenizer ---------------------------------------------------------------


def _build_tokenizer(arch: str, meta: _Metadata, tokens: list[str], config, path: str):
  kind = meta.get('tokenizer.ggml.model')
  types = meta.get('tokenizer.ggml.token_type')
  types = np.full(len(tokens), _NORMAL) if types is None or len(types) != len(tokens) else np.asarray(types)
  if kind == 'gpt2':
    tokens, tokenizer = _byte_level_bpe(meta, tokens, types, path)
    add_bos_default = False
  elif kind == 'llama':
    tokens, tokenizer = _sentencepiece_bpe(arch, meta, tokens, types, path)
    add_bos_default = True  # llama.cpp adds BOS for sentencepiece vocabularies unless told not to
  else:
    raise ProsvError(f'GGUF tokenizer kind {kind!r} in {path} is not supported yet (supported: gpt2, llama); '
                     f'{_HF_FIX}')

  # Control tokens are special; user-defined ones (e.g. <think>) are matched whole but not special.
  # Sentencepiece whitespace runs ('▁▁') come from the merges instead: text never holds '▁'.
  special, plain = [], []
  for i, (token, kind_i) in enumerate(zip(tokens, types.tolist())):
    if kind_i in (_CONTROL, _UNKNOWN):
      special.append(AddedToken(token, special=True, normalized=False))
    elif (kind_i == _USER_DEFINED and tokenizer.token_to_id(token) == i
          and not (kind == 'llama' and '\u2581' in token)):
      plain.append(AddedToken(token, special=False, normalized=False))
  # Each content is already in the vocab, so these keep their ids.
  tokenizer.add_special_tokens(special)
  tokenizer.add_tokens(plain)

  def token(key):
    i = meta.get(f'tokenizer.ggml.{key}_token_id')
    return tokens[i] if i is not None and 0 <= i < len(tokens) else None

  kwargs = {}
  for name, key in (('bos_token', 'bos'), ('eos_token', 'eos'), ('unk_token', 'unknown'), ('pad_token', 'padding')):
    if token(key) is not None:
      kwargs[name] = token(key)
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer,
      add_bos_token=bool(meta.get('tokenizer.ggml.add_bos_token', add_bos_default)),
      add_eos_token=bool(meta.get('tokenizer.ggml.add_eos_token', False)),
      chat_template=meta.get('tokenizer.chat_template'),
      clean_up_tokenization_spaces=False,
      model_max_length=config.max_position_embeddings,
      **kwargs,
  )


def _vocab(tokens: list[str]) -> dict[str, int]:
  return {token: i for i, token in enumerate(tokens)}  # duplicates: the last id wins, as in llama.cpp


def _byte_level_bpe(meta: _Metadata, tokens: list[str], types: np.ndarray, path: str):
  """GPT-2 style byte-level BPE from tokens + merges, split the way `tokenizer.ggml.pre` says."""
  pre = meta.get('tokenizer.ggml.pre', 'default')
  if pre not in _PRE_TOKENIZERS:
    raise ProsvError(f'GGUF pre-tokenizer {pre!r} in {path} is not supported yet (supported: '
                     f'{", ".join(sorted(_PRE_TOKENIZERS))}); {_HF_FIX}')
  raw_merges = meta.get('tokenizer.ggml.merges')
  if not raw_merges:
    raise ProsvError(f'GGUF file {path} has a gpt2 tokenizer without tokenizer.ggml.merges; {_HF_FIX}')
  merges = []
  for merge in raw_merges:
    left, sep, right = merge.partition(' ')
    if not sep or ' ' in right:
      raise ProsvError(f'GGUF file {path} has a malformed merge {merge!r}; download or convert it again')
    merges.append((left, right))
  # A normal token spelled with raw characters outside the byte alphabet could never be produced by
  # the merges; respell it in the alphabet (added tokens keep their raw text).
  alphabet = _byte_alphabet()
  spelled = set(alphabet.values())
  tokens = [''.join(alphabet[b] for b in t.encode('utf-8')) if kind == _NORMAL and not set(t) <= spelled else t
            for t, kind in zip(tokens, types.tolist())]
  split, digits, ignore_merges = _PRE_TOKENIZERS[pre]
  tokenizer = Tokenizer(models.BPE(vocab=_vocab(tokens), merges=merges, ignore_merges=ignore_merges))
  add_prefix = bool(meta.get('tokenizer.ggml.add_space_prefix', False))
  steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
  if split == _GPT2_SPLIT:  # ByteLevel's built-in regex is exactly GPT-2's
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=add_prefix, use_regex=True))
  else:
    steps += [pre_tokenizers.Split(Regex(split), behavior='isolated'),
              pre_tokenizers.ByteLevel(add_prefix_space=add_prefix, use_regex=False)]
  tokenizer.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
  tokenizer.decoder = decoders.ByteLevel()
  return tokens, tokenizer


def _byte_alphabet() -> dict[int, str]:
  """GPT-2's byte -> printable character map (the `bytes_to_unicode` table)."""
  keep = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(range(ord('®'), 256))
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def _sentencepiece_bpe(arch: str, meta: _Metadata, tokens: list[str], types: np.ndarray, path: str):
  """SentencePiece (llama.cpp's 'llama' kind) as a BPE with byte fallback.

  llama.cpp merges the adjacent pair whose merged piece scores best; a BPE
  whose merges are all (left, right) splits of vocab pieces, ranked by that
  score, tokenizes the same way.
  """
  scores = meta.get('tokenizer.ggml.scores')
  if scores is None or len(scores) != len(tokens):
    raise ProsvError(f'GGUF file {path} has a sentencepiece tokenizer without tokenizer.ggml.scores; {_HF_FIX}')
  # llama.cpp's converter writes user-defined pieces with spaces where SentencePiece has '▁'.
  tokens = [t.replace(' ', '\u2581') if kind == _USER_DEFINED else t for t, kind in zip(tokens, types.tolist())]
  vocab = _vocab(tokens)
  if arch in _GEMMA_ARCHS:
    # Gemma's scores are flat (-1000) for its whitespace-run pieces, which llama.cpp matches whole
    # before merging; ranking by file order keeps those first and is the score order elsewhere.
    rank = -np.arange(len(tokens), dtype=np.float64)
  else:
    rank = np.asarray(scores, dtype=np.float64)
  merges = []
  for token, i in vocab.items():
    if types[i] == _BYTE:
      continue
    pairs = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in vocab and token[k:] in vocab]
    pairs.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
    merges.extend((rank[i], len(left), len(right), left, right) for left, right in pairs)
  merges.sort(key=lambda m: (-m[0], -m[1], -m[2]))
  unk_id = meta.get('tokenizer.ggml.unknown_token_id')
  if unk_id is None:
    unk = [i for i, kind in enumerate(types.tolist()) if kind == _UNKNOWN]
    unk_id = unk[0] if unk else None
  tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges],
                                   unk_token=tokens[unk_id] if unk_id is not None else None,
                                   fuse_unk=True, byte_fallback=True))
  add_prefix = bool(meta.get('tokenizer.ggml.add_space_prefix', arch not in _GEMMA_ARCHS))
  replace = normalizers.Replace(' ', '\u2581')
  tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend('\u2581'), replace]) if add_prefix else replace
  steps = [decoders.Replace('\u2581', ' '), decoders.ByteFallback(), decoders.Fuse()]
  if add_prefix:
    steps.append(decoders.Strip(' ', 1, 0))
  tokenizer.decoder = decoders.Sequence(steps)
  return tokens, tokenizer
