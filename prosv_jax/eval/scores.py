"""AxBench score arithmetic: per-generation harmonic mean, concept and method aggregates,
factor-grid selection (pick on the first half of the instructions, report the second), and
paired bootstrap intervals of the means and of differences between methods.
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


# The resampling unit of the bootstrap, stated in results next to every interval.
BOOTSTRAP_UNITS = ('concepts with replacement, then instructions with replacement within each '
                   'drawn concept; the samples of an instruction stay together')


def bootstrap_means(units: Sequence[np.ndarray], draws: int = 2000,
                    seed: int = 0) -> np.ndarray:
  """The AxBench mean (per concept, then over concepts) of resampled data, two-stage.

  Each draw picks len(units) concepts with replacement and, independently for every pick,
  that concept's instructions with replacement. Resampling the two upper levels carries the
  variance of the levels below them (the samples of an instruction stay together).

  Args:
    units: per concept, scores [methods, instructions, samples]; rows of the methods axis are
      paired (the same concept x instruction x sample units), so a difference of two rows is
      bootstrapped with the same draws.
    draws: number of resamples.
    seed: numpy seed; the same seed gives the same draws.

  Returns:
    [draws, methods] statistics.
  """
  if not units:
    raise ValueError('no concepts to bootstrap')
  rng = np.random.default_rng(seed)
  n = len(units)
  picks = rng.integers(0, n, size=(draws, n))  # concept slot j of draw d holds picks[d, j]
  total = np.zeros((draws, units[0].shape[0]))
  for c, u in enumerate(units):
    per_instruction = np.asarray(u, np.float64).mean(axis=2)  # [methods, instructions]
    idx = rng.integers(0, per_instruction.shape[1], size=(draws, n, per_instruction.shape[1]))
    means = per_instruction[:, idx].mean(axis=-1)  # [methods, draws, slots]
    total += np.where(picks == c, means, 0.0).sum(axis=-1).T
  return total / n


def percentile_interval(stats: np.ndarray, level: float = 0.95) -> tuple[float, float]:
  """The central `level` percentile interval of bootstrap statistics [draws]."""
  tail = (1 - level) / 2 * 100
  low, high = np.percentile(stats, [tail, 100 - tail])
  return float(low), float(high)


def paired_bootstrap(units: Sequence[np.ndarray], names: Sequence[str],
                     reference: str | None = None, draws: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict:
  """Means with bootstrap intervals, and paired differences against `reference`.

  Args:
    units: per concept, scores [methods, instructions, samples] (see bootstrap_means).
    names: the methods, in the order of the first axis.
    reference: the method the others are compared with (None: no differences).

  Returns:
    name -> {mean, ci: [low, high], and unless it is the reference, diff (mean minus the
    reference's) and diff_ci}. The point estimates are the plain AxBench means.
  """
  units = [np.asarray(u, np.float64) for u in units]
  if any(u.shape[0] != len(names) for u in units):
    raise ValueError(f'units hold {units[0].shape[0]} methods, names {len(names)}')
  point = np.mean([u.mean(axis=(1, 2)) for u in units], axis=0)
  stats = bootstrap_means(units, draws, seed)
  out = {}
  for i, name in enumerate(names):
    out[name] = dict(mean=float(point[i]), ci=list(percentile_interval(stats[:, i], level)))
  if reference is not None:
    r = list(names).index(reference)
    # Differences per unit, then the same statistic (it is linear) with the same draws (same
    # seed): paired, and exact for a constant shift.
    paired = [u - u[r:r + 1] for u in units]
    diff_point = np.mean([d.mean(axis=(1, 2)) for d in paired], axis=0)
    diffs = bootstrap_means(paired, draws, seed)
    for i, name in enumerate(names):
      if i != r:
        out[name]['diff'] = float(diff_point[i])
        out[name]['diff_ci'] = list(percentile_interval(diffs[:, i], level))
  return out


def concept_bootstrap(a: Sequence[float], b: Sequence[float], weight: float = 1.0,
                      draws: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
  """mean(a) - weight * mean(b) over concepts, paired (a[c] and b[c] of one concept c), with a
  percentile interval from resampling the concepts with replacement: for figures measured
  once per concept, such as a utility loss.

  Returns {value, ci: [low, high], concepts}.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or not len(a):
    raise ValueError(f'need two equal non-empty lists, one value per concept; got {a.shape} '
                     f'and {b.shape}')
  unit = a - weight * b
  picks = np.random.default_rng(seed).integers(0, len(unit), size=(draws, len(unit)))
  return dict(value=float(unit.mean()),
              ci=list(percentile_interval(unit[picks].mean(axis=1), level)),
              concepts=len(unit))


def side(ci: Sequence[float]) -> str:
  """Where an interval of a difference lies: 'above 0', 'below 0' or 'spans 0'."""
  low, high = ci
  return 'above 0' if low > 0 else 'below 0' if high < 0 else 'spans 0'
