"""Hugging Face tensor names and layout -> our stacked parameter tree.

Both loaders (HF folder and GGUF) produce a Hugging Face style state dict, so this is the one
place that knows how checkpoints map onto the model.
"""

import jax
import numpy as np

from prosv_jax.errors import ProsvError
from prosv_jax.models.config import ModelConfig
from prosv_jax.models.transformer import param_shapes


def _layer_names(cfg: ModelConfig) -> dict[tuple[str, ...], str]:
  """Our per-layer path -> HF name suffix under `model.layers.{i}.`."""
  names = {
      ('attn_norm', 'scale'): 'input_layernorm.weight',
      ('mlp', 'gate', 'kernel'): 'mlp.gate_proj.weight',
      ('mlp', 'up', 'kernel'): 'mlp.up_proj.weight',
      ('mlp', 'down', 'kernel'): 'mlp.down_proj.weight',
  }
  for ours, theirs in (('q', 'q_proj'), ('k', 'k_proj'), ('v', 'v_proj'), ('o', 'o_proj')):
    names[('attn', ours, 'kernel')] = f'self_attn.{theirs}.weight'
    if (cfg.qkv_bias and ours != 'o') or (cfg.o_bias and ours == 'o'):
      names[('attn', ours, 'bias')] = f'self_attn.{theirs}.bias'
  if cfg.mlp_bias:
    for p in ('gate', 'up', 'down'):
      names[('mlp', p, 'bias')] = f'mlp.{p}_proj.bias'
  if cfg.qk_norm:
    names[('attn', 'q_norm', 'scale')] = 'self_attn.q_norm.weight'
    names[('attn', 'k_norm', 'scale')] = 'self_attn.k_norm.weight'
  if cfg.sandwich_norms:  # Gemma: "post_attention_layernorm" really is post-attention
    names[('post_attn_norm', 'scale')] = 'post_attention_layernorm.weight'
    names[('mlp_norm', 'scale')] = 'pre_feedforward_layernorm.weight'
    names[('post_mlp_norm', 'scale')] = 'post_feedforward_layernorm.weight'
  else:  # Llama/Qwen2 call the pre-MLP norm "post_attention_layernorm"
    names[('mlp_norm', 'scale')] = 'post_attention_layernorm.weight'
  return names


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def params_from_hf(cfg: ModelConfig, state: dict[str, np.ndarray], dtype=np.float32):
  """Builds the parameter tree from HF-named numpy tensors; checks every name and shape."""
  state = {k.removeprefix('language_model.').replace('model.language_model.', 'model.'): v
           for k, v in state.items()}

  def take(name):
    if name not in state:
      raise ProsvError(f'checkpoint has no tensor {name!r}; the weights do not match the '
                       f'{cfg.family} config (wrong or truncated checkpoint?)')
    return np.asarray(state[name])

  def linear(w):  # HF [out, in] -> kernel [in, out]
    return w.T if w.ndim == 2 else w

  params = {'embed': {'embedding': take('model.embed_tokens.weight')},
            'final_norm': {'scale': take('model.norm.weight')}}
  if not cfg.tie_embeddings:
    params['lm_head'] = {'kernel': take('lm_head.weight').T}
  for path, suffix in _layer_names(cfg).items():
    stacked = np.stack([linear(take(f'model.layers.{i}.{suffix}'))
                        for i in range(cfg.num_layers)])
    _set(params, ('layers',) + path, stacked)

  expected = param_shapes(cfg)
  got_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  for path, spec in jax.tree_util.tree_leaves_with_path(expected):
    key = jax.tree_util.keystr(path)
    if key not in got_paths:
      raise ProsvError(f'no weights for {key}; the checkpoint does not match its config')
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    spec = _lookup(expected, path)
    if spec is None or tuple(leaf.shape) != tuple(spec.shape):
      want = None if spec is None else tuple(spec.shape)
      raise ProsvError(f'weight {jax.tree_util.keystr(path)} has shape {tuple(leaf.shape)}, '
                       f'the config implies {want}; the checkpoint does not match its config')
  return jax.tree.map(lambda a: np.asarray(a, dtype=dtype), params)


def _lookup(tree, path):
  for entry in path:
    key = getattr(entry, 'key', None)
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree
