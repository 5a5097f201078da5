"""Tests for prosv_jax.models.hf_reader against real transformers checkpoints."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import huggingface_hub
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from hf_fixtures import save_tiny_hf_model, save_tiny_tokenizer
from prosv_jax.errors import ProsvError
from prosv_jax.models import hf_reader
from prosv_jax.models.hf_reader import read_hf_folder, resolve_hub

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _header(file):
  with open(file, 'rb') as f:
    n = int.from_bytes(f.read(8), 'little')
    return json.loads(f.read(n))


def _assert_matches_torch(state, model, dtype=np.float32):
  """`state` holds exactly the saved tensors of `model`, bit for bit."""
  ref = model.state_dict()
  expected = set(ref)
  if model.config.get_text_config().tie_word_embeddings:
    expected.discard('lm_head.weight')  # save_pretrained drops tied copies
  assert set(state) == expected
  for name, arr in state.items():
    want = ref[name].to(torch.float32).numpy().astype(dtype)
    assert arr.dtype == np.dtype(dtype), name
    assert arr.shape == want.shape, name
    np.testing.assert_array_equal(arr, want, err_msg=name)


def _assert_error(excinfo, *needles):
  msg = str(excinfo.value)
  assert '\n' not in msg, msg
  for needle in needles:
    assert needle in msg, (needle, msg)


@pytest.mark.parametrize('family', ['llama', 'qwen2', 'gemma2', 'gemma3'])
def test_fp32_matches_state_dict(tmp_path, family):
  path, model = save_tiny_hf_model(tmp_path, family)
  config, state, tokenizer = read_hf_folder(path)
  _assert_matches_torch(state, model)
  assert type(config) is type(model.config)
  assert tokenizer is None


def test_bf16_is_bit_exact(tmp_path):
  path, model = save_tiny_hf_model(tmp_path, 'llama', dtype=torch.bfloat16)
  header = _header(os.path.join(path, 'model.safetensors'))
  assert {e['dtype'] for k, e in header.items() if k != '__metadata__'} == {'BF16'}

  _, state, _ = read_hf_folder(path, dtype=ml_dtypes.bfloat16)
  ref = model.state_dict()
  for name, arr in state.items():
    assert arr.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(
        arr.view(np.int16), ref[name].view(torch.int16).numpy(), err_msg=name)
  _, state32, _ = read_hf_folder(path)  # default: upcast to float32
  _assert_matches_torch(state32, model)


def test_fp32_cast_to_bf16_and_fp16(tmp_path):
  path, model = save_tiny_hf_model(tmp_path, 'qwen2')
  for dtype in (ml_dtypes.bfloat16, np.float16):
    _, state, _ = read_hf_folder(path, dtype=dtype)
    _assert_matches_torch(state, model, dtype=dtype)


def test_sharded(tmp_path):
  path, model = save_tiny_hf_model(tmp_path, 'gemma2', max_shard_size='20KB')
  assert not os.path.exists(os.path.join(path, 'model.safetensors'))
  with open(os.path.join(path, 'model.safetensors.index.json')) as f:
    assert len(set(json.load(f)['weight_map'].values())) > 1
  _, state, _ = read_hf_folder(path)
  _assert_matches_torch(state, model)


def test_tied_embeddings_have_no_lm_head(tmp_path):
  path, model = save_tiny_hf_model(tmp_path, 'llama', tie_word_embeddings=True)
  config, state, _ = read_hf_folder(path)
  assert config.tie_word_embeddings
  assert 'lm_head.weight' not in state
  _assert_matches_torch(state, model)

  path, model = save_tiny_hf_model(
      tmp_path, 'llama', name='untied', tie_word_embeddings=False)
  config, state, _ = read_hf_folder(path)
  assert not config.tie_word_embeddings
  assert not np.array_equal(
      state['lm_head.weight'], state['model.embed_tokens.weight'])
  _assert_matches_torch(state, model)


def test_multimodal_gemma3_reads_as_text_model(tmp_path):
  path, model = save_tiny_hf_model(tmp_path, 'gemma3_mm')
  header = _header(os.path.join(path, 'model.safetensors'))
  assert any(k.startswith('vision_tower.') for k in header)  # really multimodal
  config, state, _ = read_hf_folder(path)
  assert isinstance(config, transformers.Gemma3TextConfig)
  assert config.hidden_size == 64 and config.num_hidden_layers == 2

  text = model.model.language_model.state_dict()
  want = {f'model.{k}': v for k, v in text.items()}
  assert set(state) == set(want)  # tied: no lm_head; no vision/projector
  for name, arr in state.items():
    np.testing.assert_array_equal(arr, want[name].numpy(), err_msg=name)


def test_multimodal_transformers5_layout(tmp_path):
  # A checkpoint saved in transformers 5's own layout (model.language_model.*).
  path, model = save_tiny_hf_model(tmp_path, 'gemma3_mm')
  file = os.path.join(path, 'model.safetensors')
  native = {k: v.numpy() for k, v in model.state_dict().items()
            if k != 'lm_head.weight'}
  safetensors.numpy.save_file(native, file)
  _, state, _ = read_hf_folder(path)
  assert set(state) == {
      'model.' + k for k in model.model.language_model.state_dict()}
  np.testing.assert_array_equal(
      state['model.layers.1.mlp.up_proj.weight'],
      native['model.language_model.layers.1.mlp.up_proj.weight'])


def test_config_fields_come_through(tmp_path):
  path, _ = save_tiny_hf_model(
      tmp_path, 'gemma2', sliding_window=5, attn_logit_softcapping=20.0,
      final_logit_softcapping=15.0, num_hidden_layers=3, rms_norm_eps=1e-5)
  config, state, _ = read_hf_folder(path)
  assert config.model_type == 'gemma2'
  assert (config.sliding_window, config.attn_logit_softcapping,
          config.final_logit_softcapping) == (5, 20.0, 15.0)
  assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
          config.num_key_value_heads, config.head_dim, config.vocab_size,
          config.query_pre_attn_scalar, config.rms_norm_eps) == (
              64, 3, 4, 2, 16, 128, 24, 1e-5)
  assert 'model.layers.2.mlp.up_proj.weight' in state

  path, model = save_tiny_hf_model(tmp_path, 'llama', attention_bias=True)
  config, state, _ = read_hf_folder(path)
  assert config.attention_bias
  assert 'model.layers.0.self_attn.q_proj.bias' in state
  _assert_matches_torch(state, model)


def test_mixed_dtypes_keep_ints(tmp_path):
  path, _ = save_tiny_hf_model(tmp_path, 'llama')
  tensors = {
      'a': np.arange(6, dtype=np.float16).reshape(2, 3) / 4,
      'b': np.array([1, -2, 3 << 40], dtype=np.int64),
      'c': np.zeros((0, 4), np.float32),
      'd': np.array(2.5, np.float32),
  }
  safetensors.numpy.save_file(tensors, os.path.join(path, 'model.safetensors'))
  _, state, _ = read_hf_folder(path, dtype=ml_dtypes.bfloat16)
  assert state['a'].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(state['a'].astype(np.float32),
                                tensors['a'].astype(np.float32))
  assert state['b'].dtype == np.int64
  np.testing.assert_array_equal(state['b'], tensors['b'])
  assert state['c'].shape == (0, 4)
  assert state['d'].shape == () and float(state['d']) == 2.5


def test_tokenizer(tmp_path):
  path, _ = save_tiny_hf_model(tmp_path, 'llama')
  save_tiny_tokenizer(path)
  _, _, tok = read_hf_folder(path)
  assert isinstance(tok, transformers.PreTrainedTokenizerBase)
  ids = tok('the cat sat on the mat', add_special_tokens=False).input_ids
  assert len(ids) == 6 and max(ids) < 128 and tok.unk_token_id not in ids
  assert tok.decode(ids) == 'the cat sat on the mat'
  assert (tok.bos_token, tok.eos_token) == ('<s>', '</s>')
  text = tok.apply_chat_template(
      [{'role': 'user', 'content': 'hello world'}], add_generation_prompt=True,
      tokenize=False)
  assert text == '<s><|user|> hello world <|end|> <|assistant|>'
  end_id = tok.convert_tokens_to_ids('<|end|>')
  assert tok(text, add_special_tokens=False).input_ids.count(end_id) == 1


def test_broken_tokenizer_is_an_error(tmp_path):
  path, _ = save_tiny_hf_model(tmp_path, 'llama')
  with open(os.path.join(path, 'tokenizer.json'), 'w') as f:
    f.write('{not json')
  with pytest.raises(ProsvError) as e:
    read_hf_folder(path)
  _assert_error(e, 'tokenizer', path)


# --- Errors -------------------------------------------------------------------


@pytest.fixture(name='folder')
def _folder(tmp_path):
  path, _ = save_tiny_hf_model(tmp_path, 'llama')
  return path


def test_missing_path(tmp_path):
  with pytest.raises(ProsvError) as e:
    read_hf_folder(str(tmp_path / 'nope'))
  _assert_error(e, 'no such model folder', 'nope')


def test_path_is_a_file(folder):
  with pytest.raises(ProsvError) as e:
    read_hf_folder(os.path.join(folder, 'config.json'))
  _assert_error(e, 'not a folder')


def test_no_config(folder):
  os.remove(os.path.join(folder, 'config.json'))
  with pytest.raises(ProsvError) as e:
    read_hf_folder(folder)
  _assert_error(e, 'no config.json', folder)


@pytest.mark.parametrize('content', ['{"model_type": "llama",', '{"model_type": "nonesuch"}'])
def test_unreadable_config(folder, content):
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    f.write(content)
  with pytest.raises(ProsvError) as e:
    read_hf_folder(folder)
  _assert_error(e, 'config.json', folder)


@pytest.mark.parametrize('other', [None, 'pytorch_model.bin', 'consolidated.safetensors'])
def test_no_safetensors(folder, other):
  shutil.move(os.path.join(folder, 'model.safetensors'),
              os.path.join(folder, other or '../elsewhere'))
  with pytest.raises(ProsvError) as e:
    read_hf_folder(folder)
  _assert_error(e, 'model.safetensors', folder)
  if other == 'pytorch_model.bin':
    _assert_error(e, '.bin', 'not supported', 'convert', 'safetensors')


def test_missing_shard(tmp_path):
  path, _ = save_tiny_hf_model(tmp_path, 'llama', max_shard_size='20KB')
  with open(os.path.join(path, 'model.safetensors.index.json')) as f:
    shard = sorted(set(json.load(f)['weight_map'].values()))[1]
  os.remove(os.path.join(path, shard))
  with pytest.raises(ProsvError) as e:
    read_hf_folder(path)
  _assert_error(e, shard, 'missing', 'model.safetensors.index.json')


def test_corrupt_index(tmp_path):
  path, _ = save_tiny_hf_model(tmp_path, 'llama', max_shard_size='20KB')
  with open(os.path.join(path, 'model.safetensors.index.json'), 'w') as f:
    f.write('{"metadata": {}}')  # no weight_map
  with pytest.raises(ProsvError) as e:
    read_hf_folder(path)
  _assert_error(e, 'model.safetensors.index.json')


def _rewrite(file, header_len=None, header=None, data=None, cut=0):
  """Rewrites a safetensors file with pieces replaced, or its tail cut off."""
  with open(file, 'rb') as f:
    raw = f.read()
  n = int.from_bytes(raw[:8], 'little')
  header_bytes = raw[8:8 + n] if header is None else header
  data = raw[8 + n:] if data is None else data
  length = len(header_bytes) if header_len is None else header_len
  out = length.to_bytes(8, 'little') + header_bytes + data
  with open(file, 'wb') as f:
    f.write(out[:len(out) - cut])


def _shift_offsets(file, name, delta):
  header = _header(file)
  header[name]['data_offsets'] = [o + delta for o in header[name]['data_offsets']]
  _rewrite(file, header=json.dumps(header).encode())


@pytest.mark.parametrize('damage, needle', [
    (lambda f: _rewrite(f, cut=os.path.getsize(f) - 5), 'truncated'),
    (lambda f: _rewrite(f, header_len=1 << 40), 'header'),
    (lambda f: _rewrite(f, header=b'{"a": [1, 2'), 'bad JSON'),
    (lambda f: _rewrite(f, header=b'\xff\xfe garbage'), 'bad JSON'),
    (lambda f: _rewrite(f, header=b'[1, 2]'), 'bad JSON'),
    (lambda f: _rewrite(f, cut=100), 'beyond'),  # data cut short
    (lambda f: _shift_offsets(f, 'lm_head.weight', 1 << 30), 'beyond'),
    (lambda f: _rewrite(f, header=json.dumps(
        {'x': {'dtype': 'F32', 'shape': [3], 'data_offsets': [0, 8]}}).encode()),
     'bytes for shape'),
    (lambda f: _rewrite(f, header=json.dumps(
        {'x': {'dtype': 'F32', 'shape': [2]}}).encode()), 'bad header entry'),
    (lambda f: _rewrite(f, header=json.dumps(
        {'x': {'dtype': 'F8_E4M3', 'shape': [2], 'data_offsets': [0, 2]}}).encode()),
     'quantized'),
])
def test_corrupt_safetensors(folder, damage, needle):
  file = os.path.join(folder, 'model.safetensors')
  damage(file)
  with pytest.raises(ProsvError) as e:
    read_hf_folder(folder)
  _assert_error(e, needle, file)


def test_non_float_dtype_is_rejected(folder):
  with pytest.raises(ProsvError) as e:
    read_hf_folder(folder, dtype=np.int32)
  _assert_error(e, 'float')


# --- Hub ----------------------------------------------------------------------


def _fake_snapshot_download(calls, result=None):
  def fake(repo_id, **kwargs):
    calls.append((repo_id, kwargs))
    if result is not None and kwargs.get('local_files_only'):
      return result
    raise huggingface_hub.errors.LocalEntryNotFoundError(
        'Cannot find the requested files.\nCheck your connection.')
  return fake


def test_resolve_hub_failure_is_one_line(monkeypatch):
  calls = []
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
  monkeypatch.setattr(huggingface_hub, 'snapshot_download',
                      _fake_snapshot_download(calls))
  with pytest.raises(ProsvError) as e:
    resolve_hub('hf:someone/tiny-model@v1.0')
  _assert_error(e, 'could not fetch someone/tiny-model from the Hugging Face hub',
                'Cannot find the requested files. Check your connection.',
                'pass a local HF folder or a .gguf file instead')
  # Cache first, then the network; both with the revision and only the files we read.
  assert [c[1].get('local_files_only', False) for c in calls] == [True, False]
  for repo_id, kwargs in calls:
    assert repo_id == 'someone/tiny-model' and kwargs['revision'] == 'v1.0'
    assert {'*.json', '*.safetensors'} <= set(kwargs['allow_patterns'])


def test_resolve_hub_cache_hit_skips_network(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(huggingface_hub, 'snapshot_download',
                      _fake_snapshot_download(calls, result=str(tmp_path)))
  assert resolve_hub('hf:someone/tiny-model') == str(tmp_path)
  assert len(calls) == 1 and calls[0][1]['revision'] is None


@pytest.mark.parametrize('spec', ['hf:', 'hf:@main', 'someone/model'])
def test_resolve_hub_bad_spec(spec):
  with pytest.raises(ProsvError) as e:
    resolve_hub(spec)
  _assert_error(e, 'hf:<repo_id>')


_SUBPROCESS = textwrap.dedent("""
    from prosv_jax.errors import ProsvError
    from prosv_jax.models.hf_reader import resolve_hub
    try:
      resolve_hub('hf:prosv-test/does-not-exist')
    except ProsvError as e:
      print('PROSV:' + str(e))
