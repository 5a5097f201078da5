"""Utility metrics: how much a steering vector costs the model at what it already does.

Three measures, each computed unsteered and steered with the same code path:

  loglik_loss               mean per-token NLL of plain answers (AxBench's negatives: the
                            instruction `input`, the model's own unsteered answer `output`);
                            `loss` = steered - unsteered, 0 for a vector that costs nothing.
  multiple_choice_accuracy  tinyMMLU-style questions, scored by the choice letter the model
                            puts most probability on as its first answer token.
  gsm8k_accuracy            GSM8K-style word problems, greedy generation, exact match of the
                            final number.

A steer is a SteeringVectors and one of its concepts (row index, concept_id or description);
its layer, positions and chat template come with it. `vectors=None` means unsteered. Prompt-only
positions (e.g. p2+s2, PrOSV) edit prompt tokens only; 'all' (FSSV) also edits every
response/generated token, exactly as in training (train_step.response_logprobs) and generation
(SteeringVectors.generation_kwargs). Prompts use the vectors' chat template unless
`chat_template` says otherwise ('' = the tokenizer's own, a chat.TEMPLATES name, Jinja text).

Multiple-choice files (.jsonl, .json, .csv, .parquet) have columns `question`, `choices` (a
list of strings; in CSV a JSON list such as ["Paris", "Rome"]) and `answer` (an index from 0 or
a letter A, B, ...). GSM8K files have `question` and `answer` (a number, or GSM8K's solution
text ending in '#### 42'). Rows in error messages count from 0 in file order.
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import json
import math
import os
import re
import string
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from prosv_jax import data, sampling
from prosv_jax.train import step as train_step
from prosv_jax import steer as steering
from prosv_jax.chat import chat_prompt_ids
from prosv_jax.errors import ProsvError, one_line
from prosv_jax.models import transformer
from prosv_jax.padding import round_up
from prosv_jax.vectors import SteeringVectors

PAD_MULTIPLE = 16  # widths are rounded up to this, so few distinct shapes get compiled
LETTERS = string.ascii_uppercase
MC_INSTRUCTION = 'Answer with the letter only.'
GSM8K_HINT = 'Solve step by step and end with "The answer is N." where N is the final number.'
_FILE_KINDS = '.jsonl, .json, .csv or .parquet'


# --- steers ------------------------------------------------------------------


def _checked(model, vectors: SteeringVectors | None, concept) -> SteeringVectors | None:
  """The one concept of `vectors` to steer with, after checking it fits the model."""
  if vectors is None:
    return None
  if not isinstance(vectors, SteeringVectors):
    raise ProsvError(f'vectors must be a SteeringVectors or None, got '
                     f'{type(vectors).__name__}; load them with prosv_jax.load_vectors or build '
                     'them with SteeringVectors.create')
  vectors.check_model(model.cfg)
  return vectors.pick(concept)


def _template(vectors: SteeringVectors | None, chat_template: str | None) -> str:
  """None = the vectors' own template (the tokenizer's without vectors)."""
  if chat_template is not None:
    return chat_template
  return vectors.chat_template if vectors is not None else ''


def _jit_args(one: SteeringVectors | None) -> tuple:
  """(params, layer, positions) for the jitted passes; the picked concept is row 0."""
  if one is None:
    return None, 0, steering.Positions()
  return one.params(), one.steer_layer(), one.parsed_positions


# --- log-likelihood of plain answers ------------------------------------------


def negative_rows(table: pd.DataFrame) -> pd.DataFrame:
  """AxBench's shared negatives of a concept table: rows with concept_id -1.

  In AxBench they are the generating model's own unsteered answers; they measure the cost of
  steering only when that model is the one being steered.
  """
  rows = table[table['concept_id'] == -1]
  if 'category' in table.columns:
    rows = rows[rows['category'] != 'positive']
  if rows.empty:
    raise ProsvError('the concept table has no negative rows (concept_id -1); pass the '
                     'instruction/answer rows to score directly')
  return rows


@functools.partial(jax.jit, static_argnames=('cfg', 'layer', 'positions', 'response_width'))
def _response_nll(frozen, batch, steer_params, *, cfg, layer, positions, response_width):
  """Summed response NLL per row [B], unsteered and (when steer_params is given) steered.

  Both passes start from one block-`layer` output: steering cannot change blocks 0..layer.
  """
  h_low = train_step.lower_hidden(frozen, cfg, layer, batch['tokens'], batch['length'])
  logp, present = train_step.response_logprobs(frozen, cfg, layer, positions, None, batch,
                                               h_low, response_width)
  out = {'unsteered': -logp.sum(-1), 'tokens': present.sum(-1)}
  if steer_params is not None:
    logp, _ = train_step.response_logprobs(frozen, cfg, layer, positions, steer_params, batch,
                                           h_low, response_width)
    out['steered'] = -logp.sum(-1)
  return out


def loglik_loss(model, rows, vectors: SteeringVectors | None = None, concept: int | str = 0,
                batch_size: int = 8, max_response_tokens: int = 128,
                max_prompt_tokens: int = 512, chat_template: str | None = None) -> dict:
  """Mean per-token NLL of each row's `output` given its chat-templated `input`.

  Only response tokens count (no EOS is appended, as in training); the mean is over all
  response tokens of all rows, so longer answers weigh more.

  Args:
    model: a loaded Model.
    rows: a DataFrame (or list of dicts) with `input` and `output`, e.g. negative_rows(table).
    vectors: the SteeringVectors to measure; None gives nll_steered == nll_unsteered.
    concept: which of them (row index, concept_id or description).
    batch_size: rows per forward pass.
    max_response_tokens: each response is cut to this many tokens.
    max_prompt_tokens: a longer templated instruction is an error (it is never cut).
    chat_template: None = the vectors' own; '' = the tokenizer's; a TEMPLATES name or Jinja.

  Returns:
    {'nll_unsteered', 'nll_steered', 'loss' (steered - unsteered), 'tokens', 'rows'}.

  Raises:
    ProsvError: no rows, a missing column, an empty instruction or answer, a bad steer.
  """
  one = _checked(model, vectors, concept)
  rows = _answer_rows(rows)
  _check_batch_size(batch_size)
  examples = data.tokenize_rows(model.tokenizer, rows, 0, max_prompt_tokens, max_response_tokens,
                                _template(vectors, chat_template))
  params, layer, positions = _jit_args(one)
  pad_id = model.cfg.pad_id if model.cfg.pad_id is not None else 0
  totals = {'unsteered': 0.0, 'steered': 0.0, 'tokens': 0}
  for index in _length_batches([e.length for e in examples], batch_size):
    chunk = [examples[i] for i in index]
    batch = {k: jnp.asarray(v) for k, v in data.pad_batch(chunk, pad_id, PAD_MULTIPLE).items()}
    width = round_up(max(len(e.response) for e in chunk), PAD_MULTIPLE)
    out = jax.device_get(_response_nll(model.params, batch, params, cfg=model.cfg, layer=layer,
                                       positions=positions, response_width=width))
    real = _real_rows(index)  # repeated rows that fill the last batch do not count
    totals['unsteered'] += float(np.sum(out['unsteered'][real], dtype=np.float64))
    totals['steered'] += float(np.sum(out.get('steered', out['unsteered'])[real],
                                      dtype=np.float64))
    totals['tokens'] += int(np.sum(out['tokens'][real]))
  unsteered = totals['unsteered'] / totals['tokens']
  steered = totals['steered'] / totals['tokens']
  return {'nll_unsteered': unsteered, 'nll_steered': steered, 'loss': steered - unsteered,
          'tokens': totals['tokens'], 'rows': len(examples)}


def _answer_rows(rows) -> pd.DataFrame:
  if not isinstance(rows, pd.DataFrame):
    rows = pd.DataFrame.from_records(list(rows))
  missing = [c for c in ('input', 'output') if c not in rows.columns]
  if missing:
    raise ProsvError(f'rows lack column(s) {", ".join(missing)}; pass instruction `input` and '
                     'answer `output` (AxBench format)')
  if rows.empty:
    raise ProsvError('no rows to score; pass at least one instruction/answer row')
  for column in ('input', 'output'):
    blank = rows[column].map(lambda v: not isinstance(v, str) or not v.strip()).to_numpy(bool)
    if blank.any():
      raise ProsvError(f'{int(blank.sum())} row(s) have an empty or non-text {column}, first '
                       f'row {rows.index[blank][0]}; fix or drop those rows')
  return rows


# --- multiple choice ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MultipleChoice:
  """One question; `answer` is the index of the right choice."""
  question: str
  choices: tuple[str, ...]
  answer: int


def read_multiple_choice(path) -> list[MultipleChoice]:
  """Reads tinyMMLU-style questions from .jsonl, .json, .csv or .parquet.

  Columns: `question` (text), `choices` (a list of 2 to 26 strings; in CSV a JSON list string)
  and `answer` (an int index from 0, or a letter A, B, ...). Other columns are ignored.

  Raises:
    ProsvError: naming the file, the row and the fix, for an unreadable file, a missing
      column, an empty question, fewer than 2 choices, or an answer out of range.
  """
  path = os.fspath(path)
  df = _read_table(path, ('question', 'choices', 'answer'),
                   'question, choices (a list of strings) and answer (an index from 0 or a '
                   'letter A-D...)')
  out = []
  for i, (question, choices, answer) in enumerate(zip(df['question'], df['choices'],
                                                      df['answer'])):
    where = f'{path} row {i}'
    question = _text(question, where, 'question')
    choices = _choices(choices, where)
    out.append(MultipleChoice(question, choices, _answer_index(answer, len(choices), where)))
  return out


def multiple_choice_prompt(question: MultipleChoice) -> str:
  """The user message: the question, the lettered choices, then 'Answer with the letter only.'"""
  lines = [question.question.strip(), '']
  lines += [f'{LETTERS[k]}. {choice}' for k, choice in enumerate(question.choices)]
  return '\n'.join(lines + ['', MC_INSTRUCTION])


@functools.partial(jax.jit, static_argnames=('cfg', 'layer', 'positions'))
def _next_token_logprobs(params, tokens, length, steer_params, concept, ids, *, cfg, layer,
                         positions):
  """log p(ids) [B, K, M] for the token after each right-padded prompt [B, W].

  The steer edits the spec's prompt positions ('all': every prompt token), as generation's
  prefill does; the first answer token is predicted from the prompt alone, so this equals
  the first decoding step of steered generation.
  """
  b, w = tokens.shape
  pos, valid = transformer.positions_from_lengths(length, w, left_padded=False)
  seam = {}
  if steer_params is not None:
    seam = dict(steer=steering.steer_fn(steer_params, concept), steer_layer=layer,
                steer_mask=steering.position_mask(positions, length, length, w))
  out = transformer.forward(params, cfg, tokens, pos, valid, compute_logits=False, **seam)
  last = jnp.take_along_axis(out.hidden, (length - 1)[:, None, None], axis=1)[:, 0]
  logp = jax.nn.log_softmax(transformer.head(params, cfg, last), axis=-1)  # [B, V]
  return logp[:, ids]


def letter_token_ids(tokenizer, count: int) -> np.ndarray:
  """Token ids [count, M] that spell each of the first `count` letters as an answer's first
  token ('A' and ' A' in byte-level BPE), -1 where a letter has fewer variants.

  Raises:
    ProsvError: a letter has no single-token spelling, or two letters share a token.
  """
  variants = []
  for letter in LETTERS[:count]:
    ids = []
    for text in (letter, ' ' + letter):
      enc = tokenizer.encode(text, add_special_tokens=False)
      if len(enc) == 1 and enc[0] not in ids and enc[0] != tokenizer.unk_token_id:
        ids.append(int(enc[0]))
    if not ids:
      raise ProsvError(f'the tokenizer has no single token for the letter {letter!r}; '
                       'multiple-choice scoring needs one token per choice letter')
    variants.append(ids)
  seen = [i for ids in variants for i in ids]
  if len(seen) != len(set(seen)):
    raise ProsvError('two choice letters share a token in this tokenizer; multiple-choice '
                     'scoring needs a distinct token per letter')
  width = max(len(ids) for ids in variants)
  return np.array([ids + [-1] * (width - len(ids)) for ids in variants], np.int32)


def multiple_choice_accuracy(model, questions: Sequence[MultipleChoice],
                             vectors: SteeringVectors | None = None, concept: int | str = 0,
                             batch_size: int = 8, chat_template: str | None = None) -> dict:
  """Accuracy on multiple-choice questions, read from the first answer token.

  Each question becomes the chat-templated user message of multiple_choice_prompt. One
  forward pass over the (right-padded) prompts gives the next-token distribution; a choice's
  score is the log-probability of its letter as that token (summed over the letter's spellings,
  e.g. 'B' and ' B'), and the prediction is the best-scoring choice among the question's own.
  A steer edits the prompt positions of its spec ('all': every prompt token); no answer token
  exists yet, so prompt-only and full-sequence steering differ here only in which prompt
  tokens they edit.

  Returns:
    {'accuracy', 'n', 'predictions' (choice indices), 'correct' (bools), 'scores' (per
    question, the log-probability of each choice letter)}.
  """
  one = _checked(model, vectors, concept)
  params, layer, positions = _jit_args(one)
  _check_batch_size(batch_size)
  if not questions:
    raise ProsvError('no multiple-choice questions to score; read some with '
                     'read_multiple_choice')
  count = max(len(q.choices) for q in questions)
  ids = letter_token_ids(model.tokenizer, count)
  valid = ids >= 0
  template = _template(vectors, chat_template)
  prompts = [chat_prompt_ids(model.tokenizer, multiple_choice_prompt(q), template)
             for q in questions]
  scores: list[Any] = [None] * len(questions)
  for index in _length_batches([len(p) for p in prompts], batch_size):
    tokens, length = _right_padded([prompts[i] for i in index], model.cfg)
    rows = jnp.zeros((len(index),), jnp.int32)  # the picked concept is row 0
    logp = np.asarray(_next_token_logprobs(
        model.params, tokens, length, params, rows, jnp.asarray(np.maximum(ids, 0)),
        cfg=model.cfg, layer=layer, positions=positions), np.float64)
    logp = np.where(valid, logp, -np.inf)
    letter = np.logaddexp.reduce(logp, axis=-1)  # [B, count]
    for row in _real_rows(index):
      scores[index[row]] = letter[row]
  predictions, correct = [], []
  for q, s in zip(questions, scores):
    predictions.append(int(np.argmax(s[:len(q.choices)])))
    correct.append(predictions[-1] == q.answer)
  return {'accuracy': float(np.mean(correct)), 'n': len(questions), 'predictions': predictions,
          'correct': correct, 'scores': [s[:len(q.choices)].tolist()
                                         for q, s in zip(questions, scores)]}


# --- GSM8K ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MathProblem:
  """One word problem; `answer` is the normalised final number (see normalize_number)."""
  question: str
  answer: str


def read_gsm8k(path) -> list[MathProblem]:
  """Reads GSM8K-style problems from .jsonl, .json, .csv or .parquet.

  Columns: `question` and `answer`, a number or GSM8K's solution text ending in '#### 42'.

  Raises:
    ProsvError: naming the file, the row and the fix, for an unreadable file, a missing
      column, an empty question or an answer with no number in it.
  """
  path = os.fspath(path)
  df = _read_table(path, ('question', 'answer'),
                   "question and answer (a number, or a solution ending in '#### 42')")
  out = []
  for i, (question, answer) in enumerate(zip(df['question'], df['answer'])):
    where = f'{path} row {i}'
    question = _text(question, where, 'question')
    number = None
    if isinstance(answer, (int, float, np.integer, np.floating)) and not isinstance(
        answer, (bool, np.bool_)):
      number = normalize_number(str(answer)) if math.isfinite(answer) else None
    elif isinstance(answer, str):
      number = extract_number(answer)
    if number is None:
      raise ProsvError(f'{where}: answer {_short(answer)} holds no number; give the final '
                       "number, or GSM8K's solution text ending in '#### <number>'")
    out.append(MathProblem(question, number))
  return out


# A number: an optional sign (not after a word character, so '5-3' is 5 and 3) or a '$',
# digits with thousands commas or plain digits, an optional decimal part. A trailing period
# is left out because '\.\d+' needs a digit after it.
_NUMBER = re.compile(r'(?:(?<![\w)\]])(?P<sign>[-\u2212])\$?|\$\s?)?'
                     r'(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?')


def normalize_number(text: str) -> str | None:
  """'1,234' -> '1234', '42.0' -> '42', '$3.50' -> '3.5', '-0' -> '0'; None if not a number."""
  cleaned = re.sub(r'[,$\s]', '', str(text)).replace('\u2212', '-').rstrip('.')
  try:
    value = decimal.Decimal(cleaned)
  except decimal.InvalidOperation:
    return None
  if not value.is_finite():
    return None
  if value == value.to_integral_value():
    return str(int(value))
  return format(value.normalize(), 'f')


def extract_number(text: str) -> str | None:
  """The final numeric answer in `text`, normalised; None if it holds no number.

  GSM8K's '#### N' wins when present; otherwise the last number in the text. Thousands
  commas, '$', a leading minus, decimals and a trailing period are handled.
  """
  text = str(text)
  if '####' in text:
    found = _numbers(text.rsplit('####', 1)[1])
    if found:
      return found[0]
  found = _numbers(text)
  return found[-1] if found else None


def _numbers(text: str) -> list[str]:
  out = []
  for m in _NUMBER.finditer(text):
    number = normalize_number((m.group('sign') and '-' or '') + m.group('int')
                              + (m.group('frac') or ''))
    if number is not None:
      out.append(number)
  return out


def gsm8k_prompt(problem: MathProblem) -> str:
  """The user message: the question, then GSM8K_HINT."""
  return f'{problem.question.strip()}\n\n{GSM8K_HINT}'


def score_gsm8k(problems: Sequence[MathProblem], outputs: Sequence[str]) -> dict:
  """Exact match of extract_number(output) with each problem's answer."""
  if len(problems) != len(outputs):
    raise ProsvError(f'{len(problems)} problems but {len(outputs)} outputs; pass one output '
                     'per problem')
  predictions = [extract_number(o) for o in outputs]
  correct = [p is not None and p == q.answer for p, q in zip(predictions, problems)]
  return {'accuracy': float(np.mean(correct)) if correct else 0.0, 'n': len(problems),
          'outputs': list(outputs), 'predictions': predictions, 'correct': correct}


