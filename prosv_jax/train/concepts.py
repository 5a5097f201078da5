"""A training job's concepts: read, validated and tokenized before any compute.

Each concept gets its own seed (its init and data order do not depend on the other concepts
trained beside it); SimPO's losers are the unsteered model's own greedy answers.
"""

import dataclasses
import os

import numpy as np

from prosv_jax import data
from prosv_jax.errors import ProsvError
from prosv_jax.models.load import Model

# The paper truncates SimPO's responses to 128 tokens (METHOD.md section 4); its losers are
# generated, so they need a bound in any case.
SIMPO_MAX_RESPONSE_TOKENS = 128


def response_cut(config) -> int:
  """Tokens kept per response: data.max_response_tokens, or for SimPO 128 when that is 0."""
  cut = int(config.data.max_response_tokens)
  if not cut and config.train.loss == 'simpo':
    return SIMPO_MAX_RESPONSE_TOKENS
  return cut


@dataclasses.dataclass
class Concepts:
  """The tokenized training set: one list of examples per concept, all the same length."""
  ids: list[int]  # AxBench concept ids
  descriptions: list[str]
  examples: list[list[data.Example]]
  losers: list[list[data.Example]] | None = None  # SimPO: neutral response per example

  @property
  def per_concept(self) -> int:
    return len(self.examples[0])


def concept_seed(seed: int, concept_id: int) -> int:
  """A concept's own seed, so its init and data order do not depend on the other concepts."""
  return int(np.random.SeedSequence([seed, concept_id + 1]).generate_state(1)[0])


@dataclasses.dataclass
class ConceptRows:
  """The rows of each concept (read and validated, not tokenized) and its description."""
  ids: list[int]
  rows: list  # one pandas DataFrame per concept, all the same length
  descriptions: list[str]


def read_concepts(config) -> ConceptRows:
  """Reads and validates the concepts named by config.data; needs no model, so a bad file,
  column or id fails before the model loads."""
  dcfg = config.data
  if dcfg.source == 'demo':
    table, meta = data.demo_table()
  else:
    table = data.read_concept_table(dcfg.source, split='train')
    meta = data.read_concept_metadata(dcfg.metadata) if dcfg.metadata else {}
  ids = [int(c) for c in dcfg.concepts]
  if not ids:
    raise ProsvError('data.concepts is empty; name at least one concept id, e.g. '
                     '--config.data.concepts=0,1')
  if int(dcfg.max_examples) < 0:  # iloc[:-5] would silently drop the last 5 rows
    raise ProsvError(f'data.max_examples={dcfg.max_examples}; use 0 (all) or a positive cap')
  rows = data.concept_rows(table, ids)
  picked = [rows[cid].iloc[:dcfg.max_examples] if dcfg.max_examples else rows[cid]
            for cid in ids]
  counts = {cid: len(p) for cid, p in zip(ids, picked)}
  if len(set(counts.values())) > 1:
    raise ProsvError(f'concepts have different example counts {counts}; set '
                     f'data.max_examples={min(counts.values())} or train them in separate runs')
  descriptions = []
  for cid in ids:
    desc = meta.get(cid)
    if desc is None and 'output_concept' in rows[cid].columns:
      desc = str(rows[cid]['output_concept'].iloc[0])
    descriptions.append(desc or f'concept {cid}')
  return ConceptRows(ids, picked, descriptions)


def load_concepts(config, tokenizer, read: ConceptRows | None = None) -> Concepts:
  """Tokenizes the concepts (read_concepts(config) unless `read` is given)."""
  read = read or read_concepts(config)
  dcfg = config.data
  examples = [data.tokenize_rows(tokenizer, picked, k, dcfg.max_prompt_tokens,
                                 response_cut(config), config.chat_template)
              for k, picked in enumerate(read.rows)]
  return Concepts(read.ids, read.descriptions, examples)


def heldout_examples(config, tokenizer) -> list[list[data.Example]] | None:
  """Each concept's held-out positives: AxBench's latent_eval_data rows of the concept with
  category 'positive', tokenized like the training rows (concept index k, not the id).

  None when the source has no eval split (the demo table, a single file, a hub dataset: no
  network for a diagnostic); an empty list for a concept the eval split lacks.
  """
  source = os.path.expanduser(str(config.data.source))
  if source == 'demo' or not os.path.isfile(os.path.join(source, data.SPLIT_FILES['eval'])):
    return None
  table = data.read_concept_table(source, split='eval')
  out = []
  for k, cid in enumerate(int(c) for c in config.data.concepts):
    rows = table[table['concept_id'] == cid]
    if 'category' in rows.columns:
      rows = rows[rows['category'] == 'positive']
    out.append([e for i in range(len(rows)) for e in _tokenize_or_skip(
        tokenizer, rows.iloc[i:i + 1], k, config)])
  return out


def _tokenize_or_skip(tokenizer, row, k, config) -> list[data.Example]:
  # A diagnostic after training must not fail the run: a held-out row whose prompt is over
  # data.max_prompt_tokens is left out instead.
  try:
    return data.tokenize_rows(tokenizer, row, k, config.data.max_prompt_tokens,
                              response_cut(config), config.chat_template)
  except ProsvError:
    return []


def neutral_responses(model: Model, concepts: Concepts, config) -> list[list[data.Example]]:
  """SimPO's y_l: the unsteered model's own greedy answer to each training instruction."""
  from prosv_jax.sampling import SamplingConfig, generate_ids
  sampling = SamplingConfig(max_new_tokens=response_cut(config) or SIMPO_MAX_RESPONSE_TOKENS)
  losers = []
  for per in concepts.examples:
    prompts = [list(map(int, e.prompt)) for e in per]
    new = []
    for start in range(0, len(prompts), 16):
      new += generate_ids(model.params, model.cfg, prompts[start:start + 16], sampling=sampling)
    losers.append([dataclasses.replace(e, response=np.asarray(r or [model.cfg.eos_ids[0]],
                                                              np.int32))
                   for e, r in zip(per, new)])
  return losers
