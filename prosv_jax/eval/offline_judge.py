"""The offline judge: no network, no API key.

- concept: cosine similarity of sentence embeddings (all-MiniLM-L6-v2, run in JAX) between the
  response and the concept description;
- instruction: cosine similarity between the response and the instruction;
- fluency: the response's mean per-token log-likelihood under the unsteered base model, after
  a fixed neutral prompt (so an off-topic but well-formed answer is not called disfluent),
  minus a penalty on repeated n-grams (see `fluency_features`: repetition loops are likely
  under any LM, so likelihood alone rates them fluent).

Each raw score maps to 0/1/2 through thresholds calibrated on labelled AxBench data
(prosv_jax/eval/calibrate.py); a calibration is stored as JSON next to the package for the
default model, or wherever `launch/calibrate.py --out` writes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from prosv_jax import data
from prosv_jax.chat import chat_prompt_ids
from prosv_jax.errors import ProsvError
from prosv_jax.eval.judge import Item, Progress, Ratings
from prosv_jax.train.step import reference_logprobs
from prosv_jax.padding import round_up

FLUENCY_PROMPT = 'Write a short text.'
MAX_RESPONSE_TOKENS = 128  # AxBench judges 128 generated tokens
CALIBRATION_DIR = os.path.join(os.path.dirname(__file__), 'calibration')


@dataclasses.dataclass(frozen=True)
class Threshold:
  """Maps a raw score to a rating: < low -> 0, [low, high) -> 1, >= high -> 2.

  `mid` is the accuracy-optimal threshold between the labelled classes; `low`/`high` widen it
  to an uncertain band where few positives fall below `low` and few negatives above `high`.
  """
  low: float
  mid: float
  high: float

  def rate(self, scores) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    return np.where(s >= self.high, 2.0, np.where(s >= self.low, 1.0, 0.0))


@dataclasses.dataclass(frozen=True)
class Calibration:
  """Thresholds for the three ratings, and what they were fitted with."""
  embedder: str
  fluency_model: str
  concept: Threshold
  instruction: Threshold
  fluency: Threshold
  repeat_weight: float  # fluency score = mean log-lik - repeat_weight * repeated-4-gram share
  report: dict = dataclasses.field(default_factory=dict)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> 'Calibration':
    raw = json.loads(text)
    for key in ('concept', 'instruction', 'fluency'):
      raw[key] = Threshold(**raw[key])
    return cls(**raw)

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(self.to_json() + '\n')
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> 'Calibration':
    try:
      with open(path, encoding='utf-8') as f:
        return cls.from_json(f.read())
    except FileNotFoundError:
      raise ProsvError(f'no judge calibration at {path}; run launch/calibrate.py '
                       f'--model=<model> --out={path}') from None
    except (ValueError, TypeError, KeyError) as e:
      raise ProsvError(f'corrupt judge calibration {path} ({str(e).splitlines()[0]}); rerun '
                       'launch/calibrate.py to rewrite it') from None


def default_calibration_path(model_name: str) -> str:
  safe = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in model_name)
  return os.path.join(CALIBRATION_DIR, f'{safe}.json')


def repeated_ngram_share(ids: Sequence[int], n: int = 4) -> float:
  """Share of the response's n-grams that already occurred earlier in it (0 = none)."""
  grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
  if not grams:
    return 0.0
  return 1.0 - len(set(grams)) / len(grams)


def mean_logliks(model, responses: Sequence[str], prompt: str = FLUENCY_PROMPT,
                 batch_size: int = 16, max_tokens: int = MAX_RESPONSE_TOKENS,
                 progress: Progress | None = None) -> tuple[np.ndarray, list[list[int]]]:
  """Mean per-token log-likelihood of each response after the chat-templated `prompt`.

  Returns the means [N] (-inf for a response with no tokens) and the response token ids
  (truncated to max_tokens). Rows are batched by length so few shapes compile.
  """
  tok = model.tokenizer
  prompt_ids = np.asarray(chat_prompt_ids(tok, prompt), np.int32)
  ids = [tok.encode(r, add_special_tokens=False)[:max_tokens] for r in responses]
  out = np.full(len(ids), -np.inf)
  real = [i for i, x in enumerate(ids) if x]
  real.sort(key=lambda i: len(ids[i]))
  pad_id = model.cfg.pad_id if model.cfg.pad_id is not None else 0
  for start in range(0, len(real), batch_size):
    rows = real[start:start + batch_size]
    examples = [data.Example(prompt_ids, np.asarray(ids[i], np.int32), 0, prompt) for i in rows]
    batch = {k: jnp.asarray(v) for k, v in data.pad_batch(examples, pad_id).items()}
    width = round_up(max(len(ids[i]) for i in rows), 16)
    total = np.asarray(reference_logprobs(model.params, batch, cfg=model.cfg, layer=0,
                                          response_width=width))
    for j, i in enumerate(rows):
      out[i] = total[j] / len(ids[i])
    if progress is not None:
      progress(len(rows))
  return out, ids


