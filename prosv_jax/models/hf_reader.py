"""Reads a Hugging Face model folder (config, safetensors weights, tokenizer) into numpy.

The safetensors files are parsed here with numpy memmaps rather than with
`safetensors.numpy`, because numpy has no bfloat16 and most checkpoints are bf16;
ml_dtypes supplies the dtype.  Format: 8-byte little-endian header length, a JSON
header `{name: {dtype, shape, data_offsets: [begin, end]}}`, then the data buffer
that the offsets index into.
"""

import json
import os

import huggingface_hub
import ml_dtypes
import numpy as np
import transformers

from prosv_jax.errors import ProsvError, one_line

_SINGLE_FILE = 'model.safetensors'
_INDEX_FILE = 'model.safetensors.index.json'

_DTYPES = {
    'F64': np.dtype('<f8'),
    'F32': np.dtype('<f4'),
    'F16': np.dtype('<f2'),
    'BF16': np.dtype(ml_dtypes.bfloat16),
    'I64': np.dtype('<i8'),
    'I32': np.dtype('<i4'),
    'I16': np.dtype('<i2'),
    'I8': np.dtype('i1'),
    'U8': np.dtype('u1'),
    'BOOL': np.dtype('?'),
}
# Casting these to float would silently drop their per-block scales.
_QUANTIZED = ('F8_E4M3', 'F8_E5M2', 'F8_E8M0', 'F4', 'F6_E2M3', 'F6_E3M2')

# Any of these means the folder ships a tokenizer.
_TOKENIZER_FILES = (
    'tokenizer.json', 'tokenizer_config.json', 'tokenizer.model', 'vocab.json',
    'vocab.txt', 'spiece.model', 'tekken.json',
)

# What resolve_hub fetches: configs, weights, tokenizer files, chat templates.
_HUB_PATTERNS = [
    '*.json', '*.safetensors', '*.model', '*.jinja', 'merges.txt', 'vocab.txt',
    '*.tiktoken',
]
_HUB_FIX = 'pass a local HF folder or a .gguf file instead'


def read_hf_folder(
    path: str, dtype=np.float32
) -> tuple[
    transformers.PretrainedConfig,
    dict[str, np.ndarray],
    transformers.PreTrainedTokenizerBase | None,
]:
  """Loads config, weights and tokenizer from a local Hugging Face model folder.

  Multimodal checkpoints (e.g. Gemma3ForConditionalGeneration) are reduced to
  their text model: the config is `config.text_config` and the weights are
  renamed to plain CausalLM names (`model.layers.0...`, `lm_head.weight`), with
  vision tower and projector tensors dropped.

  Args:
    path: folder holding config.json and model.safetensors (or its sharded
      model.safetensors.index.json form), optionally tokenizer files.
    dtype: floating dtype every float tensor is cast to (np.float32,
      np.float16 or ml_dtypes.bfloat16). Integer/bool tensors keep theirs.

  Returns:
    (config, state_dict, tokenizer); state_dict maps HF tensor names to numpy
    arrays as saved, so a tied model has no `lm_head.weight`. The tokenizer is
    None when the folder has no tokenizer files.

  Raises:
    ProsvError: missing folder/config/weights, unreadable config, missing shard,
      or a truncated/corrupt safetensors file.
  """
  dtype = np.dtype(dtype)
  if not _is_float(dtype):
    raise ProsvError(
        f'dtype {dtype} is not a float type; use float32, float16 or bfloat16')
  if not os.path.exists(path):
    raise ProsvError(
        f'no such model folder: {path}; pass an existing HF folder (with '
        'config.json and model.safetensors), a .gguf file or hf:<repo_id>')
  if not os.path.isdir(path):
    raise ProsvError(
        f'{path} is not a folder; pass a HF model folder (with config.json and '
        'model.safetensors) or a .gguf file')
  path = os.path.abspath(path)
  config = _read_config(path)
  multimodal = getattr(config, 'text_config', None) is not None
  if multimodal:
    config = config.text_config

  state = {}
  for file in _weight_files(path):
    with _SafetensorsFile(file) as st:
      for name in st.names():
        new_name = _text_model_name(name) if multimodal else name
        if new_name is None:
          continue
        if new_name in state:
          raise ProsvError(
              f'tensor {new_name} appears twice in the weights of {path}; '
              're-download or re-save the model folder')
        state[new_name] = st.get(name, dtype)
  if not state:
    raise ProsvError(
        f'no weight tensors found in the safetensors files of {path}; '
        're-download or re-save the model folder')
  return config, state, _read_tokenizer(path)


