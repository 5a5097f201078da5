"""Saving, loading and exporting trained steering vectors.

A steering vector folder holds two files:
  steering_vectors.safetensors  tensors `factor` [C] and `direction` [C, n], float32
  steering_config.json          everything else: model, layer, positions, width, concepts
                                ({index, concept_id, description} per row), chat_template,
                                the factor values, training (config), metrics, format_version

The tensors are the source of truth; the factor list in the JSON is there for people reading it.
Both load as one prosv_jax.vectors.SteeringVectors (re-exported here).

`export_control_vector` writes one concept as a llama.cpp / repeng control vector (GGUF).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import warnings

import gguf
import numpy as np
import safetensors
import safetensors.numpy

from prosv_jax import steer
from prosv_jax.errors import ProsvError
# The type lives in prosv_jax.vectors; it is re-exported here, where save and load are.
from prosv_jax.vectors import SteeringVectors, checked_config, checked_tensors

__all__ = ['SteeringVectors', 'save_vectors', 'load_vectors', 'export_control_vector',
           'read_control_vector']

VECTORS_FILE = 'steering_vectors.safetensors'
CONFIG_FILE = 'steering_config.json'
FORMAT_VERSION = 1
CONTROL_VECTOR_ARCH = 'controlvector'

_RESAVE = 're-save it with prosv_jax.artifacts.save_vectors'


def save_vectors(folder, steer_params, config: dict | None = None) -> str:
  """Writes steering_vectors.safetensors and steering_config.json into `folder`; returns it.

  `steer_params` is a SteeringVectors (its config is written) or a raw {'factor', 'direction'}
  dict with `config`: model, layer, positions, concepts, chat_template, training, metrics (any
  extra keys are kept). width, factor and format_version are filled in from the tensors. Each file is written
  under a temporary name and moved into place with os.replace, so a reader never sees a
  half-written file.
  """
  if isinstance(steer_params, SteeringVectors):
    steer_params, config = ({'factor': steer_params.factor, 'direction': steer_params.direction},
                            steer_params.config)
  factor, direction = checked_tensors(steer_params)
  count, width = direction.shape
  cfg = checked_config(config or {}, count, width)
  cfg['factor'] = [float(x) for x in factor]  # float32 -> float64 is exact
  cfg.pop('format_version', None)  # a loaded set is written in this version
  cfg = {'format_version': FORMAT_VERSION, **cfg}
  try:
    text = json.dumps(cfg, indent=2, default=_json_default) + '\n'
  except (TypeError, ValueError) as e:
    raise ProsvError(f'steering config is not JSON-serializable ({e}); pass plain numbers, '
                     f'strings, lists and dicts') from None
  tensors = safetensors.numpy.save({'factor': factor, 'direction': direction})
  folder = os.fspath(folder)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise ProsvError(f'cannot create steering vector folder {folder}: {e}; '
                     f'pass a writable path') from None
  _write_files(folder, {VECTORS_FILE: tensors, CONFIG_FILE: text.encode('utf-8')})
  return folder


def load_vectors(folder_or_file) -> SteeringVectors:
  """Reads a folder written by save_vectors (or the path of either of its two files)."""
  path = os.fspath(folder_or_file)
  if not os.path.exists(path):
    raise ProsvError(f'no such steering vector folder: {path}; pass the folder save_vectors '
                     f'wrote (it holds {VECTORS_FILE} and {CONFIG_FILE})')
  if os.path.isdir(path):
    folder = path
  elif os.path.basename(path) in (VECTORS_FILE, CONFIG_FILE):
    folder = os.path.dirname(path) or '.'
  elif path.endswith('.gguf'):
    raise ProsvError(f'{path} is a GGUF file; read control vectors with '
                     f'prosv_jax.artifacts.read_control_vector')
  else:
    raise ProsvError(f'{path} is not a steering vector folder; pass the folder save_vectors '
                     f'wrote (it holds {VECTORS_FILE} and {CONFIG_FILE})')
  for name in (CONFIG_FILE, VECTORS_FILE):
    if not os.path.isfile(os.path.join(folder, name)):
      raise ProsvError(f'{folder} has no {name}; pass the folder save_vectors wrote '
                       f'(it holds {VECTORS_FILE} and {CONFIG_FILE}) or {_RESAVE}')
  config = _read_config(os.path.join(folder, CONFIG_FILE))
  factor, direction = _read_tensors(os.path.join(folder, VECTORS_FILE))
  _check_against_tensors(config, direction, folder)
  return SteeringVectors(factor=factor, direction=direction, config=config)


def export_control_vector(path, steer_params, layer: int, concept: int | str = 0,
                          model_hint: str = '') -> str:
  """Writes one concept's factor * direction as a GGUF control vector; returns the path.

  The file is what llama.cpp (`--control-vector`) and repeng (`ControlVector.import_gguf`)
  read: general.architecture 'controlvector', 'controlvector.model_hint' (str),
  'controlvector.layer_count' (uint32) and one float32 tensor 'direction.{layer}' of shape [n].

  Our layer L (the output of 0-indexed block L) is llama.cpp's and repeng's direction.L;
  llama.cpp cannot steer block 0, so layer 0 is an error. The source reading behind this is in
  docs/CONTROL_VECTORS.md.

  llama.cpp adds the vector at every position, prompt and generated tokens alike, so only
  vectors trained with positions 'all' (FSSV) behave there as they did in training.

  `steer_params` may also be a SteeringVectors; then `concept` may be an id or description
  and `model_hint` defaults to its model.
  """
  if isinstance(steer_params, SteeringVectors):
    vectors = steer_params
    concept = vectors.index_of(concept)
    if not model_hint and isinstance(vectors.model, str):
      model_hint = vectors.model
    if vectors.positions is not None and str(vectors.positions).strip().lower() != 'all':
      warnings.warn(f'these vectors were trained at positions {vectors.positions!r}, but '
                    f'llama.cpp applies control vectors at every token', stacklevel=2)
    steer_params = vectors.params()
  factor, direction = checked_tensors(steer_params)
  if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
    raise ProsvError(f'layer must be a 0-indexed block number >= 1, got {layer!r}')
  if layer == 0:
    raise ProsvError('llama.cpp control vectors cannot steer block 0 (direction.0 is rejected '
                     'by its loader); train at layer >= 1 to export')
  if isinstance(concept, bool) or not isinstance(concept, (int, np.integer)):
    raise ProsvError(f'concept must be a row index, got {concept!r}; pass a SteeringVectors '
                     f'to select by id or description')
  if not 0 <= concept < len(factor):
    raise ProsvError(f'concept index {concept} is out of range for {len(factor)} concepts; '
                     f'pass 0..{len(factor) - 1}')
  vec = np.asarray(steer.vector({'factor': factor, 'direction': direction}, int(concept)),
                   np.float32)
  path = os.fspath(path)
  folder = os.path.dirname(path) or '.'
  if not os.path.isdir(folder):
    raise ProsvError(f'no such folder for the control vector: {folder}; create it first')
  tmp = _temp_name(folder, os.path.basename(path))
  try:
    writer = gguf.GGUFWriter(tmp, CONTROL_VECTOR_ARCH)
    writer.add_string(f'{CONTROL_VECTOR_ARCH}.model_hint', str(model_hint))
    writer.add_uint32(f'{CONTROL_VECTOR_ARCH}.layer_count', 1)
    writer.add_tensor(f'direction.{int(layer)}', vec)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
  except OSError as e:
    raise ProsvError(f'cannot write control vector {path}: {e}; check the folder is writable '
                     f'and has space') from None
  finally:
    _remove_quietly(tmp)
  return path


def read_control_vector(path) -> dict[int, np.ndarray]:
  """{layer: float32 vector [n]} from a GGUF control vector (ours, llama.cpp's or repeng's).

  Keys are the numbers in the 'direction.{i}' tensor names, i.e. 0-indexed block outputs in
  the convention described in export_control_vector.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ProsvError(f'no such control vector file: {path}; pass a .gguf written by '
                     f'export_control_vector, llama.cpp or repeng')
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # gguf raises ValueError, struct.error, IndexError... on bad files
    raise ProsvError(f'{path} is not a readable GGUF file ({type(e).__name__}: {e}); '
                     f'pass a control vector .gguf') from None
  field = reader.get_field('general.architecture')
  arch = field.contents() if field is not None else None
  if arch != CONTROL_VECTOR_ARCH:
    raise ProsvError(f'{path} has general.architecture {arch!r}, not {CONTROL_VECTOR_ARCH!r}; '
                     f'pass a control vector file, not a model')
  vectors = {}
  width = None
  for tensor in reader.tensors:
    prefix, _, index = tensor.name.partition('.')
    if prefix != 'direction' or not index.isdigit():
      raise ProsvError(f'{path} has tensor {tensor.name!r}; control vector tensors must be '
                       f'named direction.<layer>')
    if tensor.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
      raise ProsvError(f'{path}: {tensor.name} is {tensor.tensor_type.name}; control vectors '
                       f'must be F32 (or F16)')
    data = np.array(tensor.data, dtype=np.float32)  # copies out of the memory map
    if data.ndim != 1 or (width is not None and data.shape[0] != width):
      raise ProsvError(f'{path}: {tensor.name} has shape {list(data.shape)}; every direction '
                       f'must be one vector of the model width')
    width = data.shape[0]
    vectors[int(index)] = data
  if not vectors:
    raise ProsvError(f'{path} holds no direction tensors; pass a control vector file')
  return vectors


