"""Utility metrics: file loaders, number extraction, log-likelihood cost, MC and GSM8K accuracy."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from prosv_jax import sampling
from prosv_jax import steer as steering
from prosv_jax.chat import chat_prompt_ids
from prosv_jax.errors import ProsvError
from prosv_jax.eval import utility
from prosv_jax.eval.utility import MathProblem, MultipleChoice
from prosv_jax.models import transformer
from prosv_jax.sampling import SamplingConfig, generate_text
from prosv_jax.vectors import SteeringVectors

# --- fixture files ---------------------------------------------------------------

MC_ROWS = [
    {'question': 'What is the capital of France?', 'choices': ['Rome', 'Paris', 'Berlin', 'Madrid'],
     'answer': 'B'},
    {'question': 'How many legs does a spider have?', 'choices': ['8', '6', '4'], 'answer': 0},
    {'question': 'Which is a colour?', 'choices': ['dog', 'run', 'blue', 'sat'], 'answer': 2},
]
MC_WANT = [MultipleChoice(r['question'], tuple(r['choices']), a)
           for r, a in zip(MC_ROWS, (1, 0, 2))]
GSM_SOLUTION = ('Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n'
                'Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72')


def write_rows(path, rows, kind=None):
  """Writes row dicts as .jsonl, .json, .csv (lists as JSON strings) or .parquet."""
  kind = kind or path.suffix
  if kind == '.jsonl':
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  elif kind == '.json':
    path.write_text(json.dumps(rows))
  elif kind == '.csv':
    flat = [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows]
    pd.DataFrame(flat).to_csv(path, index=False)
  elif kind == '.parquet':
    pd.DataFrame(rows).to_parquet(path)
  return path


# --- multiple-choice files ---------------------------------------------------------


@pytest.mark.parametrize('suffix', ['.jsonl', '.json', '.csv'])
def test_multiple_choice_files_with_letters_and_indices(tmp_path, suffix):
  path = write_rows(tmp_path / f'mc{suffix}', MC_ROWS)
  assert utility.read_multiple_choice(path) == MC_WANT


def test_multiple_choice_parquet_list_column_and_int_answers(tmp_path):
  rows = [dict(r, answer=w.answer, subject='x') for r, w in zip(MC_ROWS, MC_WANT)]
  path = write_rows(tmp_path / 'mc.parquet', rows)
  assert utility.read_multiple_choice(path) == MC_WANT


def test_multiple_choice_answer_spellings(tmp_path):
  rows = [{'question': 'q', 'choices': ['a', 'b', 'c', 'd'], 'answer': a}
          for a in ('c', ' D ', '(A)', 'B.', '3', 2.0)]
  got = utility.read_multiple_choice(write_rows(tmp_path / 'mc.jsonl', rows))
  assert [q.answer for q in got] == [2, 3, 0, 1, 3, 2]


@pytest.mark.parametrize('suffix,rows,message', [
    ('.jsonl', [{'question': 'q', 'choices': ['a', 'b']}],
     r'mc\.jsonl: missing column\(s\) answer; each row needs question, choices'),
    ('.jsonl', [MC_ROWS[0], {'question': 'q', 'choices': ['only'], 'answer': 0}],
     r'mc\.jsonl row 1: 1 choice\(s\); give a list of at least 2 strings'),
    ('.jsonl', [{'question': 'q', 'choices': ['a', 'b', 'c', 'd'], 'answer': 4}],
     r'mc\.jsonl row 0: answer 4 is out of range for 4 choices; use an index 0\.\.3 or a '
     r'letter A-D'),
    ('.json', [{'question': 'q', 'choices': ['a', 'b', 'c'], 'answer': 'D'}],
     r"mc\.json row 0: answer 'D' is out of range for 3 choices; .* letter A-C"),
    ('.jsonl', [{'question': 'q', 'choices': ['a', 'b'], 'answer': 'maybe'}],
     r"row 0: answer 'maybe' is neither an index nor a letter; use an index"),
    ('.jsonl', [{'question': 'q', 'choices': ['a', 'b'], 'answer': True}],
     r'row 0: answer True is neither an index nor a letter'),
    ('.csv', [{'question': 'q', 'choices': 'Paris; Rome', 'answer': 'A'}],
     r"mc\.csv row 0: choices 'Paris; Rome' is not a JSON list; .*\[\"Paris\", \"Rome\"\]"),
    ('.jsonl', [MC_ROWS[0], MC_ROWS[1], {'question': ' ', 'choices': ['a', 'b'], 'answer': 0}],
     r'mc\.jsonl row 2: question is empty or not text'),
    ('.jsonl', [{'question': 'q', 'choices': 'ab', 'answer': 0}],
     r'row 0: choices .* is not a JSON list'),
    ('.jsonl', [{'question': 'q', 'choices': {'a': 1}, 'answer': 0}],
     r'row 0: choices is dict, not a list'),
    ('.json', [], r'mc\.json has no rows'),
])
def test_malformed_multiple_choice_files(tmp_path, suffix, rows, message):
  path = write_rows(tmp_path / f'mc{suffix}', rows)
  with pytest.raises(ProsvError, match=message) as err:
    utility.read_multiple_choice(path)
  assert '\n' not in str(err.value)


def test_missing_and_unknown_files(tmp_path):
  with pytest.raises(ProsvError, match=r'no such file: .*nope\.jsonl; pass a \.jsonl, \.json'):
    utility.read_multiple_choice(tmp_path / 'nope.jsonl')
  (tmp_path / 'mc.txt').write_text('hello')
  with pytest.raises(ProsvError, match=r'mc\.txt is not a \.jsonl, \.json, \.csv or \.parquet'):
    utility.read_gsm8k(tmp_path / 'mc.txt')
  (tmp_path / 'bad.jsonl').write_text('{"question": \n')
  with pytest.raises(ProsvError, match=r'bad\.jsonl line 1: not valid JSON'):
    utility.read_multiple_choice(tmp_path / 'bad.jsonl')
  (tmp_path / 'bad.parquet').write_bytes(b'not parquet')
  with pytest.raises(ProsvError, match=r'cannot read .*bad\.parquet'):
    utility.read_gsm8k(tmp_path / 'bad.parquet')


# --- GSM8K files and numbers ---------------------------------------------------------


@pytest.mark.parametrize('suffix', ['.jsonl', '.json', '.csv', '.parquet'])
def test_gsm8k_files(tmp_path, suffix):
  rows = [{'question': 'Natalia sold clips...', 'answer': GSM_SOLUTION},
          {'question': 'Debt?', 'answer': 'She owes $1,250.00.\n#### -1,250'},
          {'question': 'Plain?', 'answer': '42'}]
  got = utility.read_gsm8k(write_rows(tmp_path / f'g{suffix}', rows))
  assert got == [MathProblem('Natalia sold clips...', '72'), MathProblem('Debt?', '-1250'),
                 MathProblem('Plain?', '42')]


def test_gsm8k_numeric_answers(tmp_path):
  rows = [{'question': 'a', 'answer': 18}, {'question': 'b', 'answer': 2.50},
          {'question': 'c', 'answer': 7.0}]
  got = utility.read_gsm8k(write_rows(tmp_path / 'g.parquet', rows))
  assert [p.answer for p in got] == ['18', '2.5', '7']


@pytest.mark.parametrize('rows,message', [
    ([{'question': 'a'}], r'g\.jsonl: missing column\(s\) answer; each row needs question and '
                          r'answer'),
    ([{'answer': '1'}], r'missing column\(s\) question'),
    ([{'question': 'a', 'answer': '3'}, {'question': 'b', 'answer': 'no idea'}],
     r"g\.jsonl row 1: answer 'no idea' holds no number; give the final number, or GSM8K's"),
    ([{'question': 'a', 'answer': None}], r'row 0: answer None holds no number'),
    ([{'question': '', 'answer': '2'}], r'row 0: question is empty or not text'),
])
def test_malformed_gsm8k_files(tmp_path, rows, message):
  with pytest.raises(ProsvError, match=message) as err:
    utility.read_gsm8k(write_rows(tmp_path / 'g.jsonl', rows))
  assert '\n' not in str(err.value)


@pytest.mark.parametrize('text,want', [
    ('The answer is 1,234.', '1234'),
    ('#### -5', '-5'),
    ('It costs $3.50', '3.5'),
    ('It costs -$3.50 net', '-3.5'),
    ('no number', None),
    ('', None),
    ('42.0', '42'),
    ('42', '42'),
    ('The answer is 42.', '42'),
    ('So 0.50 of it.', '0.5'),
    ('1,234,567 people', '1234567'),
    ('pick 1,2,3', '3'),
    ('5-3=2', '2'),
    ('It drops to -7 degrees.', '-7'),
    ('It went from 3 to \u22124', '-4'),
    ('$ 1,000 total', '1000'),
    ('it is 50% off, so 12 each', '12'),
    ('-0', '0'),
    (GSM_SOLUTION, '72'),
    ('She has 3 apples, then 5 more: 3 + 5 = 8 apples.\n#### 8\nextra 99', '8'),
    ('Working: 10 - 2 = 8.\n####', '8'),  # '####' with nothing after it: the last number
])
def test_extract_number(text, want):
  assert utility.extract_number(text) == want


def test_normalised_numbers_compare_equal():
  assert utility.extract_number('42.0') == utility.extract_number('42')
  assert utility.extract_number('1,234') == utility.extract_number('1234')
  assert utility.extract_number('$7.10') == utility.extract_number('7.1')
  assert utility.normalize_number('abc') is None


def test_score_gsm8k():
  problems = [MathProblem('a', '72'), MathProblem('b', '1234'), MathProblem('c', '5')]
  result = utility.score_gsm8k(problems, ['... The answer is 72.', 'The answer is 1,234.00',
                                          'I do not know'])
  assert result['correct'] == [True, True, False]
  assert result['predictions'] == ['72', '1234', None]
  assert result['accuracy'] == pytest.approx(2 / 3) and result['n'] == 3
  with pytest.raises(ProsvError, match='3 problems but 1 outputs'):
    utility.score_gsm8k(problems, ['1'])


def test_prompts():
  text = utility.multiple_choice_prompt(MC_WANT[1])
  assert text == ('How many legs does a spider have?\n\nA. 8\nB. 6\nC. 4\n\n'
                  'Answer with the letter only.')
  assert utility.gsm8k_prompt(MathProblem('What is 2 + 2?', '4')).startswith(
      'What is 2 + 2?\n\nSolve step by step and end with "The answer is N."')


# --- a tiny random model ------------------------------------------------------------

# A word-level vocabulary with the choice letters and digits, so that MC scoring and number
# extraction have tokens to work with.
WORDS = tuple(('hello world the a cat dog sat on mat is happy sad big small red blue one two '
               'three and . , ! ? A B C D 0 1 2 3 4 5 6 7 8 9 answer').split())


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  pytest.importorskip('torch')  # the tiny model is made by transformers' PyTorch classes
  from hf_fixtures import save_tiny_hf_model, save_tiny_tokenizer
  from prosv_jax.models.load import load_model
  path, _ = save_tiny_hf_model(tmp_path_factory.mktemp('tiny'), 'llama', num_hidden_layers=3,
                               initializer_range=0.1)
  save_tiny_tokenizer(path, words=WORDS)
  return load_model(path)


ROWS = pd.DataFrame({
    'input': ['hello world', 'the cat sat on the mat ?', 'is the dog happy ?'],
    'output': ['hello . the cat is happy and the dog is sad', 'yes , the cat sat',
               'the dog is big and red and happy !'],
    'concept_id': [-1, -1, -1]})


def make_steer(model, scale, spec, concept=1, layer=1, seed=0):
  """The keyword arguments of a steered call: a two-concept set and the concept to use."""
  direction = jax.random.normal(jax.random.key(seed), (2, model.cfg.hidden_size))
  vectors = SteeringVectors.create(np.full((2,), scale, np.float32), direction, layer=layer,
                                   positions=spec)
  return {'vectors': vectors, 'concept': concept}


def seam_of(steer):
  """(params, concept row, layer, Positions) of make_steer's keyword arguments, for hand checks."""
  v = steer['vectors']
  return v.params(), v.index_of(steer['concept']), v.layer, v.parsed_positions