""")


@pytest.mark.parametrize('env', [
    {'HF_HUB_OFFLINE': '1'},
    # A real network attempt against a closed local port: refused at once.
    {'HF_HUB_OFFLINE': '0', 'HF_ENDPOINT': 'http://127.0.0.1:9'},
])
def test_resolve_hub_real_failure_is_fast(tmp_path, env):
  full_env = {**os.environ, 'HF_HOME': str(tmp_path / 'hf'), **env}
  full_env.pop('TRANSFORMERS_OFFLINE', None)
  start = time.monotonic()
  out = subprocess.run(
      [sys.executable, '-c', _SUBPROCESS], cwd=_REPO_ROOT, env=full_env,
      capture_output=True, text=True, timeout=60, check=True)
  assert time.monotonic() - start < 45
  lines = [l for l in out.stdout.splitlines() if l.startswith('PROSV:')]
  assert len(lines) == 1, out.stdout + out.stderr
  assert 'could not fetch prosv-test/does-not-exist' in lines[0]
  assert lines[0].endswith('pass a local HF folder or a .gguf file instead')
  if env['HF_HUB_OFFLINE'] == '1':
    assert 'HF_HUB_OFFLINE' in lines[0]


def test_module_has_no_torch():
  with open(hf_reader.__file__) as f:
    assert 'import torch' not in f.read()