def gsm8k_accuracy(model, problems: Sequence[MathProblem], vectors: SteeringVectors | None = None,
                   concept: int | str = 0, max_new_tokens: int = 256, batch_size: int = 8,
                   chat_template: str | None = None) -> dict:
  """Greedy answers to GSM8K-style problems, scored by exact match of the final number.

  Generation is sampling.generate_ids on the chat-templated gsm8k_prompt, steered with
  SteeringVectors.generation_kwargs (prompt-only specs in prefill; 'all' also at every new
  token).

  Returns:
    {'accuracy', 'n', 'outputs' (generated text), 'predictions' (extracted numbers or None),
    'correct'}.
  """
  one = _checked(model, vectors, concept)
  _check_batch_size(batch_size)
  if not problems:
    raise ProsvError('no problems to solve; read some with read_gsm8k')
  config = sampling.SamplingConfig(max_new_tokens=max_new_tokens)
  template = _template(vectors, chat_template)
  prompts = [chat_prompt_ids(model.tokenizer, gsm8k_prompt(p), template) for p in problems]
  outputs: list[Any] = [None] * len(problems)
  for index in _length_batches([len(p) for p in prompts], batch_size):
    seam = {} if one is None else one.generation_kwargs([0] * len(index))
    ids = sampling.generate_ids(model.params, model.cfg, [prompts[i] for i in index],
                                sampling=config, pad_to=PAD_MULTIPLE, **seam)
    for row in _real_rows(index):
      outputs[index[row]] = model.tokenizer.decode(ids[row], skip_special_tokens=True)
  return score_gsm8k(problems, outputs)


