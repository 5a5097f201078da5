"""Tests for prosv_jax.artifacts: steering vector folders and GGUF control vectors.

The GGUF checks read files back with gguf.GGUFReader (the reference reader llama.cpp's
Python tools use), not only with our own read_control_vector.
"""

import json
import os

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from prosv_jax import artifacts
from prosv_jax.artifacts import (CONFIG_FILE, VECTORS_FILE, SteeringVectors, export_control_vector,
                                 load_vectors, read_control_vector, save_vectors)
from prosv_jax.errors import ProsvError

WIDTH = 16


def _params(count=3, width=WIDTH, seed=0):
  rng = np.random.default_rng(seed)
  return {'factor': rng.normal(size=count).astype(np.float32) * 5,
          'direction': rng.normal(size=(count, width)).astype(np.float32) / 7}


def _config(count=3):
  return {
      'model': 'smollm2-135m-instruct',
      'layer': 7,
      'positions': 'p2+s2',
      'concepts': [{'index': i, 'concept_id': 100 + i, 'description': f'concept number {i}'}
                   for i in range(count)],
      'train_config': {'lr': 0.01, 'steps': 200, 'beta': 0.5, 'seed': 3, 'optimizer': 'adam'},
      'metrics': {'loss': 1.25, 'per_concept': [0.5, 0.25, 0.125][:count]},
  }


def _one_line(exc_info, *words):
  message = str(exc_info.value)
  assert '\n' not in message
  for word in words:
    assert word in message, message


def _listing(folder):
  return sorted(os.listdir(folder))


def test_round_trip_is_exact(tmp_path):
  params, config = _params(), _config()
  folder = save_vectors(tmp_path / 'vec', params, config)
  assert folder == str(tmp_path / 'vec')
  assert _listing(folder) == sorted([CONFIG_FILE, VECTORS_FILE])

  vectors = load_vectors(folder)
  assert vectors.factor.dtype == np.float32 and vectors.direction.dtype == np.float32
  assert vectors.factor.tobytes() == params['factor'].tobytes()  # bit-exact
  assert vectors.direction.tobytes() == params['direction'].tobytes()
  expected = dict(config, width=WIDTH, factor=[float(x) for x in params['factor']],
                  format_version=artifacts.FORMAT_VERSION)
  assert vectors.config == expected
  assert np.array_equal(np.asarray(vectors.config['factor'], np.float32), params['factor'])
  assert (vectors.layer, vectors.positions, vectors.width, vectors.model) == (
      7, 'p2+s2', WIDTH, 'smollm2-135m-instruct')
  assert vectors.concepts == config['concepts']
  jax_params = vectors.params()
  assert isinstance(jax_params['factor'], jnp.ndarray)
  assert jax_params['direction'].dtype == jnp.float32
  assert np.array_equal(np.asarray(jax_params['direction']), params['direction'])

  # On disk: the documented tensor names, shapes and dtypes.
  raw = safetensors.numpy.load_file(os.path.join(folder, VECTORS_FILE))
  assert set(raw) == {'factor', 'direction'}
  assert raw['factor'].shape == (3,) and raw['direction'].shape == (3, WIDTH)
  assert raw['direction'].dtype == np.float32


def test_load_accepts_either_file_path(tmp_path):
  folder = save_vectors(tmp_path, _params(), _config())
  for name in (CONFIG_FILE, VECTORS_FILE):
    assert np.array_equal(load_vectors(os.path.join(folder, name)).factor, _params()['factor'])


def test_save_accepts_jax_arrays_and_fills_defaults(tmp_path):
  params = {k: jnp.asarray(v) for k, v in _params(count=2).items()}
  save_vectors(tmp_path, params, {'layer': np.int64(3), 'positions': 'all',
                                  'metrics': {'acc': np.float32(0.5)}})
  vectors = load_vectors(tmp_path)
  assert vectors.layer == 3 and type(vectors.layer) is int
  assert vectors.config['metrics'] == {'acc': 0.5}
  assert [c['index'] for c in vectors.concepts] == [0, 1]
  assert np.array_equal(vectors.direction, np.asarray(params['direction']))


def test_multiple_concepts_and_index_of(tmp_path):
  params = _params(count=4)
  save_vectors(tmp_path, params, _config(count=4))
  vectors = load_vectors(tmp_path)
  assert len(vectors.factor) == 4 and vectors.direction.shape == (4, WIDTH)
  for i in range(4):
    assert vectors.index_of(i) == i
    assert vectors.index_of(np.int32(i)) == i
    assert vectors.index_of(str(100 + i)) == i  # AxBench concept_id
    assert vectors.index_of(f'concept number {i}') == i  # description
    assert vectors.index_of(f'  Concept Number {i} ') == i  # case and spaces ignored
    # Each row keeps its own values.
    assert np.array_equal(vectors.direction[i], params['direction'][i])