def _json_default(obj):
  """numpy/jax scalars and arrays, dataclasses and ConfigDicts as plain JSON values."""
  if isinstance(obj, np.generic):
    return obj.item()
  if hasattr(obj, 'tolist') and hasattr(obj, 'shape'):  # numpy and jax arrays
    return np.asarray(obj).tolist()
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return dataclasses.asdict(obj)
  if hasattr(obj, 'to_dict'):  # ml_collections.ConfigDict
    return obj.to_dict()
  raise TypeError(f'{type(obj).__name__} is not JSON-serializable')


def _temp_name(folder: str, name: str) -> str:
  # Hidden, unique per process and call; in the target folder so os.replace stays atomic.
  return os.path.join(folder, f'.{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp')


def _remove_quietly(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


def _write_files(folder: str, contents: dict[str, bytes]) -> None:
  """Writes every file to a temp name, then moves each into place; cleans up on failure."""
  temps = {name: _temp_name(folder, name) for name in contents}
  try:
    for name, data in contents.items():
      with open(temps[name], 'xb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    for name in contents:
      os.replace(temps[name], os.path.join(folder, name))
  except OSError as e:
    raise ProsvError(f'cannot write steering vectors to {folder}: {e}; check the folder is '
                     f'writable and has space') from None
  finally:
    for tmp in temps.values():
      _remove_quietly(tmp)


def _read_config(path: str) -> dict:
  try:
    with open(path, encoding='utf-8') as f:
      config = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ProsvError(f'{path} is not valid JSON ({e}); fix it by hand or {_RESAVE}') from None
  if not isinstance(config, dict):
    raise ProsvError(f'{path} holds a JSON {type(config).__name__}, not an object; {_RESAVE}')
  version = config.get('format_version')
  if version != FORMAT_VERSION:
    raise ProsvError(f'{path} has format_version {version!r}; this prosv_jax reads version '
                     f'{FORMAT_VERSION}; use the prosv_jax that wrote it or {_RESAVE}')
  return config


def _read_tensors(path: str) -> tuple[np.ndarray, np.ndarray]:
  try:
    tensors = safetensors.numpy.load_file(path)
  except (safetensors.SafetensorError, OSError) as e:
    raise ProsvError(f'{path} is truncated or corrupt ({e}); {_RESAVE}') from None
  for name in ('factor', 'direction'):
    if name not in tensors:
      raise ProsvError(f'{path} has no {name!r} tensor (found {sorted(tensors)}); {_RESAVE}')
    if tensors[name].dtype != np.float32:
      raise ProsvError(f'{path}: {name!r} is {tensors[name].dtype}, not float32; {_RESAVE}')
  factor, direction = tensors['factor'], tensors['direction']
  if factor.ndim != 1 or direction.ndim != 2 or factor.shape[0] != direction.shape[0]:
    raise ProsvError(f'{path} holds factor {list(factor.shape)} and direction '
                     f'{list(direction.shape)}; expected [C] and [C, n]; {_RESAVE}')
  return factor, direction


def _check_against_tensors(config: dict, direction: np.ndarray, folder: str) -> None:
  count, width = direction.shape
  concepts = config.get('concepts')
  values = config.get('factor')
  problems = []
  if not isinstance(concepts, list) or len(concepts) != count:
    problems.append(f'{len(concepts) if isinstance(concepts, list) else "no"} concepts')
  if config.get('width') != width:
    problems.append(f"width {config.get('width')!r}")
  if isinstance(values, list) and len(values) != count:
    problems.append(f'{len(values)} factor values')
  if problems:
    raise ProsvError(f'{folder}: {CONFIG_FILE} says {", ".join(problems)} but '
                     f'{VECTORS_FILE} holds {count} concepts of width {width}; the two files '
                     f'come from different saves; {_RESAVE}')