# --- helpers -------------------------------------------------------------------


def _check_batch_size(batch_size: int) -> None:
  if batch_size < 1:
    raise ProsvError(f'batch_size={batch_size}; use at least 1')


def _length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
  """Indices in batches of similar length, every batch exactly batch_size rows.

  The last batch is filled by repeating its last row, so every batch has one shape (one
  compile); _real_rows tells which entries count.
  """
  order = np.argsort(np.asarray(lengths), kind='stable')
  batches = []
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    if len(order) > batch_size and len(chunk) < batch_size:
      chunk = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[-1])])
    batches.append(chunk)
  return batches


def _real_rows(index: np.ndarray) -> list[int]:
  """Positions in a batch holding each row once (the filling repeats come last)."""
  seen, keep = set(), []
  for pos, i in enumerate(index):
    if int(i) not in seen:
      seen.add(int(i))
      keep.append(pos)
  return keep


def _right_padded(prompts: list[list[int]], cfg) -> tuple[jax.Array, jax.Array]:
  width = round_up(max(len(p) for p in prompts), PAD_MULTIPLE)
  pad_id = cfg.pad_id if cfg.pad_id is not None else 0
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  for row, p in enumerate(prompts):
    tokens[row, :len(p)] = p
  return jnp.asarray(tokens), jnp.asarray([len(p) for p in prompts], jnp.int32)