@pytest.mark.parametrize('concept', [4, -1, 'no such concept', '999', True, 1.0])
def test_index_of_unknown_lists_available(tmp_path, concept):
  save_vectors(tmp_path, _params(count=4), _config(count=4))
  with pytest.raises(ProsvError) as e:
    load_vectors(tmp_path).index_of(concept)
  _one_line(e, "(id 100) 'concept number 0'", "3 (id 103) 'concept number 3'")


def test_index_of_ambiguous_description_is_an_error(tmp_path):
  config = _config(count=2)
  config['concepts'][1]['description'] = 'concept number 0'
  save_vectors(tmp_path, _params(count=2), config)
  with pytest.raises(ProsvError) as e:
    load_vectors(tmp_path).index_of('concept number 0')
  _one_line(e, 'matches rows [0, 1]')


def test_save_leaves_no_temp_files_and_replaces(tmp_path):
  save_vectors(tmp_path, _params(seed=1), _config())
  save_vectors(tmp_path, _params(seed=2), _config())  # overwrite in place
  assert _listing(tmp_path) == sorted([CONFIG_FILE, VECTORS_FILE])
  assert np.array_equal(load_vectors(tmp_path).factor, _params(seed=2)['factor'])


def test_failed_save_keeps_old_files_and_cleans_up(tmp_path, monkeypatch):
  save_vectors(tmp_path, _params(seed=1), _config())
  before = {n: (tmp_path / n).read_bytes() for n in (CONFIG_FILE, VECTORS_FILE)}

  def failing_replace(src, dst):
    assert os.path.basename(src).startswith('.')  # written under a temp name first
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(os, 'replace', failing_replace)
  with pytest.raises(ProsvError) as e:
    save_vectors(tmp_path, _params(seed=2), _config())
  _one_line(e, 'No space left', 'writable')
  monkeypatch.undo()
  assert _listing(tmp_path) == sorted([CONFIG_FILE, VECTORS_FILE])  # temp files removed
  assert {n: (tmp_path / n).read_bytes() for n in before} == before  # old set untouched


def test_unserializable_config_is_rejected_before_writing(tmp_path):
  with pytest.raises(ProsvError) as e:
    save_vectors(tmp_path / 'vec', _params(), dict(_config(), train_config={'fn': object()}))
  _one_line(e, 'JSON-serializable')
  assert not (tmp_path / 'vec').exists()


# Error cases of load_vectors: each is one line that names the fix.


def test_load_missing_folder(tmp_path):
  with pytest.raises(ProsvError) as e:
    load_vectors(tmp_path / 'nope')
  _one_line(e, 'no such steering vector folder', 'save_vectors')


@pytest.mark.parametrize('name', [CONFIG_FILE, VECTORS_FILE])
def test_load_missing_file(tmp_path, name):
  save_vectors(tmp_path, _params(), _config())
  os.remove(tmp_path / name)
  with pytest.raises(ProsvError) as e:
    load_vectors(tmp_path)
  _one_line(e, f'has no {name}', 'save_vectors')


def test_load_unrelated_file(tmp_path):
  (tmp_path / 'x.gguf').write_bytes(b'GGUF')
  (tmp_path / 'x.txt').write_text('hi')
  with pytest.raises(ProsvError) as e:
    load_vectors(tmp_path / 'x.gguf')
  _one_line(e, 'read_control_vector')
  with pytest.raises(ProsvError) as e:
    load_vectors(tmp_path / 'x.txt')
  _one_line(e, 'not a steering vector folder')


@pytest.mark.parametrize('damage', ['truncate', 'garbage', 'empty'])
def test_load_corrupt_safetensors(tmp_path, damage):
  save_vectors(tmp_path, _params(), _config())
  path = tmp_path / VECTORS_FILE
  data = path.read_bytes()
  path.write_bytes({'truncate': data[:len(data) - 20], 'garbage': b'\x07' * 64,
                    'empty': b''}[damage])
  with pytest.raises(ProsvError) as e:
    load_vectors(tmp_path)
  _one_line(e, 'truncated or corrupt', 'save_vectors')


def test_load_safetensors_without_expected_tensor(tmp_path):
  save_vectors(tmp_path, _params(), _config())
  safetensors.numpy.save_file({'factor': _params()['factor']}, str(tmp_path / VECTORS_FILE))
  with pytest.raises(ProsvError) as e:
    load_vectors(tmp_path)
  _one_line(e, "no 'direction' tensor")


