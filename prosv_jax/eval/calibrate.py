"""Calibrates the offline judge's thresholds on labelled AxBench data, and reports how well
each rating separates its classes on concepts the calibration never saw.

Labelled pairs, all from AxBench's held-out split (latent_eval_data.parquet):
- concept: a concept's positive outputs (label 1) vs its negative and hard-negative outputs
  (label 0), each against that concept's description;
- instruction: each output with its own instruction (1) vs with another row's instruction (0);
- fluency: the real outputs (1) vs corrupted copies (0): words shuffled, a short phrase looped,
  or words drawn at random from other outputs (the ways over-steered text breaks).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pandas as pd

from prosv_jax import data
from prosv_jax.eval.offline_judge import (Calibration, Threshold, fluency_features,
                                          fluency_score)

BAND_QUANTILE = 0.1  # ~10% of positives fall below the band, ~10% of negatives above it
REPEAT_WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


@dataclasses.dataclass
class Pairs:
  """Labelled examples of one aspect: texts to score and their label (1 good, 0 bad)."""
  response: list[str]
  reference: list[str]  # concept description or instruction ('' for fluency)
  label: np.ndarray
  concept_id: np.ndarray


def _table(source: str) -> tuple[pd.DataFrame, dict[int, str]]:
  table = data.read_concept_table(source, split='eval')
  meta_path = os.path.join(source, 'metadata.jsonl')
  meta = data.read_concept_metadata(meta_path) if os.path.isfile(meta_path) else {}
  if not meta:
    meta = dict(zip(table['concept_id'], table['output_concept']))
  return table, meta


def concept_pairs(source: str, per_class: int = 0, seed: int = 0) -> Pairs:
  table, meta = _table(source)
  rng = np.random.default_rng(seed)
  out = Pairs([], [], [], [])
  for cid, rows in table.groupby('concept_id', sort=True):
    if int(cid) < 0:
      continue
    for label, cats in ((1, ('positive',)), (0, ('negative', 'hard negative'))):
      texts = list(rows[rows['category'].isin(cats)]['output'])
      if per_class and len(texts) > per_class:
        texts = [texts[i] for i in sorted(rng.choice(len(texts), per_class, replace=False))]
      out.response += texts
      out.reference += [meta[int(cid)]] * len(texts)
      out.label += [label] * len(texts)
      out.concept_id += [int(cid)] * len(texts)
  return _arrays(out)


def instruction_pairs(source: str, per_class: int = 0, seed: int = 0) -> Pairs:
  table, _ = _table(source)
  rng = np.random.default_rng(seed)
  out = Pairs([], [], [], [])
  for cid, rows in table.groupby('concept_id', sort=True):
    rows = rows.reset_index(drop=True)
    if per_class and len(rows) > per_class:
      rows = rows.iloc[sorted(rng.choice(len(rows), per_class, replace=False))]
    inputs, outputs = list(rows['input']), list(rows['output'])
    # A derangement: every output gets some other row's instruction.
    shift = rng.integers(1, len(inputs)) if len(inputs) > 1 else 0
    wrong = [inputs[(i + shift) % len(inputs)] for i in range(len(inputs))]
    out.response += outputs + outputs
    out.reference += inputs + wrong
    out.label += [1] * len(outputs) + [0] * len(outputs)
    out.concept_id += [int(cid)] * (2 * len(outputs))
  return _arrays(out)


def corrupt(text: str, kind: str, rng: np.random.Generator, vocabulary: list[str]) -> str:
  words = text.split()
  if len(words) < 4:
    words = words * 4
  if kind == 'shuffle':
    return ' '.join(rng.permutation(words))
  if kind == 'loop':
    k = int(rng.integers(2, 7))
    start = int(rng.integers(0, max(1, len(words) - k)))
    phrase = words[start:start + k]
    return ' '.join((phrase * (len(words) // k + 1))[:len(words)])
  if kind == 'salad':
    return ' '.join(rng.choice(vocabulary, len(words)))
  raise ValueError(f'unknown corruption {kind!r}')


CORRUPTIONS = ('shuffle', 'loop', 'salad')


def fluency_pairs(source: str, per_concept: int = 12, seed: int = 0) -> Pairs:
  table, _ = _table(source)
  rng = np.random.default_rng(seed)
  vocabulary = ' '.join(table['output']).split()
  out = Pairs([], [], [], [])
  for cid, rows in table.groupby('concept_id', sort=True):
    texts = list(rows['output'])
    if per_concept and len(texts) > per_concept:
      texts = [texts[i] for i in sorted(rng.choice(len(texts), per_concept, replace=False))]
    bad = [corrupt(t, CORRUPTIONS[i % len(CORRUPTIONS)], rng, vocabulary)
           for i, t in enumerate(texts)]
    out.response += texts + bad
    out.reference += [''] * (2 * len(texts))
    out.label += [1] * len(texts) + [0] * len(texts)
    out.concept_id += [int(cid)] * (2 * len(texts))
  return _arrays(out)


def _arrays(p: Pairs) -> Pairs:
  return Pairs(p.response, p.reference, np.asarray(p.label, np.int32),
               np.asarray(p.concept_id, np.int64))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Probability that a random positive outscores a random negative (ties count half)."""
  scores = np.asarray(scores, np.float64)
  pos, neg = scores[labels == 1], scores[labels == 0]
  if not len(pos) or not len(neg):
    raise ValueError('AUROC needs both classes')
  ranks = pd.Series(np.concatenate([pos, neg])).rank(method='average').to_numpy()
  return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def fit_threshold(scores: np.ndarray, labels: np.ndarray,
                  band: float = BAND_QUANTILE) -> Threshold:
  """The balanced-accuracy-optimal threshold, widened to a band for the middle rating."""
  s = np.asarray(scores, np.float64)
  finite = np.isfinite(s)
  s, labels = s[finite], labels[finite]
  pos, neg = s[labels == 1], s[labels == 0]
  cands = np.unique(s)
  # Midpoints between consecutive distinct scores, so the threshold sits between examples.
  cands = np.concatenate([cands[:1], (cands[1:] + cands[:-1]) / 2, cands[-1:] + 1e-9])
  tpr = (pos[None, :] >= cands[:, None]).mean(1)
  tnr = (neg[None, :] < cands[:, None]).mean(1)
  mid = float(cands[np.argmax(tpr + tnr)])
  # The middle rating covers the scores between the band-quantile of positives and the
  # (1 - band)-quantile of negatives: their overlap when the classes overlap, the gap
  # between them when they separate (so a borderline response still gets a 1).
  q_pos, q_neg = float(np.quantile(pos, band)), float(np.quantile(neg, 1 - band))
  low, high = min(q_pos, q_neg, mid), max(q_pos, q_neg, mid)
  return Threshold(low=low, mid=mid, high=high)