def fluency_features(model, responses: Sequence[str], **kwargs) -> tuple[np.ndarray, np.ndarray]:
  """(mean log-likelihood [N], repeated-4-gram share [N]) of each response."""
  ll, ids = mean_logliks(model, responses, **kwargs)
  return ll, np.array([repeated_ngram_share(x) for x in ids])


def fluency_score(ll: np.ndarray, repeat: np.ndarray, repeat_weight: float) -> np.ndarray:
  return np.where(np.isfinite(ll), ll - repeat_weight * repeat, -np.inf)


def check_fluency_model(model, name: str) -> None:
  """Fluency is the model's likelihood of an answer under its chat template, so the model
  that rates it (and is calibrated) must have one; a base model is judged by an instruct one."""
  if not getattr(model.tokenizer, 'chat_template', None):
    raise ProsvError(f'{name} has no chat template (a base model), and the offline judge scores '
                     'fluency under one; rate fluency with a calibrated instruct model: '
                     '--config.judge.fluency_model=smollm2-135m-instruct')


class OfflineJudge:
  """Embedding similarity for concept and instruction, base-model likelihood for fluency."""

  def __init__(self, encoder, model, calibration: Calibration, batch_size: int = 16):
    """
    Args:
      encoder: a prosv_jax.eval.embed.SentenceEncoder.
      model: the unsteered base model (prosv_jax.models.load.Model) that scores fluency.
      calibration: thresholds fitted for this encoder and this model.
    """
    self.encoder, self.model, self.calibration = encoder, model, calibration
    self.batch_size = batch_size
    self.name = f'offline:{calibration.embedder}+{calibration.fluency_model}'

  @classmethod
  def load(cls, model, calibration_path: str = '', model_name: str = '') -> 'OfflineJudge':
    from prosv_jax.eval.embed import SentenceEncoder
    name = model_name or model.source
    check_fluency_model(model, name)
    path = calibration_path or default_calibration_path(name)
    return cls(SentenceEncoder.load(), model, Calibration.load(path))

  def scores(self, items: Sequence[Item], progress: Progress | None = None,
             parts: Sequence[str] = ('concept', 'instruction', 'fluency')) -> dict:
    """Raw scores [N] before thresholds: concept/instruction similarity, fluency score;
    only the `parts` asked for (fluency, a forward of the base model, is most of the cost)."""
    items = list(items)
    if not items:
      return {k: np.zeros(0) for k in parts}
    responses = [it.response for it in items]
    empty = np.array([not x.strip() for x in responses])
    out = {}
    if {'concept', 'instruction'} & set(parts):
      concepts = sorted({it.concept for it in items})
      instructions = sorted({it.instruction for it in items})
      emb = self.encoder.encode(responses + concepts + instructions)
      r = emb[:len(items)]
      c = dict(zip(concepts, emb[len(items):len(items) + len(concepts)]))
      ins = dict(zip(instructions, emb[len(items) + len(concepts):]))
      out['concept'] = np.where(empty, -np.inf, [r[i] @ c[it.concept]
                                                 for i, it in enumerate(items)])
      out['instruction'] = np.where(empty, -np.inf, [r[i] @ ins[it.instruction]
                                                     for i, it in enumerate(items)])
    if 'fluency' in parts:
      ll, rep = fluency_features(self.model, responses, batch_size=self.batch_size,
                                 progress=progress)
      out['fluency'] = fluency_score(ll, rep, self.calibration.repeat_weight)
    return {k: out[k] for k in parts}

  def rate(self, items: Sequence[Item], progress: Progress | None = None) -> list[Ratings]:
    s = self.scores(items, progress)
    cal = self.calibration
    c, i, f = cal.concept.rate(s['concept']), cal.instruction.rate(s['instruction']), \
        cal.fluency.rate(s['fluency'])
    return [Ratings(float(a), float(b), float(d)) for a, b, d in zip(c, i, f)]
