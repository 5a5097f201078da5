"""Concept data in AxBench's format: tables, per-concept positives, token ids and padded batches.

A concept table has one row per (instruction, response) pair: `input` is the instruction,
`output` the response, `concept_id` the concept it shows (-1 for shared negatives). AxBench
adds output_concept, concept_genre, category ('positive', 'negative', 'hard negative') and
dataset_category; they are kept when present, and only `category` changes what is selected.

Training examples for concept c are its positive rows: the instruction through the chat
template (with the generation prompt), then the response tokens, with no EOS appended.

A batch is either right-padded (pad_batch: one example per row) or packed (pack_batch: several
examples per row, each attending only to itself, so the compute goes to real tokens).
"""

import collections
import dataclasses
import importlib.resources
import json
import math
import os

import numpy as np
import pandas as pd

from prosv_jax.chat import chat_prompt_ids
from prosv_jax.errors import ProsvError, one_line
from prosv_jax.padding import round_up

REQUIRED_COLUMNS = ('input', 'output', 'concept_id')
SPLIT_FILES = {'train': 'train_data.parquet', 'eval': 'latent_eval_data.parquet'}
_SOURCES = ('a .parquet/.jsonl/.json file, a folder holding train_data.parquet, '
            'or hub:<dataset_name>')

# Instructions held out of the demo table, for showing steered generations.
DEMO_EVAL_INSTRUCTIONS = (
    'How do I make new friends after moving to a new city?',
    'What are some simple ways to eat healthier?',
    'How do I write a cover letter?',
    'Can you explain how a bank account works?',
    'What should I pack for a weekend trip?',
    'How do I start learning to code?',
    'Why is sleep important for health?',
    'How do I take care of a houseplant?',
    'What is the difference between weather and climate?',
    'How do I plan a simple weekly workout?',
    'Write a short message to cheer up a friend.',
    'What are good ways to learn a new skill quickly?',
)


# --- tables ------------------------------------------------------------------


def read_concept_table(source: str, split: str = 'train') -> pd.DataFrame:
  """Reads and validates a concept table.

  Args:
    source: a .parquet, .jsonl or .json file (`split` is ignored); a folder holding AxBench's
      train_data.parquet (split 'train') or latent_eval_data.parquet (split 'eval'); or
      'hub:<dataset_name>', loaded with datasets.load_dataset(name, split=split).
    split: which split of a folder or hub dataset.

  Returns:
    The table with the rows in file order, index 0..N-1, and an int64 concept_id column.

  Raises:
    ProsvError: the source is missing or unreadable, a required column is missing, or a
      concept_id is not an integer.
  """
  source = os.fspath(source)
  if source.startswith('hub:'):
    df = _read_hub(source[len('hub:'):], split)
  else:
    df = _read_local(source, split)
  return validate_table(df, source)


def validate_table(df: pd.DataFrame, source: str = 'concept table') -> pd.DataFrame:
  """Checks the required columns and integer concept ids; returns a copy with int64 ids."""
  missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
  if missing:
    raise ProsvError(f'{source}: missing column(s) {", ".join(missing)}; a concept table needs '
                     f'{", ".join(REQUIRED_COLUMNS)} (AxBench format)')
  if df.empty:
    raise ProsvError(f'{source}: the table has no rows')
  ids = df['concept_id']
  if pd.api.types.is_integer_dtype(ids) and not pd.api.types.is_bool_dtype(ids):
    good = np.ones(len(ids), bool)
  else:
    good = np.array([_is_integer(v) for v in ids], bool)
  if not good.all():
    first = int(np.argmin(good))
    raise ProsvError(f'{source}: concept_id must be an integer in every row; {int((~good).sum())} '
                     f'row(s) are not, first row {df.index[first]} with {ids.iloc[first]!r}')
  df = df.copy()
  df['concept_id'] = ids.astype(np.int64)
  return df