def separation(scores: np.ndarray, labels: np.ndarray, threshold: Threshold) -> dict:
  """AUROC, accuracy at `mid`, and how the 0/1/2 ratings fall on each class."""
  s = np.asarray(scores, np.float64)
  s = np.where(np.isfinite(s), s, -1e30)
  rating = threshold.rate(s)
  pred = s >= threshold.mid
  out = dict(auroc=auroc(s, labels), accuracy=float((pred == (labels == 1)).mean()),
             count=int(len(s)))
  for name, cls in (('positive', 1), ('negative', 0)):
    r = rating[labels == cls]
    out[f'{name}_mean_rating'] = float(r.mean())
    out[f'{name}_rating_share'] = [float((r == k).mean()) for k in (0, 1, 2)]
  return out


def scores_key(model_name: str, calibration_sources, heldout_sources, per_class: int,
               fluency_per_concept: int) -> str:
  """What a raw-scores cache was computed from; a cache is reused only under the same key."""
  return json.dumps(dict(model=model_name, calibrate=[str(s) for s in calibration_sources],
                         heldout=[str(s) for s in heldout_sources], per_class=int(per_class),
                         fluency_per_concept=int(fluency_per_concept)), sort_keys=True)


def cached_scores(path: str, key: str, log=print) -> dict | None:
  """The raw scores saved at `path` if they were computed under `key`, else None."""
  if not os.path.exists(path):
    return None
  with np.load(path) as z:
    raw = {k: z[k] for k in z.files}
  saved = str(raw.pop('scores_key', ''))
  if saved != key:
    log(f'not reusing {path}: its raw scores were computed for other settings '
        f'({saved or "unrecorded"}); recomputing them')
    return None
  log(f'reusing raw scores from {path}')
  return raw