def direct_nll(model, instruction, output, steer=None):
  """Per-token response NLL of one unpadded row, straight from transformer.forward."""
  prompt = chat_prompt_ids(model.tokenizer, instruction)
  response = model.tokenizer.encode(output, add_special_tokens=False)
  tokens = jnp.asarray([prompt + response])
  t = tokens.shape[1]
  pos, valid = transformer.positions_from_lengths(jnp.asarray([t]), t, left_padded=False)
  seam = {}
  if steer is not None:
    params, concept, layer, positions = seam_of(steer)
    mask = hand_mask(positions, len(prompt), t)
    seam = dict(steer=steering.steer_fn(params, [concept]), steer_layer=layer,
                steer_mask=jnp.asarray(mask[None]))
  logits = transformer.forward(model.params, model.cfg, tokens, pos, valid, **seam).logits[0]
  logp = jax.nn.log_softmax(logits, axis=-1)
  picked = [float(logp[len(prompt) - 1 + i, tok]) for i, tok in enumerate(response)]
  return -np.mean(picked), len(response)


def hand_mask(positions, prompt_len, total):
  """The edit positions of the specs the tests use, written out by hand."""
  mask = np.zeros(total, bool)
  if positions.full_sequence:
    mask[:] = True
  elif positions.whole_prompt:
    mask[:prompt_len] = True
  else:
    mask[:min(positions.first, prompt_len)] = True
    if positions.last:
      mask[max(prompt_len - positions.last, 0):prompt_len] = True
  return mask