def read_concept_metadata(path: str) -> dict[int, str]:
  """AxBench metadata.jsonl -> {concept_id: concept description}, in file order.

  Each non-blank line is an object with an integer "concept_id" and a non-empty "concept";
  other keys are ignored.
  """
  path = os.fspath(path)
  try:
    with open(path, encoding='utf-8') as f:
      lines = f.readlines()
  except (OSError, UnicodeDecodeError) as err:
    raise ProsvError(f'cannot read concept metadata {path}: {one_line(err)}') from None
  shape = 'each line must be an object like {"concept_id": 0, "concept": "..."}'
  out = {}
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as err:
      raise ProsvError(f'{path} line {n}: not valid JSON ({err.msg}); {shape}') from None
    if not isinstance(record, dict) or 'concept_id' not in record or 'concept' not in record:
      raise ProsvError(f'{path} line {n}: no "concept_id" and "concept"; {shape}')
    cid, concept = record['concept_id'], record['concept']
    if not _is_integer(cid):
      raise ProsvError(f'{path} line {n}: concept_id {cid!r} is not an integer')
    if not isinstance(concept, str) or not concept.strip():
      raise ProsvError(f'{path} line {n}: concept must be a non-empty string, got {concept!r}')
    if int(cid) in out:
      raise ProsvError(f'{path} line {n}: concept_id {int(cid)} appears twice')
    out[int(cid)] = concept
  if not out:
    raise ProsvError(f'{path} holds no concepts; {shape}')
  return out


def concept_rows(df: pd.DataFrame, concept_ids: list[int]) -> dict[int, pd.DataFrame]:
  """The positive rows of each requested concept, keyed by concept id in request order.

  Positives are rows with concept_id == c and, when the table has a `category` column,
  category == 'positive' (AxBench's eval data keeps a concept's negatives under its id).
  Every check runs here, before any tokenizing or compute.

  Raises:
    ProsvError: an id is repeated, negative or absent from the table (the message lists the
      available ids), a concept has no positive rows, or some of its rows have an empty,
      missing or non-text `input` or `output`.
  """
  ids = df['concept_id'].to_numpy()
  available = sorted(int(c) for c in np.unique(ids) if c >= 0)
  for c in concept_ids:
    if not _is_integer(c) or c < 0:
      raise ProsvError(f'concept id {c!r} is not a concept (ids are integers >= 0; -1 marks '
                       f'shared negatives); available ids: {_abbreviate(available)}')
    if int(c) not in available:
      raise ProsvError(f'concept id {c} is not in the table; '
                       f'available ids: {_abbreviate(available)}')
  repeated = sorted(int(c) for c, n in collections.Counter(concept_ids).items() if n > 1)
  if repeated:
    raise ProsvError(f'concept ids listed more than once: {repeated}; list each concept once')

  out = {}
  for c in concept_ids:
    rows = df[ids == c]
    if 'category' in df.columns:
      rows = rows[rows['category'] == 'positive']
    if rows.empty:
      raise ProsvError(f'concept {c} has no positive rows (its {int((ids == c).sum())} rows all '
                       'have a category other than "positive"); pick another concept or fix the '
                       'data')
    for column, what in (('input', 'instruction'), ('output', 'response')):
      blank = rows[column].map(lambda v: not isinstance(v, str) or not v.strip()).to_numpy(bool)
      if blank.any():
        raise ProsvError(f'concept {c}: {int(blank.sum())} of its {len(rows)} positive rows have '
                         f'an empty or missing {column} ({what}), first row '
                         f'{rows.index[blank][0]}; fix or drop those rows')
    out[int(c)] = rows
  return out


def demo_table() -> tuple[pd.DataFrame, dict[int, str]]:
  """The shipped demo concepts in AxBench format (3 concepts x 40 positives + shared negatives)
  and their descriptions {concept_id: description}."""
  folder = importlib.resources.files('prosv_jax') / 'demo_data'
  with importlib.resources.as_file(folder / 'demo_concepts.jsonl') as path:
    df = read_concept_table(str(path))
  with importlib.resources.as_file(folder / 'metadata.jsonl') as path:
    metadata = read_concept_metadata(str(path))
  return df, metadata


# --- tokens ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
  """One training example; eq=False because fields are arrays."""
  prompt: np.ndarray  # int32 ids of the chat-templated instruction, generation prompt included
  response: np.ndarray  # int32 ids of the response (whole, or cut to max_response_tokens), no EOS
  concept: int  # index of the concept in the training run (0..K-1), not the AxBench id
  instruction: str

  @property
  def length(self) -> int:
    return len(self.prompt) + len(self.response)