def _read_table(path: str, columns: tuple[str, ...], needs: str) -> pd.DataFrame:
  """A .jsonl/.json/.csv/.parquet file as a DataFrame with `columns` present and >= 1 row."""
  if not os.path.isfile(path):
    raise ProsvError(f'no such file: {path}; pass a {_FILE_KINDS} file')
  suffix = os.path.splitext(path)[1].lower()
  try:
    if suffix == '.parquet':
      df = pd.read_parquet(path)
    elif suffix == '.csv':
      # All text: answers like '2' or 'B' and JSON choice lists are parsed here, not by pandas.
      df = pd.read_csv(path, dtype=str, keep_default_na=False)
    elif suffix == '.jsonl':
      df = data._read_jsonl(path)
    elif suffix == '.json':
      df = data._read_json(path)
    else:
      raise ProsvError(f'{path} is not a {_FILE_KINDS} file; save it as one of those')
  except ProsvError:
    raise
  except UnicodeDecodeError:
    raise ProsvError(f'{path} is not UTF-8 text; save it as UTF-8') from None
  except Exception as err:  # pyarrow and the csv parser raise many types for a damaged file
    raise ProsvError(f'cannot read {path}: {one_line(err)}; check the file is valid '
                     f'{suffix[1:]}') from None
  if df.empty:
    raise ProsvError(f'{path} has no rows; each row needs {needs}')
  missing = [c for c in columns if c not in df.columns]
  if missing:
    raise ProsvError(f'{path}: missing column(s) {", ".join(missing)}; each row needs {needs}')
  return df.reset_index(drop=True)