def resolve_hub(spec: str) -> str:
  """Turns 'hf:<repo_id>[@<revision>]' into a local snapshot folder.

  Tries the local Hugging Face cache first, then the hub (unless HF_HUB_OFFLINE
  is set). Only configs, safetensors weights and tokenizer files of the repo
  root are fetched.

  Raises:
    ProsvError: bad spec, or the repo could not be fetched (offline, not found,
      gated, ...).
  """
  if not spec.startswith('hf:') or not spec[3:].split('@', 1)[0].strip():
    raise ProsvError(
        f'bad hub spec {spec!r}; write hf:<repo_id> or hf:<repo_id>@<revision>')
  repo_id, _, revision = spec[3:].strip().partition('@')
  revision = revision or None
  kwargs = dict(
      revision=revision, allow_patterns=_HUB_PATTERNS,
      ignore_patterns=['*/*'])  # subfolders hold other formats/variants
  try:
    return huggingface_hub.snapshot_download(
        repo_id, local_files_only=True, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    cache_error = e
  if huggingface_hub.constants.HF_HUB_OFFLINE:
    reason = ('not in the local cache and HF_HUB_OFFLINE is set: '
              f'{one_line(cache_error)}')
  else:
    try:
      # Metadata requests time out after 10 s: an unreachable hub fails fast.
      return huggingface_hub.snapshot_download(
          repo_id, etag_timeout=10, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      reason = one_line(e)
  raise ProsvError(f'could not fetch {repo_id} from the Hugging Face hub '
                   f'({reason}); {_HUB_FIX}')


def _read_config(path: str) -> transformers.PretrainedConfig:
  config_file = os.path.join(path, 'config.json')
  if not os.path.isfile(config_file):
    raise ProsvError(
        f'no config.json in {path}; pass a complete HF model folder (as saved '
        'by save_pretrained or downloaded from the hub) or a .gguf file')
  try:
    return transformers.AutoConfig.from_pretrained(path)
  except Exception as e:  # pylint: disable=broad-except
    raise ProsvError(
        f'could not read {config_file} ({one_line(e)}); fix or re-download '
        'config.json (it must be valid JSON with a model_type this '
        f'transformers {transformers.__version__} knows)') from None


def _weight_files(path: str) -> list[str]:
  """The safetensors files holding the weights, in load order."""
  single = os.path.join(path, _SINGLE_FILE)
  if os.path.isfile(single):
    return [single]
  index = os.path.join(path, _INDEX_FILE)
  if os.path.isfile(index):
    try:
      with open(index, encoding='utf-8') as f:
        weight_map = json.load(f)['weight_map']
      shards = sorted(set(weight_map.values()))
    except Exception as e:  # pylint: disable=broad-except
      raise ProsvError(
          f'corrupt {index} ({one_line(e)}); re-download the model folder'
      ) from None
    files = []
    for shard in shards:
      file = os.path.join(path, shard)
      if not os.path.isfile(file):
        raise ProsvError(
            f'shard {shard} listed in {index} is missing; re-download the '
            'complete model folder')
      files.append(file)
    return files
  others = sorted(os.listdir(path))
  if any(n.endswith(('.bin', '.pt', '.pth', '.ckpt')) for n in others):
    hint = ('only .bin/PyTorch weights found, which are not supported; convert '
            'them to safetensors (e.g. load in transformers and '
            'save_pretrained) or pass a .gguf file')
  elif any(n.endswith('.safetensors') for n in others):
    hint = ('other .safetensors files are not a HF transformers checkpoint; '
            're-save with save_pretrained or pass a .gguf file')
  else:
    hint = 'download the weights too or pass a .gguf file'
  raise ProsvError(f'no {_SINGLE_FILE} or {_INDEX_FILE} in {path}; {hint}')


def _text_model_name(name: str) -> str | None:
  """Maps a multimodal checkpoint name to its CausalLM name; None drops it."""
  for prefix, repl in (('language_model.', ''),  # hub layout
                       ('model.language_model.', 'model.')):  # transformers 5
    if name.startswith(prefix):
      return repl + name[len(prefix):]
  if name.startswith('lm_head.'):
    return name
  return None  # vision tower, multimodal projector


def _read_tokenizer(path: str) -> transformers.PreTrainedTokenizerBase | None:
  if not any(os.path.isfile(os.path.join(path, n)) for n in _TOKENIZER_FILES):
    return None
  try:
    return transformers.AutoTokenizer.from_pretrained(path)
  except Exception as e:  # pylint: disable=broad-except
    raise ProsvError(
        f'could not load the tokenizer in {path} ({one_line(e)}); fix or '
        're-download its tokenizer files (tokenizer.json, '
        'tokenizer_config.json, ...)') from None


class _SafetensorsFile:
  """A validated, memory-mapped safetensors file."""

  def __init__(self, file: str):
    self.file = file
    fix = 're-download or re-save it'
    size = os.path.getsize(file)
    if size < 8:
      raise ProsvError(
          f'truncated safetensors file {file} ({size} bytes); {fix}')
    with open(file, 'rb') as f:
      header_len = int.from_bytes(f.read(8), 'little')
      if 8 + header_len > size:
        raise ProsvError(
            f'truncated or corrupt safetensors file {file}: header of '
            f'{header_len} bytes does not fit in {size} bytes; {fix}')
      raw = f.read(header_len)
    try:
      header = json.loads(raw)
      if not isinstance(header, dict):
        raise ValueError('header is not a JSON object')
    except (ValueError, UnicodeDecodeError) as e:
      raise ProsvError(
          f'corrupt safetensors file {file}: bad JSON header '
          f'({one_line(e, 80)}); {fix}') from None
    header.pop('__metadata__', None)
    self._base = 8 + header_len
    data_size = size - self._base
    self._entries = {}
    for name, entry in header.items():
      try:
        st_dtype = entry['dtype']
        shape = tuple(int(d) for d in entry['shape'])
        begin, end = (int(o) for o in entry['data_offsets'])
      except (KeyError, TypeError, ValueError):
        raise ProsvError(
            f'corrupt safetensors file {file}: bad header entry for {name}; '
            f'{fix}') from None
      if st_dtype in _QUANTIZED:
        raise ProsvError(
            f'tensor {name} in {file} is {st_dtype}-quantized, which is not '
            'supported; use a bf16/fp16/fp32 checkpoint or a .gguf file')
      if st_dtype not in _DTYPES:
        raise ProsvError(
            f'tensor {name} in {file} has unsupported dtype {st_dtype}; use a '
            'bf16/fp16/fp32 checkpoint or a .gguf file')
      np_dtype = _DTYPES[st_dtype]
      if not 0 <= begin <= end or end > data_size:
        raise ProsvError(
            f'truncated or corrupt safetensors file {file}: tensor {name} data '
            f'[{begin}, {end}) lies beyond the {data_size} data bytes; {fix}')
      if any(d < 0 for d in shape) or (
          end - begin != int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize):
        raise ProsvError(
            f'corrupt safetensors file {file}: tensor {name} has {end - begin} '
            f'bytes for shape {list(shape)} {st_dtype}; {fix}')
      self._entries[name] = (np_dtype, shape, begin, end)
    self._data = None
    if data_size > 0:
      self._data = np.memmap(file, dtype=np.uint8, mode='r', offset=self._base,
                             shape=(data_size,))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._data = None  # drops the mapping once the arrays are copied out

  def names(self) -> list[str]:
    return list(self._entries)

  def get(self, name: str, dtype: np.dtype) -> np.ndarray:
    """A copy of tensor `name`; floats cast to `dtype`."""
    np_dtype, shape, begin, end = self._entries[name]
    if begin == end:
      arr = np.zeros(shape, np_dtype)
    else:
      arr = self._data[begin:end].view(np_dtype).reshape(shape)
    if _is_float(np_dtype):
      return np.array(arr, dtype=dtype)  # copies: never keep the memmap alive
    return np.array(arr)


def _is_float(dt: np.dtype) -> bool:
  return np.issubdtype(dt, np.floating) or dt == _DTYPES['BF16']