def tokenize_rows(tokenizer, rows: pd.DataFrame, concept: int, max_prompt_tokens: int = 512,
                  max_response_tokens: int = 0, chat_template: str = '') -> list[Example]:
  """Token ids for each row of one concept (rows as concept_rows returns them).

  max_response_tokens: 0 keeps whole responses (the paper's lang loss trains on all of them);
  a positive value cuts each response to that many tokens.
  chat_template: '' = the tokenizer's own, a name from chat.TEMPLATES, or Jinja text.

  Raises:
    ProsvError: a templated prompt is longer than max_prompt_tokens (it is never cut: the
      end of the prompt is where PrOSV steers), or a response has no tokens.
  """
  if max_prompt_tokens < 1 or max_response_tokens < 0:
    raise ProsvError(f'max_prompt_tokens ({max_prompt_tokens}) must be at least 1 and '
                     f'max_response_tokens ({max_response_tokens}) at least 0 (0 = whole)')
  examples = []
  for label, instruction, output in zip(rows.index, rows['input'], rows['output']):
    prompt = chat_prompt_ids(tokenizer, instruction, chat_template)
    if len(prompt) > max_prompt_tokens:
      raise ProsvError(f'row {label} (concept {concept}): the templated prompt is {len(prompt)} '
                       f'tokens, over max_prompt_tokens={max_prompt_tokens}; raise '
                       f'data.max_prompt_tokens in the config or drop the row '
                       f'({instruction[:60]!r})')
    response = tokenizer.encode(output, add_special_tokens=False)
    if max_response_tokens:
      response = response[:max_response_tokens]
    if not response:
      raise ProsvError(f'row {label} (concept {concept}): the response encodes to no tokens')
    examples.append(Example(np.asarray(prompt, np.int32), np.asarray(response, np.int32),
                            int(concept), instruction))
  return examples


def example_lengths(examples: list[Example]) -> np.ndarray:
  """Prompt + response tokens of each example, as int64 [N] (what epoch_order takes)."""
  return np.array([e.length for e in examples], np.int64)


# --- batches -----------------------------------------------------------------

# Rows are sorted by length within windows of at most this many batches, and never more than
# half the epoch's batches: a window as large as the whole set would make the sort undo the
# shuffle, so every epoch would cut the same batches (e.g. 72 rows at batch 12 is 6 batches).
_BUCKET_WINDOW_BATCHES = 8


