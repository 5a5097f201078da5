"""AxBench score arithmetic: per-generation harmonic mean, concept and method aggregates,
and factor-grid selection (pick on the first half of the instructions, report the second).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from prosv_jax.eval.judge import ASPECTS, Ratings


def summarize(ratings: Sequence[Ratings]) -> dict:
  """Means of the three ratings and of the per-generation harmonic mean."""
  if not ratings:
    raise ValueError('no ratings to summarize')
  out = {a: float(np.mean([getattr(r, a) for r in ratings])) for a in ASPECTS}
  out['harmonic'] = float(np.mean([r.harmonic for r in ratings]))
  out['count'] = len(ratings)
  return out


def over_concepts(per_concept: dict) -> dict:
  """Averages concept summaries (each weighted once, as AxBench does) with their spread.

  Args:
    per_concept: concept id -> summarize() output.

  Returns:
    For each of concept/instruction/fluency/harmonic: mean and std over concepts (population
    std: the spread of these concepts, not an error bar), plus the concept count.
  """
  if not per_concept:
    raise ValueError('no concepts to average')
  out = {}
  for key in (*ASPECTS, 'harmonic'):
    values = np.array([s[key] for s in per_concept.values()], np.float64)
    out[key] = float(values.mean())
    out[key + '_std'] = float(values.std())
  out['concepts'] = len(per_concept)
  return out


def split_halves(count: int) -> tuple[list[int], list[int]]:
  """Instruction indices used to select a factor (first half) and to report (second half).

  With AxBench's 10 instructions these are 0-4 and 5-9.
  """
  if count < 2:
    raise ValueError(f'factor selection needs at least 2 instructions, got {count}')
  half = count // 2
  return list(range(half)), list(range(half, count))


def select_factor(scores: dict, tie_break: str = 'smaller') -> float:
  """The grid factor with the best selection score.

  Args:
    scores: factor -> mean harmonic score on the selection instructions.
    tie_break: 'smaller' picks the smaller factor among equal scores (the gentler edit).
  """
  if not scores:
    raise ValueError('empty factor grid')
  best = max(scores.values())
  tied = sorted(f for f, s in scores.items() if s == best)
  return tied[0] if tie_break == 'smaller' else tied[-1]


def mean_harmonic(ratings: Iterable[Ratings]) -> float:
  ratings = list(ratings)
  return float(np.mean([r.harmonic for r in ratings])) if ratings else 0.0