@pytest.mark.parametrize('spec', ['p2+s2', 'all'])
def test_zero_factor_costs_exactly_nothing(tiny, spec):
  result = utility.loglik_loss(tiny, ROWS, **make_steer(tiny, 0.0, spec), batch_size=2)
  assert result['loss'] == 0.0
  assert result['nll_steered'] == result['nll_unsteered']
  assert result['rows'] == 3 and result['tokens'] == sum(
      len(tiny.tokenizer.encode(o, add_special_tokens=False)) for o in ROWS['output'])
  plain = utility.loglik_loss(tiny, ROWS, None, batch_size=2)
  assert plain['loss'] == 0.0 and plain['nll_unsteered'] == result['nll_unsteered']


@pytest.fixture(scope='module')
def own_answers(tiny):
  """The tiny model's greedy answers to ROWS: like AxBench's negatives, its own plain output
  (a random model is no better than chance on other text, so steering need not cost there)."""
  outputs = generate_text(tiny, list(ROWS['input']), sampling=SamplingConfig(max_new_tokens=16))
  rows = pd.DataFrame({'input': ROWS['input'], 'output': outputs})
  return rows[rows['output'].str.strip() != '']


@pytest.mark.parametrize('spec', ['p2+s2', 'all'])
def test_large_random_vector_costs_likelihood(tiny, own_answers, spec):
  result = utility.loglik_loss(tiny, own_answers, **make_steer(tiny, 50.0, spec), batch_size=2)
  assert result['loss'] > 0.0, result
  assert result['loss'] == pytest.approx(result['nll_steered'] - result['nll_unsteered'])