def test_load_wrong_dtype(tmp_path):
  save_vectors(tmp_path, _params(), _config())
  params = {k: v.astype(np.float16) for k, v in _params().items()}
  safetensors.numpy.save_file(params, str(tmp_path / VECTORS_FILE))
  with pytest.raises(ProsvError) as e:
    load_vectors(tmp_path)
  _one_line(e, 'float16, not float32')


@pytest.mark.parametrize('text', ['{"format_version": 1,', 'not json', '[1, 2]', '\xff'])
def test_load_bad_json(tmp_path, text):
  save_vectors(tmp_path, _params(), _config())
  (tmp_path / CONFIG_FILE).write_bytes(text.encode('latin-1'))
  with pytest.raises(ProsvError) as e:
    load_vectors(tmp_path)
  _one_line(e, CONFIG_FILE, 'save_vectors')


@pytest.mark.parametrize('edit, word', [
    (lambda c: c.update(width=WIDTH + 1), f'width {WIDTH + 1}'),
    (lambda c: c['concepts'].pop(), '2 concepts'),
    (lambda c: c['factor'].append(1.0), '4 factor values'),
    (lambda c: c.pop('concepts'), 'no concepts'),
])
def test_load_shape_mismatch_between_json_and_tensors(tmp_path, edit, word):
  save_vectors(tmp_path, _params(), _config())
  config = json.loads((tmp_path / CONFIG_FILE).read_text())
  edit(config)
  (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
  with pytest.raises(ProsvError) as e:
    load_vectors(tmp_path)
  _one_line(e, word, '3 concepts of width 16', 'different saves')


@pytest.mark.parametrize('version', [2, 0, '1', None])
def test_load_unknown_format_version(tmp_path, version):
  save_vectors(tmp_path, _params(), _config())
  config = json.loads((tmp_path / CONFIG_FILE).read_text())
  if version is None:
    del config['format_version']
  else:
    config['format_version'] = version
  (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
  with pytest.raises(ProsvError) as e:
    load_vectors(tmp_path)
  _one_line(e, f'format_version {version!r}', 'reads version 1')


# save_vectors rejects inconsistent inputs before writing anything.


@pytest.mark.parametrize('params, config, word', [
    ({'factor': np.ones(3, np.float32), 'direction': np.ones((2, WIDTH), np.float32)}, {},
     'share a concept count'),
    ({'factor': np.ones((3, 1), np.float32), 'direction': np.ones((3, WIDTH), np.float32)}, {},
     'factor [C] and direction [C, n]'),
    ({'factor': np.ones(3, np.float32), 'direction': np.ones(WIDTH, np.float32)}, {},
     'factor [C] and direction [C, n]'),
    ({'factor': np.ones(0, np.float32), 'direction': np.ones((0, WIDTH), np.float32)}, {},
     'C >= 1'),
    ({'factor': np.ones(3, np.float32)}, {}, "'direction'"),
    (_params(), {'width': WIDTH * 2}, 'does not match direction width'),
    (_params(), {'concepts': [{'description': 'a'}]}, 'has 1 entries'),
    (_params(), {'concepts': [{'index': 1}, {'index': 0}, {'index': 2}]}, 'row order'),
    (_params(), {'positions': 'p2+x'}, 'valid forms'),
    (_params(), {'layer': -1}, '0-indexed block'),
    (_params(), {'layer': 2.5}, '0-indexed block'),
    ({'factor': np.array([1, np.nan, 1], np.float32), 'direction': np.ones((3, WIDTH))}, {},
     'NaN or inf'),
])
def test_save_rejects_mismatched_shapes(tmp_path, params, config, word):
  with pytest.raises(ProsvError) as e:
    save_vectors(tmp_path / 'vec', params, config)
  _one_line(e, word)
  assert not (tmp_path / 'vec').exists()


# GGUF control vectors.


def _field(reader, key):
  field = reader.get_field(key)
  assert field is not None, key
  return field


@pytest.mark.parametrize('layer, concept', [(1, 0), (7, 2), (29, 1)])
def test_control_vector_round_trip(tmp_path, layer, concept):
  params = _params()
  expected = params['factor'][concept] * params['direction'][concept]  # float32
  path = export_control_vector(tmp_path / 'cv.gguf', params, layer, concept, model_hint='llama')
  assert path == str(tmp_path / 'cv.gguf')
  assert _listing(tmp_path) == ['cv.gguf']

  # Through the reference reader.
  reader = gguf.GGUFReader(path)
  assert _field(reader, 'general.architecture').contents() == 'controlvector'
  assert _field(reader, 'controlvector.model_hint').contents() == 'llama'
  count = _field(reader, 'controlvector.layer_count')
  assert count.types == [gguf.GGUFValueType.UINT32] and count.contents() == 1
  assert [t.name for t in reader.tensors] == [f'direction.{layer}']
  tensor = reader.tensors[0]
  assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
  assert tensor.data.dtype == np.float32 and tensor.data.shape == (WIDTH,)
  assert np.array_equal(tensor.data, expected)

  # Through ours.
  vectors = read_control_vector(path)
  assert list(vectors) == [layer]
  assert vectors[layer].dtype == np.float32 and np.array_equal(vectors[layer], expected)


def test_control_vector_from_loaded_vectors(tmp_path):
  params = _params()
  save_vectors(tmp_path / 'vec', params, dict(_config(), positions='all'))
  vectors = load_vectors(tmp_path / 'vec')
  path = export_control_vector(tmp_path / 'cv.gguf', vectors, vectors.layer, 'concept number 2')
  reader = gguf.GGUFReader(path)
  assert _field(reader, 'controlvector.model_hint').contents() == 'smollm2-135m-instruct'
  got = read_control_vector(path)
  assert np.array_equal(got[7], params['factor'][2] * params['direction'][2])


def test_control_vector_warns_for_prompt_only_positions(tmp_path):
  save_vectors(tmp_path / 'vec', _params(), _config())  # p2+s2
  with pytest.warns(UserWarning, match='every token'):
    export_control_vector(tmp_path / 'cv.gguf', load_vectors(tmp_path / 'vec'), 7)


@pytest.mark.parametrize('layer, concept, word', [
    (0, 0, 'cannot steer block 0'),
    (-1, 0, '0-indexed block'),
    (3, 3, 'out of range'),
    (3, -1, 'out of range'),
    (3, 'a', 'row index'),
])
def test_control_vector_rejects_bad_layer_or_concept(tmp_path, layer, concept, word):
  with pytest.raises(ProsvError) as e:
    export_control_vector(tmp_path / 'cv.gguf', _params(), layer, concept)
  _one_line(e, word)
  assert _listing(tmp_path) == []


def test_read_repeng_style_multi_layer_file(tmp_path):
  # What repeng's ControlVector.export_gguf writes: several layers in one file.
  path = str(tmp_path / 'repeng.gguf')
  directions = {i: np.full(WIDTH, i / 10, np.float32) for i in (1, 2, 5)}
  writer = gguf.GGUFWriter(path, 'controlvector')
  writer.add_string('controlvector.model_hint', 'mistral')
  writer.add_uint32('controlvector.layer_count', len(directions))
  for i, vec in directions.items():
    writer.add_tensor(f'direction.{i}', vec)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  got = read_control_vector(path)
  assert sorted(got) == [1, 2, 5]
  for i, vec in directions.items():
    assert np.array_equal(got[i], vec)


def test_read_control_vector_errors(tmp_path):
  with pytest.raises(ProsvError) as e:
    read_control_vector(tmp_path / 'missing.gguf')
  _one_line(e, 'no such control vector file')

  (tmp_path / 'junk.gguf').write_bytes(b'not a gguf file at all' * 4)
  with pytest.raises(ProsvError) as e:
    read_control_vector(tmp_path / 'junk.gguf')
  _one_line(e, 'not a readable GGUF file')

  model = str(tmp_path / 'model.gguf')
  writer = gguf.GGUFWriter(model, 'llama')
  writer.add_tensor('token_embd.weight', np.zeros((4, WIDTH), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ProsvError) as e:
    read_control_vector(model)
  _one_line(e, "'llama'", 'not a model')

  export_control_vector(tmp_path / 'cv.gguf', _params(), 3)
  data = (tmp_path / 'cv.gguf').read_bytes()
  (tmp_path / 'cut.gguf').write_bytes(data[:len(data) - WIDTH * 2])
  with pytest.raises(ProsvError) as e:
    read_control_vector(tmp_path / 'cut.gguf')
  _one_line(e, 'not a readable GGUF file')


def test_steering_vectors_is_a_plain_dataclass():
  vectors = SteeringVectors(factor=np.ones(1, np.float32), direction=np.ones((1, 4), np.float32),
                            config={'concepts': [{'index': 0}], 'layer': 2, 'positions': 'all'})
  assert vectors.width == 4 and vectors.layer == 2 and vectors.model is None
  assert vectors.index_of(0) == 0
