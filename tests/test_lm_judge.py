"""The local LM judge: batched digit probabilities against a brute-force forward, and SmolLM2."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('torch')  # the tiny model is made by transformers' PyTorch classes

from hf_fixtures import save_tiny_hf_model, save_tiny_tokenizer  # noqa: E402
from prosv_jax.errors import ProsvError  # noqa: E402
from prosv_jax.eval.judge import ASPECTS, Item, Ratings  # noqa: E402
from prosv_jax.eval.lm_judge import LMJudge  # noqa: E402
from prosv_jax.models import transformer  # noqa: E402
from prosv_jax.models.load import load_model  # noqa: E402

# Words of the rubric prompts, so the tiny random model's prompts are not all <unk>.
_WORDS = tuple(('0 1 2 Rating : [[ ]] " x the a cat dog sat on mat is happy sad big small red '
                'blue and . , ! ? response fluent concept instruction judge rate').split())

ITEMS = [
    Item('Tell me about cats.', 'dogs', 'The cat sat on the mat.'),
    Item('Write a poem.', 'the colour red', 'red'),
    Item('What is two and two?', 'happiness',
         'the big red dog is happy and the small blue cat is sad . ' * 6),
    Item('Say hello.', 'greetings', 'hello , hello ! a dog sat on a mat , and a cat sat too .'),
    Item('Describe the sky.', 'sadness', 'blue ' * 30),
]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  folder = tmp_path_factory.mktemp('tiny_judge')
  # A wide init so the random model's digit probabilities are far from uniform.
  path, _ = save_tiny_hf_model(folder, 'llama', num_hidden_layers=2, initializer_range=0.2)
  save_tiny_tokenizer(path, words=_WORDS)
  return load_model(path)


def brute_force(judge, aspect, item):
  """Expected rating from a full, unpadded forward over one prompt."""
  model = judge.model
  ids = judge.prompt_ids(aspect, item)
  pos, valid = transformer.positions_from_lengths(np.array([len(ids)]), len(ids), False)
  logits = transformer.forward(model.params, model.cfg, jnp.asarray([ids]), pos, valid).logits
  p = np.asarray(jax.nn.softmax(logits[0, -1, jnp.asarray(judge.digit_ids)]), np.float64)
  return p, float(p @ np.arange(3.0))


def test_matches_brute_force_forward(tiny):
  judge = LMJudge(tiny, batch_size=4)
  lengths = {len(judge.prompt_ids('fluency', it)) for it in ITEMS}
  assert len(lengths) == len(ITEMS)  # different widths: padding and gathering are exercised
  for aspect in ASPECTS:
    probs = judge.probabilities(ITEMS, aspect)
    expected = judge.expected(ITEMS, aspect)
    for i, item in enumerate(ITEMS):
      p, e = brute_force(judge, aspect, item)
      np.testing.assert_allclose(probs[i], p, atol=1e-5)
      assert abs(expected[i] - e) < 1e-5
  # The random model must not be trivially uniform, or the comparison proves little.
  assert np.ptp(judge.expected(ITEMS, 'fluency')) > 1e-3


def test_rate_batch_independent_and_in_range(tiny):
  by_batch = [LMJudge(tiny, batch_size=b).rate(ITEMS) for b in (1, 3, 16)]
  for ratings in by_batch:
    assert len(ratings) == len(ITEMS) and all(isinstance(r, Ratings) for r in ratings)
    for r in ratings:
      assert all(0.0 <= getattr(r, a) <= 2.0 for a in ASPECTS)
  ref = np.array([[getattr(r, a) for a in ASPECTS] for r in by_batch[0]])
  for ratings in by_batch[1:]:
    got = np.array([[getattr(r, a) for a in ASPECTS] for r in ratings])
    np.testing.assert_allclose(got, ref, atol=1e-5)
  # rate agrees with the per-aspect path
  judge = LMJudge(tiny)
  np.testing.assert_allclose(ref[:, 1], judge.expected(ITEMS, 'instruction'), atol=1e-5)


def test_probabilities_and_progress(tiny):
  judge = LMJudge(tiny, batch_size=4)
  probs = judge.probabilities(ITEMS, 'concept')
  assert probs.shape == (len(ITEMS), 3)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-9)
  mass = np.exp(judge.log_probs(ITEMS, 'concept')).sum(-1)
  assert np.all((mass > 0) & (mass <= 1 + 1e-6))
  calls = []
  judge.rate(ITEMS, progress=calls.append)
  # 15 prompts in batches of 4: items finish after prompts 4, 8, 12 and 15.
  assert calls == [1, 1, 2, 1] and sum(calls) == len(ITEMS)
  assert judge.rate([]) == []
  assert judge.name == f'lm:{tiny.source}'


def test_prompt_shape(tiny):
  judge = LMJudge(tiny)
  text = judge.prompt_text('fluency', ITEMS[0])
  assert text.startswith('<s><|user|>') and text.endswith('<|assistant|>Rating: [[')
  assert 'rating only' in text and ITEMS[0].response in text
  tok = tiny.tokenizer
  assert [tok.decode([i]) for i in judge.digit_ids] == ['0', '1', '2']


def test_plain_text_without_chat_template(tiny):
  tok = tiny.tokenizer
  saved = tok.chat_template
  try:
    tok.chat_template = None
    judge = LMJudge(tiny)
    text = judge.prompt_text('fluency', ITEMS[0])
    assert '<|user|>' not in text and text.endswith('\n\nRating: [[')
    p, e = brute_force(judge, 'fluency', ITEMS[1])
    assert abs(judge.expected(ITEMS[1:2], 'fluency')[0] - e) < 1e-5
  finally:
    tok.chat_template = saved


def test_digits_must_be_single_tokens(tiny, tmp_path):
  words = tuple(w for w in _WORDS if w not in ('1', '2'))  # '1' and '2' become <unk>
  tok = save_tiny_tokenizer(tmp_path / 'tok', words=words)
  with pytest.raises(ProsvError, match="does not emit '1' as one token"):
    LMJudge(dataclasses.replace(tiny, tokenizer=tok))


# ------------------------------------------------------------------------ the real SmolLM2

FLUENT = ('Cats are small, affectionate animals that have lived alongside people for thousands of '
          'years. They are known for their independence, their playful nature and their soft fur.')
GARBAGE = 'the the the the the the the the the the the the the the the the the the the the the'
SHUFFLED = ('fur years soft their for people nature are thousands of alongside small cats and '
            'playful that independence lived known the animals their affectionate')
CATS = 'Tell me about cats.'
OFF_TOPIC = ('The stock market fell sharply today as investors worried about rising interest '
             'rates and weak earnings reports from several large banks.')


@pytest.mark.real_model
def test_smollm_judge_mechanics(smollm):
  judge = LMJudge(smollm)
  assert judge.name.startswith('lm:') and judge.name.endswith('.gguf')
  assert [smollm.tokenizer.decode([i]) for i in judge.digit_ids] == ['0', '1', '2']
  items = [Item(CATS, 'cats', FLUENT), Item(CATS, 'cats', GARBAGE),
           Item(CATS, 'cats', SHUFFLED), Item(CATS, 'cats', OFF_TOPIC)]
  ratings = judge.rate(items)
  for r in ratings:
    assert all(0.0 <= getattr(r, a) <= 2.0 for a in ASPECTS)
  # Batched and padded with the real chat template = one unpadded forward.
  _, e = brute_force(judge, 'instruction', items[3])
  assert abs(ratings[3].instruction - e) < 1e-4
  # The prompt ends where the rating digit comes: a good share of the mass is on 0/1/2
  # (measured 0.46-0.57; the rest goes to the rubric's placeholder 'x', digits 3-5, '#' ...).
  mass = np.exp(judge.log_probs(items, 'fluency')).sum(-1)
  assert np.all(mass > 0.25), mass
  # SmolLM2-135M does not discriminate: measured fluency 0.76 fluent, 0.75 'the the ...',
  # 0.73 shuffled; instruction 0.72 on-topic vs 0.76 off-topic. Every rating sits near one
  # prior p ~ (0.4, 0.47, 0.13), so no ordering is asserted; use a larger judge model.