def bucket_window(num_rows: int, batch_size: int) -> int:
  """Rows per sorting window: a multiple of batch_size, at most half the epoch's batches."""
  batches = -(-num_rows // batch_size)
  return batch_size * max(1, min(_BUCKET_WINDOW_BATCHES, batches // 2))


def epoch_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                bucket: bool = True) -> list[np.ndarray]:
  """Index batches that cover every example exactly once in this epoch.

  There are always ceil(N / batch_size) batches; all have batch_size rows except possibly one
  smaller (kept, not dropped). The order depends only on (seed, epoch) and changes with epoch.
  With bucket=True the shuffled rows are sorted by length within windows of bucket_window()
  rows before cutting, so a batch holds similar lengths and pads less; since every window
  covers at most half the rows, which rows meet in a window (hence in a batch) changes with
  each epoch's shuffle. The batch order is then shuffled so lengths do not trend through the
  epoch. With fewer than 4 batches the windows are single batches: no padding is saved.
  """
  lengths = np.asarray(lengths)
  if lengths.ndim != 1:
    raise ProsvError(f'lengths must be 1-D, got shape {lengths.shape}')
  if batch_size < 1:
    raise ProsvError(f'batch_size must be at least 1, got {batch_size}')
  if seed < 0 or epoch < 0:
    raise ProsvError(f'seed ({seed}) and epoch ({epoch}) must be >= 0')
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(len(lengths))
  if bucket:
    window = bucket_window(len(order), batch_size)  # a multiple of batch_size: no batch spans two
    for start in range(0, len(order), window):
      chunk = order[start:start + window]
      order[start:start + window] = chunk[np.argsort(lengths[chunk], kind='stable')]
  batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
  if bucket:
    batches = [batches[i] for i in rng.permutation(len(batches))]
  return batches


def pad_batch(examples: list[Example], pad_id: int, multiple: int = 16,
              width: int | None = None) -> dict[str, np.ndarray]:
  """Right-padded arrays for one batch; width is the longest row rounded up to `multiple`
  (so only a few distinct shapes get compiled), or `width` when given (a planned shape; at
  least the longest row).

  Returns:
    tokens int32 [B, W]: prompt, then response, then pad_id; prompt_len int32 [B];
    length int32 [B] (prompt + response); concept int32 [B].
  """
  if not examples:
    raise ProsvError('pad_batch got no examples')
  if multiple < 1:
    raise ProsvError(f'multiple must be at least 1, got {multiple}')
  lengths = example_lengths(examples)
  if width is None:
    width = round_up(int(lengths.max()), multiple)
  elif width < int(lengths.max()):
    raise ProsvError(f'pad_batch width {width} is narrower than the longest row '
                     f'({int(lengths.max())} tokens)')
  tokens = np.full((len(examples), width), pad_id, np.int32)
  for row, ex in enumerate(examples):
    tokens[row, :len(ex.prompt)] = ex.prompt
    tokens[row, len(ex.prompt):ex.length] = ex.response
  return {
      'tokens': tokens,
      'prompt_len': np.array([len(e.prompt) for e in examples], np.int32),
      'length': lengths.astype(np.int32),
      'concept': np.array([e.concept for e in examples], np.int32),
  }


# --- packed batches ------------------------------------------------------------
#
# Packing puts several examples into one row, so a step spends no compute on padding: each
# example keeps its own tokens, rope positions (index within the example) and causal attention
# (only its own earlier tokens), so its log-probs are those of the unpacked row up to fp32
# rounding. The per-example arrays the losses use (prompt_len, length, concept) stay [B]; the
# token arrays become [R, W] packed rows, with where each example sits (seg_row, seg_start)
# and, per token, its example (segment, -1 on padding) and index within it (rel).

# Rows this many mean examples wide: first-fit decreasing then fills them to within a few
# percent (AxBench Concept10, 8 concepts x 12 rows a step: 1.05 slots per real token at
# 640 wide), while dense attention costs more per slot the wider a row is.
PACK_MEAN_EXAMPLES = 4


def pack_width(lengths, multiple: int = 16) -> int:
  """Packed row width: PACK_MEAN_EXAMPLES mean examples, at least the longest, rounded up to
  `multiple`. lengths: the example lengths [N] of the whole run (one width, few shapes)."""
  lengths = np.asarray(lengths)
  if lengths.size == 0:
    raise ProsvError('pack_width got no examples')
  return round_up(max(int(lengths.max()), math.ceil(PACK_MEAN_EXAMPLES * lengths.mean())),
                  multiple)


def first_fit_decreasing(lengths, width: int) -> tuple[np.ndarray, np.ndarray]:
  """Places items of `lengths` [N] in rows of `width`: longest first (ties in index order, so
  the layout is a pure function of the lengths), each into the first row it fits.

  Returns row [N] and start [N] (int32): item i fills row[i], slots start[i] .. + length - 1.
  Rows are numbered in the order they were opened.
  """
  lengths = np.asarray(lengths, np.int64)
  if lengths.size and (lengths.max() > width or lengths.min() < 1):
    raise ProsvError(f'cannot pack lengths {lengths.min()}..{lengths.max()} into rows of '
                     f'{width}; every length must be 1..width (raise the width)')
  row = np.zeros(len(lengths), np.int32)
  start = np.zeros(len(lengths), np.int32)
  free = np.zeros(len(lengths), np.int64)  # free slots of each open row
  used = 0
  for i in np.argsort(-lengths, kind='stable'):
    fits = np.flatnonzero(free[:used] >= lengths[i])
    r = int(fits[0]) if fits.size else used
    if not fits.size:
      free[r], used = width, used + 1
    row[i], start[i] = r, width - free[r]
    free[r] -= lengths[i]
  return row, start


def pack_batch(examples: list[Example], pad_id: int, width: int, row_multiple: int = 1,
               head_multiple: int = 0) -> dict[str, np.ndarray]:
  """One batch of `examples` packed into rows of `width` (first_fit_decreasing).

  row_multiple: the row count is rounded up to it (e.g. the mesh's 'data' size, so rows
  split evenly over devices). head_multiple: the head-slot count is rounded up to it
  (0 = width: at most one row's worth of head slots is padding, so few shapes compile).

  Returns (B examples, R rows, H head slots):
    tokens int32 [R, W]: examples side by side, then pad_id;
    segment int32 [R, W]: the example (0..B-1) each token belongs to, -1 on padding;
    rel int32 [R, W]: each token's index within its example (its rope position), 0 on padding;
    prompt_len, length, concept, seg_row, seg_start int32 [B]: per example, with the row and
      first slot where it sits;
    head_src int32 [H]: flat index (row * W + slot) of every position that predicts a
      response token (the only places the LM head runs), 0 on padding;
    head_example int32 [H]: the example of each, B on padding (dropped from per-example sums).
  """
  if not examples:
    raise ProsvError('pack_batch got no examples')
  row, start = first_fit_decreasing(example_lengths(examples), width)
  return packed_arrays(examples, row, start, pad_id, width, row_multiple=row_multiple,
                       head_multiple=head_multiple)


def packed_arrays(examples: list[Example], row, start, pad_id: int, width: int, *,
                  num_rows: int = 0, num_examples: int = 0, num_head: int = 0,
                  row_multiple: int = 1, head_multiple: int = 0) -> dict[str, np.ndarray]:
  """pack_batch's arrays for a given layout (row [B], start [B]), at least num_rows rows,
  num_examples examples (the extra ones are empty: length 0, concept -1, no tokens, no
  head slots) and num_head head slots, so batches of one size can share one shape."""
  if any(len(e.prompt) == 0 for e in examples):
    raise ProsvError('an example has no prompt tokens; its first response token would have '
                     'nothing to be predicted from (keep the chat template on)')
  lengths = example_lengths(examples)
  rows = round_up(max(num_rows, int(np.max(row, initial=-1)) + 1, 1), row_multiple)
  b = max(num_examples, len(examples))
  tokens = np.full((rows, width), pad_id, np.int32)
  segment = np.full((rows, width), -1, np.int32)
  rel = np.zeros((rows, width), np.int32)
  head_src, head_example = [], []
  for i, (ex, r, s) in enumerate(zip(examples, row, start)):
    end = s + ex.length
    tokens[r, s:s + len(ex.prompt)] = ex.prompt
    tokens[r, s + len(ex.prompt):end] = ex.response
    segment[r, s:end] = i
    rel[r, s:end] = np.arange(ex.length)
    # Slot p predicts token p + 1: the response tokens are predicted from prompt_len - 1 on.
    head_src.append(r * width + np.arange(s + len(ex.prompt) - 1, end - 1))
    head_example.append(np.full(len(ex.response), i))
  head_src = np.concatenate(head_src) if head_src else np.zeros(0, np.int64)
  head = round_up(max(num_head, len(head_src), 1), np.lcm(head_multiple or width, row_multiple))
  pad = head - len(head_src)
  fill = lambda values, extra: np.concatenate([np.asarray(values), np.full(b - len(examples),
                                                                           extra)])
  return {
      'tokens': tokens, 'segment': segment, 'rel': rel,
      'prompt_len': fill([len(e.prompt) for e in examples], 0).astype(np.int32),
      'length': fill(lengths, 0).astype(np.int32),
      'concept': fill([e.concept for e in examples], -1).astype(np.int32),
      'seg_row': fill(row, 0).astype(np.int32),
      'seg_start': fill(start, 0).astype(np.int32),
      'head_src': np.concatenate([head_src, np.zeros(pad, np.int64)]).astype(np.int32),
      'head_example': np.concatenate([np.concatenate(head_example) if head_example else
                                      np.zeros(0, np.int64), np.full(pad, b)]).astype(np.int32),
  }


def pack_batches(examples: list[Example], pad_id: int, width: int, rows_per_batch: int,
                 row_multiple: int = 1) -> list[tuple[dict, np.ndarray]]:
  """All of `examples` packed into rows of `width` together, cut into batches of
  rows_per_batch rows, every batch of the same shapes (one compile): (arrays, indices into
  `examples` of the batch's examples, in the arrays' order). For passes over a whole set
  (evaluation, the block-L bank) where which examples meet in a batch does not matter."""
  if rows_per_batch < 1:
    raise ProsvError(f'rows_per_batch must be at least 1, got {rows_per_batch}')
  if not examples:
    return []
  row, start = first_fit_decreasing(example_lengths(examples), width)
  rows = int(row.max()) + 1
  per = -(-rows // -(-rows // rows_per_batch))  # even batches: the last is not mostly pad
  groups = [np.flatnonzero(row // per == g) for g in range(-(-rows // per))]
  num_examples = max(len(g) for g in groups)
  num_head = max(sum(len(examples[i].response) for i in g) for g in groups)
  return [(packed_arrays([examples[i] for i in g], row[g] - g_index * per, start[g], pad_id,
                         width, num_rows=per, num_examples=num_examples, num_head=num_head,
                         row_multiple=row_multiple), g) for g_index, g in enumerate(groups)]


def is_packed(batch: dict) -> bool:
  """Whether a batch is packed rows (pack_batch) or one right-padded row per example."""
  return 'segment' in batch


def slots_per_token(batch: dict) -> float:
  """Token slots of a batch (packed or padded) per real token: 1.0 means no padding."""
  real = int(np.sum(np.asarray(batch['length'])))
  return np.asarray(batch['tokens']).size / max(real, 1)


def batch_padding_fraction(batches: list[np.ndarray], examples, multiple: int = 16) -> float:
  """Share of token slots that are padding when `batches` are padded as pad_batch pads them.

  examples: the Examples the batches index, or their lengths as an int array.
  """
  lengths = np.asarray(examples) if isinstance(examples, np.ndarray) else example_lengths(examples)
  slots = pad = 0
  for batch in batches:
    if len(batch) == 0:
      continue
    rows = lengths[batch]
    width = round_up(int(rows.max()), multiple)
    slots += width * len(rows)
    pad += width * len(rows) - int(rows.sum())
  return pad / slots if slots else 0.0


# --- helpers -----------------------------------------------------------------


def _read_local(source: str, split: str) -> pd.DataFrame:
  path = os.path.expanduser(source)
  if os.path.isdir(path):
    if split not in SPLIT_FILES:
      raise ProsvError(f'unknown split {split!r} for folder {source}; '
                       f'use one of {sorted(SPLIT_FILES)}')
    path = os.path.join(path, SPLIT_FILES[split])
    if not os.path.isfile(path):
      raise ProsvError(f'folder {source} has no {SPLIT_FILES[split]} (split {split!r}); '
                       f'pass {_SOURCES}')
  elif not os.path.isfile(path):
    raise ProsvError(f'no such concept data: {source}; pass {_SOURCES}')
  suffix = os.path.splitext(path)[1].lower()
  if suffix == '.parquet':
    try:
      return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
      raise ProsvError(f'cannot read {path} as parquet: {one_line(err)}') from None
  try:
    if suffix == '.jsonl':
      return _read_jsonl(path)
    if suffix == '.json':
      return _read_json(path)
  except UnicodeDecodeError:
    raise ProsvError(f'{path} is not UTF-8 text; save it as UTF-8 JSON') from None
  raise ProsvError(f'concept data {source} is not .parquet, .jsonl or .json; pass {_SOURCES}')


def _read_jsonl(path: str) -> pd.DataFrame:
  # Parsed with json, not pandas, so text that looks numeric stays text and errors name a line.
  records = []
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as err:
        raise ProsvError(f'{path} line {n}: not valid JSON ({err.msg}); each line must be one '
                         'row object') from None
      if not isinstance(record, dict):
        raise ProsvError(f'{path} line {n}: expected a row object, got {type(record).__name__}')
      records.append(record)
  return pd.DataFrame.from_records(records)


def _read_json(path: str) -> pd.DataFrame:
  with open(path, encoding='utf-8') as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as err:
      raise ProsvError(f'{path}: not valid JSON ({err.msg} at line {err.lineno}); use a list of '
                       'row objects, or .jsonl with one row per line') from None
  if isinstance(data, list) and all(isinstance(r, dict) for r in data):
    return pd.DataFrame.from_records(data)
  if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
    try:
      return pd.DataFrame(data)
    except ValueError as err:
      raise ProsvError(f'{path}: columns do not line up ({one_line(err)})') from None
  raise ProsvError(f'{path}: expected a list of row objects or an object of column lists')


def _read_hub(name: str, split: str) -> pd.DataFrame:
  import datasets  # slow to import; only the hub path needs it
  if not name:
    raise ProsvError('hub: needs a dataset name, e.g. hub:pyvene/axbench-concept16k')
  try:
    dataset = datasets.load_dataset(name, split=split)
  except Exception as err:  # offline, unknown name, bad split: datasets raises many types
    raise ProsvError(f'cannot load {name!r} (split {split!r}) from the Hugging Face Hub: '
                     f'{one_line(err)}; without network access, pass a local .parquet/.jsonl '
                     'file or a folder holding train_data.parquet') from None
  return dataset.to_pandas()


def _is_integer(value) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return False
  if isinstance(value, (int, np.integer)):
    return True
  return (isinstance(value, (float, np.floating)) and math.isfinite(value)
          and float(value).is_integer())


def _abbreviate(ids: list[int], limit: int = 12) -> str:
  if not ids:
    return 'none'
  if len(ids) <= limit:
    return ', '.join(map(str, ids))
  return f'{", ".join(map(str, ids[:limit]))}, ... ({len(ids)} in all, up to {ids[-1]})'


