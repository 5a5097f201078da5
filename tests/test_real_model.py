"""The embedded SmolLM2-135M-Instruct GGUF, end to end through load_model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prosv_jax.models import load, transformer
from prosv_jax.sampling import SamplingConfig, generate_text

pytestmark = pytest.mark.real_model

PARAGRAPH = (
    'The Industrial Revolution began in Great Britain in the late eighteenth century and spread '
    'to Europe and North America. New machines, powered first by water and then by steam, changed '
    'how goods were made. Factories replaced small workshops, and many people moved from the '
    'countryside to growing cities in search of work.')


@pytest.fixture(scope='module')
def model(smollm):
  return smollm


def perplexity(model, text):
  ids = model.tokenizer.encode(text, add_special_tokens=False)
  t = len(ids)
  pos, valid = transformer.positions_from_lengths(np.array([t]), t, False)
  logits = transformer.forward(model.params, model.cfg, jnp.asarray([ids]), pos, valid).logits[0]
  logp = jax.nn.log_softmax(logits[:-1])
  nll = -jnp.take_along_axis(logp, jnp.asarray(ids[1:])[:, None], axis=1).mean()
  return float(jnp.exp(nll))


def test_config_from_gguf(model):
  cfg = model.cfg
  assert (cfg.family, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (
      'llama', 30, 576, 9, 3)
  assert cfg.tie_embeddings and cfg.rope.theta == 100000.0
  assert model.tokenizer.decode([cfg.eos_ids[0]]) == '<|im_end|>'


def test_perplexity_is_sane(model):
  # Measured 11.4 for the Q4_1 weights; re-permuting q/k (a broken loader) gives 63.5.
  ppl = perplexity(model, PARAGRAPH)
  assert 4.0 < ppl < 25.0, ppl


def test_greedy_answer_knows_paris(model):
  answer, = generate_text(model, ['What is the capital of France?'],
                          sampling=SamplingConfig(max_new_tokens=24))
  assert 'Paris' in answer


def test_bfloat16_weights_stay_close(model):
  bf16 = load.load_model(dtype='bfloat16')
  assert bf16.params['embed']['embedding'].dtype == jnp.bfloat16
  assert abs(perplexity(bf16, PARAGRAPH) - perplexity(model, PARAGRAPH)) < 1.0