@pytest.mark.parametrize('spec', ['p2+s2', 'all'])
def test_nll_matches_a_direct_forward(tiny, spec):
  steer = make_steer(tiny, 3.0, spec)
  per_row = [direct_nll(tiny, x, y, steer) for x, y in zip(ROWS['input'], ROWS['output'])]
  plain = [direct_nll(tiny, x, y) for x, y in zip(ROWS['input'], ROWS['output'])]
  one = utility.loglik_loss(tiny, ROWS.iloc[[1]], **steer)
  np.testing.assert_allclose(one['nll_steered'], per_row[1][0], rtol=1e-5)
  np.testing.assert_allclose(one['nll_unsteered'], plain[1][0], rtol=1e-5)
  # Three rows in batches of two: the filled-in repeat of the last batch must not count.
  every = utility.loglik_loss(tiny, ROWS, **steer, batch_size=2)
  weights = np.array([n for _, n in per_row])
  np.testing.assert_allclose(every['nll_steered'],
                             np.dot([v for v, _ in per_row], weights) / weights.sum(), rtol=1e-5)
  np.testing.assert_allclose(every['nll_unsteered'],
                             np.dot([v for v, _ in plain], weights) / weights.sum(), rtol=1e-5)


def test_loglik_cuts_responses_and_checks_input(tiny):
  assert utility.loglik_loss(tiny, ROWS, max_response_tokens=4)['tokens'] == 12
  records = [{'input': 'hello', 'output': 'the cat'}]
  assert utility.loglik_loss(tiny, records)['rows'] == 1
  with pytest.raises(ProsvError, match=r'rows lack column\(s\) output'):
    utility.loglik_loss(tiny, [{'input': 'hello'}])
  with pytest.raises(ProsvError, match=r'empty or non-text output, first row 1'):
    utility.loglik_loss(tiny, [{'input': 'a', 'output': 'b'}, {'input': 'a', 'output': ' '}])
  with pytest.raises(ProsvError, match='no rows'):
    utility.loglik_loss(tiny, ROWS.iloc[:0])