def calibrate(encoder, model, model_name: str, calibration_sources: list[str],
              heldout_sources: list[str], per_class: int = 0, fluency_per_concept: int = 12,
              log=print, scores_path: str = '') -> Calibration:
  """Fits thresholds on `calibration_sources` and reports them on `heldout_sources`.

  The two lists must hold different concepts (for AxBench Concept10 the three settings do).
  With `scores_path`, raw scores are saved there (.npz) and reused when the file holds scores
  of the same model and data, so a changed fitting rule costs no model time.
  """
  # The cache is keyed by what produced it: raw scores of another model or other data must
  # never be refitted silently as this model's calibration.
  key = scores_key(model_name, calibration_sources, heldout_sources, per_class,
                   fluency_per_concept)
  raw = cached_scores(scores_path, key, log) if scores_path else None
  if raw is not None:
    return fit(raw, model_name, calibration_sources, heldout_sources,
               getattr(encoder, 'name', 'all-MiniLM-L6-v2') if encoder else 'all-MiniLM-L6-v2')

  def gather(fn, sources, **kw):
    parts = [fn(s, **kw) for s in sources]
    return Pairs(sum((p.response for p in parts), []), sum((p.reference for p in parts), []),
                 np.concatenate([p.label for p in parts]),
                 np.concatenate([p.concept_id for p in parts]))

  def similarity(p: Pairs) -> np.ndarray:
    texts = sorted(set(p.response) | set(p.reference))  # each distinct text embedded once
    emb = dict(zip(texts, encoder.encode(texts)))
    return np.array([emb[r] @ emb[x] for r, x in zip(p.response, p.reference)])

  raw = {}
  for aspect, fn, kw in (('concept', concept_pairs, dict(per_class=per_class)),
                         ('instruction', instruction_pairs, dict(per_class=per_class))):
    cal, held = gather(fn, calibration_sources, **kw), gather(fn, heldout_sources, **kw)
    log(f'{aspect}: embedding {len(cal.response)} calibration and {len(held.response)} '
        'held-out pairs')
    raw[f'{aspect}_cal'], raw[f'{aspect}_cal_label'] = similarity(cal), cal.label
    raw[f'{aspect}_held'], raw[f'{aspect}_held_label'] = similarity(held), held.label

  cal = gather(fluency_pairs, calibration_sources, per_concept=fluency_per_concept)
  held = gather(fluency_pairs, heldout_sources, per_concept=fluency_per_concept, seed=1)
  log(f'fluency: scoring {len(cal.response)} calibration and {len(held.response)} held-out '
      f'texts with {model_name}')
  raw['fluency_cal_ll'], raw['fluency_cal_rep'] = fluency_features(model, cal.response)
  raw['fluency_held_ll'], raw['fluency_held_rep'] = fluency_features(model, held.response)
  raw['fluency_cal_label'], raw['fluency_held_label'] = cal.label, held.label
  if scores_path:
    os.makedirs(os.path.dirname(os.path.abspath(scores_path)), exist_ok=True)
    np.savez(scores_path, scores_key=np.array(key), **raw)
  return fit(raw, model_name, calibration_sources, heldout_sources,
             getattr(encoder, 'name', 'all-MiniLM-L6-v2'))


def fit(raw: dict, model_name: str, calibration_sources, heldout_sources,
        embedder: str) -> Calibration:
  """Thresholds and the held-out report from raw calibration scores."""
  thresholds, report = {}, {}
  for aspect in ('concept', 'instruction'):
    cal_s, cal_y = raw[f'{aspect}_cal'], raw[f'{aspect}_cal_label']
    thresholds[aspect] = fit_threshold(cal_s, cal_y)
    report[aspect] = dict(
        calibration=separation(cal_s, cal_y, thresholds[aspect]),
        heldout=separation(raw[f'{aspect}_held'], raw[f'{aspect}_held_label'],
                           thresholds[aspect]))
  cal_ll, cal_rep, cal_y = raw['fluency_cal_ll'], raw['fluency_cal_rep'], raw['fluency_cal_label']
  held_ll, held_rep = raw['fluency_held_ll'], raw['fluency_held_rep']
  held_y = raw['fluency_held_label']
  # The repetition weight is picked on the calibration texts only, by AUROC.
  weight = max(REPEAT_WEIGHTS, key=lambda w: (auroc(fluency_score(cal_ll, cal_rep, w), cal_y),
                                              -w))
  cal_s = fluency_score(cal_ll, cal_rep, weight)
  held_s = fluency_score(held_ll, held_rep, weight)
  thresholds['fluency'] = fit_threshold(cal_s, cal_y)
  report['fluency'] = dict(
      calibration=separation(cal_s, cal_y, thresholds['fluency']),
      heldout=separation(held_s, held_y, thresholds['fluency']),
      likelihood_only_heldout_auroc=auroc(np.where(np.isfinite(held_ll), held_ll, -1e30),
                                          held_y),
      repeat_weight=weight)
  report['sources'] = dict(calibration=list(calibration_sources),
                           heldout=list(heldout_sources), band_quantile=BAND_QUANTILE)
  return Calibration(embedder=embedder, fluency_model=model_name, concept=thresholds['concept'],
                     instruction=thresholds['instruction'], fluency=thresholds['fluency'],
                     repeat_weight=weight, report=report)
