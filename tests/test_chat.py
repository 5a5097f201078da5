"""Chat templates: the named template for base models and the error without one."""

import pytest

from prosv_jax import chat
from prosv_jax.errors import ProsvError

pytest.importorskip('transformers')
from hf_fixtures import save_tiny_tokenizer  # noqa: E402


def test_base_model_gets_the_gemma_turn_format(tmp_path):
  tok = save_tiny_tokenizer(tmp_path, chat_template=None)
  with pytest.raises(ProsvError, match='chat_template to one of gemma'):
    chat.chat_prompt_text(tok, 'hello')  # '' = the tokenizer's own (nothing here)
  assert chat.chat_prompt_text(tok, ' hello ', 'gemma') == (
      '<s><start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n')
  # any Jinja text works too
  assert chat.chat_prompt_text(tok, 'hi', '{{ messages[0]["content"] }}!') == 'hi!'
  with pytest.raises(ProsvError, match='does not render .*fix --config.chat_template'):
    chat.chat_prompt_text(tok, 'hi', '{% for m in messages %}{{ m.content ')  # broken Jinja
  assert not tok.chat_template  # the template travelled with each call; the tokenizer is as it was


def test_template_does_not_leak_between_callers(tmp_path):
  """Two callers share one tokenizer: each gets its own template, the tokenizer's stays."""
  tok = save_tiny_tokenizer(tmp_path)
  own = chat.chat_prompt_text(tok, 'hi')
  assert chat.chat_prompt_text(tok, 'hi', 'gemma') != own
  assert chat.chat_prompt_text(tok, 'hi') == own
  assert chat.chat_prompt_ids(tok, 'hi', 'gemma') == tok.encode(
      chat.chat_prompt_text(tok, 'hi', 'gemma'), add_special_tokens=False)


def test_vectors_carry_their_training_template():
  import numpy as np
  from prosv_jax.artifacts import SteeringVectors
  v = SteeringVectors(np.ones(1, np.float32), np.ones((1, 4), np.float32),
                      {'training': {'chat_template': 'gemma'}})
  assert v.chat_template == 'gemma'
  assert SteeringVectors(v.factor, v.direction, {}).chat_template == ''  # older vector files