def test_negative_rows():
  table = pd.DataFrame({'input': list('abcd'), 'output': list('abcd'),
                        'concept_id': [-1, 0, -1, 1],
                        'category': ['negative', 'positive', 'negative', 'positive']})
  assert list(utility.negative_rows(table)['input']) == ['a', 'c']
  with pytest.raises(ProsvError, match='no negative rows'):
    utility.negative_rows(table[table['concept_id'] >= 0])


def test_bad_steers_are_rejected(tiny):
  with pytest.raises(ProsvError, match=r'pick a layer in 0\.\.2'):
    utility.loglik_loss(tiny, ROWS, **make_steer(tiny, 1.0, 'all', layer=3))
  with pytest.raises(ProsvError, match=r'concept index 2 is out of range; this set has 2 concepts'):
    utility.multiple_choice_accuracy(tiny, MC_WANT, **make_steer(tiny, 1.0, 'all', concept=2))
  wrong = SteeringVectors.create(np.ones(1), np.ones((1, 7)), layer=1, positions='all')
  with pytest.raises(ProsvError, match=r'the vectors have width 7 but the model has width 64'):
    utility.gsm8k_accuracy(tiny, [MathProblem('a', '1')], wrong)
  with pytest.raises(ProsvError, match='valid forms'):
    SteeringVectors.create(np.ones(1), np.ones((1, 64)), layer=1, positions='first2')
  with pytest.raises(ProsvError, match='vectors must be a SteeringVectors or None'):
    utility.loglik_loss(tiny, ROWS, ({}, 0, 1, 'all'))


TINY_MC = [
    MultipleChoice('is the cat happy ?', ('one', 'two', 'three', 'blue'), 1),
    MultipleChoice('the dog sat on the big red mat ? and then ?', ('a', 'b'), 0),
    MultipleChoice('hello', ('cat', 'dog', 'mat'), 2),
]


def brute_force_letter_logprobs(model, question, steer):
  prompt = chat_prompt_ids(model.tokenizer, utility.multiple_choice_prompt(question))
  t = len(prompt)
  pos, valid = transformer.positions_from_lengths(jnp.asarray([t]), t, left_padded=False)
  seam = {}
  if steer is not None:
    params, concept, layer, positions = seam_of(steer)
    seam = dict(steer=steering.steer_fn(params, [concept]), steer_layer=layer,
                steer_mask=jnp.asarray(hand_mask(positions, t, t)[None]))
  logits = transformer.forward(model.params, model.cfg, jnp.asarray([prompt]), pos, valid,
                               **seam).logits[0, -1]
  ids = model.tokenizer.convert_tokens_to_ids(list('ABCD'[:len(question.choices)]))
  return np.asarray(jax.nn.log_softmax(logits))[ids]


@pytest.mark.parametrize('spec', [None, 'p2+s2', 'all'])
def test_multiple_choice_equals_a_brute_force_single_row(tiny, spec):
  steer = None if spec is None else make_steer(tiny, 20.0, spec)
  result = utility.multiple_choice_accuracy(tiny, TINY_MC, **(steer or {}), batch_size=2)
  assert result['n'] == 3 and len(result['predictions']) == 3
  for q, pred, scores in zip(TINY_MC, result['predictions'], result['scores']):
    assert 0 <= pred < len(q.choices)
    want = brute_force_letter_logprobs(tiny, q, steer)
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)
    assert pred == int(np.argmax(want))
  assert result['correct'] == [p == q.answer for p, q in zip(result['predictions'], TINY_MC)]
  assert result['accuracy'] == pytest.approx(np.mean(result['correct']))


def test_steering_changes_multiple_choice_scores(tiny):
  plain = utility.multiple_choice_accuracy(tiny, TINY_MC)
  steered = utility.multiple_choice_accuracy(tiny, TINY_MC, **make_steer(tiny, 20.0, 'all'))
  assert not np.allclose(plain['scores'][0], steered['scores'][0])


def test_letters_need_their_own_tokens(tmp_path):
  pytest.importorskip('torch')
  from hf_fixtures import save_tiny_tokenizer
  no_letters = save_tiny_tokenizer(tmp_path)
  with pytest.raises(ProsvError, match="no single token for the letter 'A'"):
    utility.letter_token_ids(no_letters, 4)


