"""Chat templates: the named template for base models and the error without one."""

import pytest

from prosv_jax import chat
from prosv_jax.errors import ProsvError

pytest.importorskip('transformers')
from hf_fixtures import save_tiny_tokenizer  # noqa: E402


def test_base_model_gets_the_gemma_turn_format(tmp_path):
  tok = save_tiny_tokenizer(tmp_path, chat_template=None)
  with pytest.raises(ProsvError, match='chat_template to one of gemma'):
    chat.chat_prompt_text(tok, 'hello')
  chat.set_chat_template(tok, '')  # '' keeps what the tokenizer has (nothing here)
  assert not tok.chat_template
  chat.set_chat_template(tok, 'gemma')
  assert chat.chat_prompt_text(tok, ' hello ') == (
      '<s><start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n')
  chat.set_chat_template(tok, '{{ messages[0]["content"] }}!')  # any Jinja text works too
  assert chat.chat_prompt_text(tok, 'hi') == 'hi!'
  chat.set_chat_template(tok, '{% for m in messages %}{{ m.content ')  # broken Jinja
  with pytest.raises(ProsvError, match='does not render .*fix --config.chat_template'):
    chat.chat_prompt_text(tok, 'hi')


def test_vectors_carry_their_training_template():
  import numpy as np
  from prosv_jax.artifacts import SteeringVectors
  v = SteeringVectors(np.ones(1, np.float32), np.ones((1, 4), np.float32),
                      {'training': {'chat_template': 'gemma'}})
  assert v.chat_template == 'gemma'
  assert SteeringVectors(v.factor, v.direction, {}).chat_template == ''  # older vector files