def _text(value, where: str, column: str) -> str:
  if not isinstance(value, str) or not value.strip():
    raise ProsvError(f'{where}: {column} is empty or not text ({_short(value)}); give it text '
                     'or drop the row')
  return value


def _choices(value, where: str) -> tuple[str, ...]:
  fix = 'give a list of at least 2 strings (in CSV a JSON list like ["Paris", "Rome"])'
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except json.JSONDecodeError:
      raise ProsvError(f'{where}: choices {_short(value)} is not a JSON list; {fix}') from None
  if isinstance(value, np.ndarray):  # parquet list columns arrive as arrays
    value = value.tolist()
  if not isinstance(value, (list, tuple)):
    raise ProsvError(f'{where}: choices is {type(value).__name__}, not a list; {fix}')
  choices = []
  for choice in value:
    if isinstance(choice, (bool, np.bool_)) or not isinstance(
        choice, (str, int, float, np.integer, np.floating)):
      raise ProsvError(f'{where}: choice {_short(choice)} is not text; {fix}')
    choices.append(str(choice))
  if len(choices) < 2:
    raise ProsvError(f'{where}: {len(choices)} choice(s); {fix}')
  if len(choices) > len(LETTERS):
    raise ProsvError(f'{where}: {len(choices)} choices, more than the {len(LETTERS)} letters '
                     f'A-Z; give at most {len(LETTERS)} choices')
  return tuple(choices)


def _answer_index(value, count: int, where: str) -> int:
  fix = f'use an index 0..{count - 1} or a letter A-{LETTERS[count - 1]}'
  index = None
  if isinstance(value, (bool, np.bool_)):
    pass
  elif isinstance(value, (int, np.integer)):
    index = int(value)
  elif isinstance(value, (float, np.floating)) and math.isfinite(value) and value.is_integer():
    index = int(value)
  elif isinstance(value, str):
    text = value.strip()
    letter = re.fullmatch(r'\(?([A-Za-z])[.)]?', text)
    if letter:
      index = LETTERS.index(letter.group(1).upper())
    elif re.fullmatch(r'\d+', text):
      index = int(text)
  if index is None:
    raise ProsvError(f'{where}: answer {_short(value)} is neither an index nor a letter; {fix}')
  if not 0 <= index < count:
    raise ProsvError(f'{where}: answer {_short(value)} is out of range for {count} choices; '
                     f'{fix}')
  return index


def _short(value, limit: int = 40) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + '...'
