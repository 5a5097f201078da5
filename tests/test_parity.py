"""Logit parity with transformers' PyTorch models on tiny random configs of each family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from hf_fixtures import save_tiny_hf_model  # noqa: E402
from prosv_jax.models import load, transformer  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')

# Big enough weights that softmax and softcaps are far from linear.
BIG = dict(num_hidden_layers=4, initializer_range=0.2)


def load_pair(tmp_path, name):
  """The same tiny random model as transformers' PyTorch module and through load_model."""
  path, torch_model = save_tiny_hf_model(tmp_path, _family(name), **BIG, **FAMILIES[name])
  model = load.load_model(path)
  return torch_model, model.cfg, model.params


FAMILIES = {
    'llama': dict(tie_word_embeddings=True),
    'llama_untied_bias_rope3': dict(
        tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
        rope_parameters={'rope_type': 'llama3', 'rope_theta': 500000.0, 'factor': 8.0,
                         'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                         'original_max_position_embeddings': 64}),
    'qwen2': dict(),
    'qwen2_tied': dict(tie_word_embeddings=True),
    # window 4 over 12 tokens: the sliding layers really mask; softcaps small enough to bite.
    'gemma2': dict(sliding_window=4, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                   query_pre_attn_scalar=24),
    'gemma3': dict(sliding_window=4, layer_types=['sliding_attention', 'full_attention',
                                                  'sliding_attention', 'sliding_attention'],
                   rope_parameters={'full_attention': {'rope_type': 'linear', 'factor': 2.0,
                                                       'rope_theta': 1e6},
                                    'sliding_attention': {'rope_type': 'default',
                                                          'rope_theta': 1e4}}),
}


def _family(name):
  return name.split('_')[0]


@pytest.mark.parametrize('name', list(FAMILIES))
@pytest.mark.parametrize('padding', ['none', 'right', 'left'])
def test_logits_match_transformers(tmp_path, name, padding):
  model, cfg, params = load_pair(tmp_path, name)
  rng = np.random.default_rng(1)
  b, t = 3, 12
  tokens = rng.integers(3, 128, size=(b, t))
  lengths = np.array([12, 7, 9]) if padding != 'none' else np.full(b, t)
  left = padding == 'left'
  positions, valid = transformer.positions_from_lengths(lengths, t, left_padded=left)
  mask = np.asarray(valid)
  out = transformer.forward(params, cfg, jnp.asarray(tokens), positions, jnp.asarray(mask))
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                position_ids=torch.tensor(np.asarray(positions))).logits.numpy()
  got = np.asarray(out.logits)
  np.testing.assert_allclose(got[mask], ref[mask], atol=1e-4, rtol=1e-4)


def test_sliding_window_and_softcap_are_exercised(tmp_path):
  """Guards the parity test: turning the window or the caps off must change the logits."""
  import dataclasses
  _, cfg, params = load_pair(tmp_path, 'gemma2')
  tokens = jnp.asarray(np.random.default_rng(2).integers(3, 128, size=(1, 12)))
  pos, valid = transformer.positions_from_lengths(np.array([12]), 12, left_padded=False)
  base = transformer.forward(params, cfg, tokens, pos, valid).logits
  for change in (dict(sliding_window=None), dict(attn_softcap=None), dict(final_softcap=None)):
    other = transformer.forward(params, dataclasses.replace(cfg, **change), tokens, pos,
                                valid).logits
    assert float(jnp.max(jnp.abs(other - base))) > 1e-3, change
