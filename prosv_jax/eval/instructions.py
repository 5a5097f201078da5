"""Where evaluation instructions come from, and the prompt rewrites of the baselines.

AxBench draws each concept's instructions from AlpacaEval's 805 with
`numpy.random.RandomState(concept_id).choice(805, n, replace=False)`. We apply the same rule
to an AlpacaEval JSON file when the user gives one, else to the dataset's held-out
instructions (never seen in training).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from prosv_jax import data
from prosv_jax.errors import ProsvError

ALPACA_EVAL_SIZE = 805

# Prompting baseline: a concept instruction put before the user's instruction.
PROMPTING_TEMPLATE = ('Whatever the question, your answer must clearly include content about '
                      'this concept: {concept}.\n\n{instruction}')

# Robustness attack: the instruction tells the model to avoid the concept. Several wordings,
# assigned round-robin over instructions so no single phrasing decides the result.
AVOID_TEMPLATES = (
    '{instruction}\n\nDo not mention anything related to {concept} in your answer.',
    'Answer the following without any reference to {concept}.\n\n{instruction}',
    '{instruction}\n\nImportant: stay strictly on topic and avoid {concept} entirely.',
)


def read_alpaca_eval(path: str) -> list[str]:
  """Instructions of an AlpacaEval JSON/JSONL file (a list of objects with 'instruction')."""
  if not os.path.isfile(path):
    raise ProsvError(f'AlpacaEval file {path} not found; pass a JSON list of objects with an '
                     '"instruction" field, or leave instructions.alpaca_eval empty')
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
    rows = (json.loads(text) if text.lstrip().startswith('[')
            else [json.loads(line) for line in text.splitlines() if line.strip()])
  except (ValueError, UnicodeDecodeError) as e:
    raise ProsvError(f'cannot parse AlpacaEval file {path}: {str(e).splitlines()[0]}; '
                     'it must be JSON (a list) or JSON lines') from None
  out = []
  for i, row in enumerate(rows):
    text = row.get('instruction') if isinstance(row, dict) else None
    if not isinstance(text, str) or not text.strip():
      raise ProsvError(f'AlpacaEval file {path} row {i} has no non-empty "instruction" '
                       'string; fix or drop that row')
    out.append(text)
  return out


def held_out_pool(source: str) -> list[str]:
  """Instructions of the dataset that training never saw.

  For the shipped demo set: its held-out list. For AxBench folders: the `input`s of the held-out split (latent_eval_data) that do not occur
  in the training split, in first-seen order. Falls back to the training split's shared
  negatives (concept_id -1), whose instructions no concept's positives use, when the source
  has no held-out split.
  """
  if source == 'demo':
    return list(data.DEMO_EVAL_INSTRUCTIONS)
  train = data.read_concept_table(source, split='train')
  seen = set(train['input'])
  try:
    held = data.read_concept_table(source, split='eval')
  except ProsvError:
    held = None
  pool = [] if held is None else [x for x in pd.unique(held['input']) if x not in seen]
  if not pool:  # a single-file source reads the same table for both splits
    pool = list(pd.unique(train[train['concept_id'] == -1]['input']))
  if not pool:
    raise ProsvError(f'{source} has no instructions that training did not use; pass an '
                     'AlpacaEval file with instructions.alpaca_eval=PATH')
  return pool


def axbench_draw(pool: list[str], concept_id: int, count: int) -> list[str]:
  """AxBench's rule: RandomState(concept_id).choice(len(pool), count, replace=False)."""
  if count > len(pool):
    raise ProsvError(f'asked for {count} instructions per concept but only {len(pool)} are '
                     'available; lower instructions.count')
  idx = np.random.RandomState(int(concept_id)).choice(len(pool), count, replace=False)
  return [pool[i] for i in idx]


def prompting(instruction: str, concept: str) -> str:
  return PROMPTING_TEMPLATE.format(concept=concept, instruction=instruction)


def avoid(instruction: str, concept: str, index: int) -> str:
  """The `index`-th instruction rewritten to tell the model to avoid the concept."""
  template = AVOID_TEMPLATES[index % len(AVOID_TEMPLATES)]
  return template.format(concept=concept, instruction=instruction)