@pytest.mark.parametrize('spec', [None, 'p2+s2', 'all'])
def test_gsm8k_runs_on_the_tiny_model(tiny, spec):
  steer = None if spec is None else make_steer(tiny, 5.0, spec)
  problems = [MathProblem('one and two ?', '3'), MathProblem('the cat sat on 2 mats', '2'),
              MathProblem('hello', '7')]
  result = utility.gsm8k_accuracy(tiny, problems, **(steer or {}), max_new_tokens=6, batch_size=2)
  assert result['n'] == 3 and len(result['outputs']) == 3
  assert all(isinstance(o, str) for o in result['outputs'])
  assert result['predictions'] == [utility.extract_number(o) for o in result['outputs']]
  assert 0.0 <= result['accuracy'] <= 1.0
  # The same prompt alone gives the same greedy text: batching and filling change nothing.
  alone = utility.gsm8k_accuracy(tiny, problems[2:], **(steer or {}), max_new_tokens=6)
  assert alone['outputs'] == result['outputs'][2:]


def test_empty_inputs_are_rejected(tiny):
  with pytest.raises(ProsvError, match='no multiple-choice questions'):
    utility.multiple_choice_accuracy(tiny, [])
  with pytest.raises(ProsvError, match='no problems'):
    utility.gsm8k_accuracy(tiny, [])
  with pytest.raises(ProsvError, match='batch_size=0'):
    utility.multiple_choice_accuracy(tiny, TINY_MC, batch_size=0)


# --- the real SmolLM2 ---------------------------------------------------------------

EASY_MC = [
    MultipleChoice('What is the capital of France?', ('Berlin', 'Madrid', 'Paris', 'Rome'), 2),
    MultipleChoice('How many days are in a week?', ('Seven', 'Three', 'Ten', 'Twelve'), 0),
    MultipleChoice('What colour is the sky on a clear day?', ('Green', 'Blue', 'Red', 'Black'),
                   1),
]


@pytest.mark.real_model
@pytest.mark.parametrize('spec', [None, 'all'])
def test_smollm_letter_scores_agree_with_greedy_generation(smollm, spec):
  """The scored letter is the letter SmolLM2 actually writes first, steered or not.

  No accuracy floor: SmolLM2-135M answers 'A' to every letter-format question tried (12 of
  them, with plain, absurd or two-way choices and six prompt wordings), i.e. it is at chance
  on this format, so a threshold would test the model rather than this code.
  """
  steer = None
  if spec is not None:
    direction = jax.random.normal(jax.random.key(0), (1, smollm.cfg.hidden_size))
    steer = SteeringVectors.create(np.full((1,), 4.0), direction, layer=10, positions=spec)
  result = utility.multiple_choice_accuracy(smollm, EASY_MC, steer)
  assert result['n'] == 3 and all(0 <= p < 4 for p in result['predictions'])
  assert result['accuracy'] in (0.0, 1 / 3, 2 / 3, 1.0)
  letters = utility.letter_token_ids(smollm.tokenizer, 4)
  for q, pred in zip(EASY_MC, result['predictions']):
    prompt = chat_prompt_ids(smollm.tokenizer, utility.multiple_choice_prompt(q))
    seam = {} if steer is None else steer.generation_kwargs([0])
    first, = sampling.generate_ids(smollm.params, smollm.cfg, [prompt],
                                   sampling=SamplingConfig(max_new_tokens=1), **seam)
    assert first and first[0] in letters, smollm.tokenizer.decode(first)
    assert pred == int(np.argwhere(letters == first[0])[0, 0])


@pytest.mark.real_model
def test_smollm_gsm8k_end_to_end(smollm):
  problems = [MathProblem('Tom has 2 apples and buys 3 more. How many apples does he have?', '5'),
              MathProblem('What is 10 minus 4?', '6')]
  result = utility.gsm8k_accuracy(smollm, problems, max_new_tokens=64)
  assert result['n'] == 2 and len(result['outputs']) == 2
  assert all(isinstance(o, str) and o.strip() for o in result['outputs'])
  for out, pred in zip(result['outputs'], result['predictions']):
    assert pred is None or re.fullmatch(r'-?\d+(\.\d+)?', pred)
    assert pred == utility.extract_number(out)
  assert result['accuracy'] in (0.0, 0.5, 1.0)
