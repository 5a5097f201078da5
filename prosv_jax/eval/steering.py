"""The AxBench steering evaluation: generate with each method, judge, aggregate.

Every generation and every rating is appended to a JSON-lines store as soon as it exists,
keyed by what produced it, so an interrupted evaluation resumes where it stopped and a rerun
with another judge regenerates nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from typing import Callable, Sequence

import numpy as np

from prosv_jax.chat import chat_prompt_ids
from prosv_jax.errors import ProsvError
from prosv_jax.eval import instructions as prompts
from prosv_jax.eval import scores
from prosv_jax.eval.judge import Item, Judge, Ratings
from prosv_jax.sampling import SamplingConfig, generate_ids

METHODS = ('unsteered', 'prompting', 'fssv', 'fssv_grid', 'prosv', 'prosv_grid')
VECTOR_METHODS = {'fssv': 'fssv', 'fssv_grid': 'fssv', 'prosv': 'prosv', 'prosv_grid': 'prosv'}
# Factor grids: the vector method run at several multiples of its trained factor, the best
# multiple picked on the first half of the instructions and reported on the second.
GRIDS = {'fssv_grid': 'fssv', 'prosv_grid': 'prosv'}
# A vector method may name the training preset its vectors come from: 'prosv:smollm2' is PrOSV
# trained with configs/prosv.py:smollm2 (prosv_jax.train.config.VARIANTS); plain 'prosv' is the
# default preset. The variant travels with every name derived from the method.
VARIANT_SEP = ':'


def split_method(method: str) -> tuple[str, str]:
  """'prosv_grid:smollm2' -> ('prosv_grid', 'smollm2'); 'prosv' -> ('prosv', '')."""
  base, _, variant = method.partition(VARIANT_SEP)
  return base, variant


def _with_variant(name: str, variant: str) -> str:
  return f'{name}{VARIANT_SEP}{variant}' if variant else name


def vector_set(method: str) -> str | None:
  """The vector set a method steers with ('prosv', 'fssv:smollm2', ...; None: no vectors)."""
  base, variant = split_method(method)
  return _with_variant(VECTOR_METHODS[base], variant) if base in VECTOR_METHODS else None


def grid_of(method: str) -> str | None:
  """For a factor-grid method, the vector method whose factor it scales; else None."""
  base, variant = split_method(method)
  return _with_variant(GRIDS[base], variant) if base in GRIDS else None


def reference_of(method: str, methods) -> str | None:
  """The PrOSV a method's difference is taken against: the PrOSV of its own preset when that
  is evaluated (so FSSV of a preset is compared with PrOSV of the same preset), else the
  default PrOSV, else the one PrOSV evaluated (so 'fssv,prosv:smollm2' compares the paper's
  FSSV with the study's PrOSV); None for that PrOSV itself or when there is none."""
  _, variant = split_method(method)
  for ref in (_with_variant('prosv', variant), 'prosv'):
    if ref in methods and ref != method:
      return ref
  others = [m for m in methods if split_method(m)[0] == 'prosv']
  if len(others) == 1 and others[0] != method:
    return others[0]
  return None
# What a rating rates: the whole response, or the first or second half of its tokens (does a
# prompt-only edit fade as the response goes on?).
PARTS = ('whole', 'first', 'second')


@dataclasses.dataclass(frozen=True)
class Group:
  """One batch of generations: a method at one factor multiplier on one concept."""
  method: str  # 'unsteered', 'prompting', 'fssv', 'prosv' (the grid is fssv at multipliers)
  concept_id: int
  multiplier: float = 1.0  # times the trained factor (vector methods only)
  attack: bool = False  # instructions rewritten to avoid the concept

  def key(self) -> str:
    return f'{self.method}|{self.concept_id}|{self.multiplier:g}|{int(self.attack)}'


class Store:
  """Append-only JSON-lines records, loaded into a dict on open (last record of a key wins)."""

  def __init__(self, path: str):
    self.path = path
    self.records: dict[str, dict] = {}
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
          if not line.strip():
            continue
          try:
            rec = json.loads(line)
          except json.JSONDecodeError:
            # A kill mid-write leaves a partial last line: drop it, it is redone.
            continue
          self.records[rec['key']] = rec

  def __contains__(self, key: str) -> bool:
    return key in self.records

  def get(self, key: str) -> dict | None:
    return self.records.get(key)

  def add(self, records: Sequence[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    with open(self.path, 'a', encoding='utf-8') as f:
      for rec in records:
        f.write(json.dumps(rec, ensure_ascii=False) + '\n')
      f.flush()
      os.fsync(f.fileno())
    for rec in records:
      self.records[rec['key']] = rec


@dataclasses.dataclass
class Setup:
  """What an evaluation needs besides the judge."""
  model: object  # prosv_jax.models.load.Model
  # vector set ('prosv', 'fssv', 'prosv:smollm2', ...) -> SteeringVectors, each prompted with
  # its own chat template
  vectors: dict
  descriptions: dict[int, str]  # concept_id -> description
  instructions: dict[int, list[str]]  # concept_id -> held-out instructions
  samples: int = 1  # generations per instruction
  sampling: SamplingConfig = SamplingConfig(max_new_tokens=128, temperature=1.0, top_k=50)
  batch_size: int = 32
  seed: int = 0
  # The unsteered and prompting baselines' template: '' = the tokenizer's own, a
  # chat.TEMPLATES name or Jinja text (evaluate sets the evaluated vectors' template).
  chat_template: str = ''


def gen_key(group: Group, index: int, sample: int) -> str:
  return f'{group.key()}|{index}|{sample}'


def parse_gen_key(key: str) -> tuple[Group, int, int]:
  """gen_key's inverse: (group, instruction index, sample) of a stored generation's key."""
  method, concept, multiplier, attack, index, sample = key.split('|')
  return (Group(method, int(concept), float(multiplier), bool(int(attack))), int(index),
          int(sample))


def prompt_text(setup: Setup, group: Group, instruction: str, index: int) -> str:
  concept = setup.descriptions[group.concept_id]
  text = prompts.avoid(instruction, concept, index) if group.attack else instruction
  if group.method == 'prompting':
    text = prompts.prompting(text, concept)
  return text


def _steer_kind(group: Group) -> str:
  return vector_set(group.method) or 'none'


def _batch_steer(setup: Setup, rows: list[tuple[Group, int, int]]) -> dict:
  """generate_ids keyword arguments that steer each row with its own group's vector.

  Rows of one batch share a vector set (same layer and positions); each row gets its own
  concept and factor multiplier, so several grid factors decode in one batch.
  """
  kind = _steer_kind(rows[0][0])
  if kind == 'none':
    return {}
  return setup.vectors[kind].generation_kwargs([str(g.concept_id) for g, _, _ in rows],
                                               [g.multiplier for g, _, _ in rows])


def _chat_template(setup: Setup, kind: str) -> str:
  """A vector method is prompted as its vectors were trained; the baselines by setup's."""
  return setup.chat_template if kind == 'none' else setup.vectors[kind].chat_template


def row_seed(seed: int, concept_id: int, attack: bool, kind: str, index: int,
             sample: int) -> int:
  """The sampling seed of one generation, whatever batch it lands in (so a resumed run
  regenerates exactly what it lost). Common random numbers: it depends on the concept, the
  attack, the steering kind, the instruction and the sample, not on the method or the grid
  factor, so methods of a concept are compared on the same draws."""
  return zlib.crc32(f'{seed}|{concept_id}|{int(attack)}|{kind}|{index}|{sample}'.encode())


def generate_groups(setup: Setup, groups: Sequence[Group], store: Store,
                    progress: Callable[[int], None] | None = None) -> int:
  """Generates the groups' missing rows (instructions x samples); returns how many.

  Groups of one concept and attack flag that steer the same way (none, or one vector set at
  several factors) share batches: decoding is memory-bound, so wider batches are nearly free.
  """
  buckets: dict[tuple, list[Group]] = {}
  for g in dict.fromkeys(groups):
    buckets.setdefault((g.concept_id, g.attack, _steer_kind(g)), []).append(g)
  tok = setup.model.tokenizer
  made = 0
  for (cid, attack, kind), members in buckets.items():
    instr = setup.instructions[cid]
    todo = [(g, i, s) for g in members for i in range(len(instr)) for s in range(setup.samples)
            if gen_key(g, i, s) not in store]
    for start in range(0, len(todo), setup.batch_size):
      chunk = todo[start:start + setup.batch_size]
      texts = [prompt_text(setup, g, instr[i], i) for g, i, _ in chunk]
      ids = [chat_prompt_ids(tok, t, _chat_template(setup, kind)) for t in texts]
      seeds = [row_seed(setup.seed, cid, attack, kind, i, s) for _, i, s in chunk]
      out = generate_ids(setup.model.params, setup.model.cfg, ids, sampling=setup.sampling,
                         seed=seeds, **_batch_steer(setup, chunk))
      store.add([dict(key=gen_key(g, i, s), **dataclasses.asdict(g), index=i, sample=s,
                      instruction=instr[i], prompt=t,
                      response=tok.decode(o, skip_special_tokens=True))
                 for (g, i, s), t, o in zip(chunk, texts, out)])
      made += len(chunk)
      if progress is not None:
        progress(len(chunk))
  return made


def rating_key(judge_name: str, gen: str, part: str = 'whole') -> str:
  # The whole response keeps the key it always had, so existing rating stores stay valid.
  return f'{judge_name}|{gen}' if part == 'whole' else f'{judge_name}|{gen}|{part}_half'


def response_part(tokenizer, response: str, part: str) -> str:
  """The response, or the text of the first or second half of its tokens.

  The split re-tokenizes the stored text (generation records keep text, not ids), so it works
  on stores written before halves were rated; the midpoint is len // 2, the odd token going to
  the second half.
  """
  if part == 'whole':
    return response
  if part not in PARTS:
    raise ValueError(f'unknown response part {part!r}; use one of {PARTS}')
  ids = tokenizer.encode(response, add_special_tokens=False)
  half = len(ids) // 2
  return tokenizer.decode(ids[:half] if part == 'first' else ids[half:],
                          skip_special_tokens=True)


def judge_missing(judge: Judge, setup: Setup, gens: Store, ratings: Store,
                  keys: Sequence[str], progress: Callable[[int], None] | None = None,
                  chunk: int = 256, part: str = 'whole') -> int:
  """Rates `part` of the generations in `keys` that this judge has not rated yet."""
  todo = [k for k in keys if rating_key(judge.name, k, part) not in ratings]
  for start in range(0, len(todo), chunk):
    keys_now = todo[start:start + chunk]
    items = [Item(instruction=gens.get(k)['instruction'],
                  concept=setup.descriptions[gens.get(k)['concept_id']],
                  response=response_part(setup.model.tokenizer, gens.get(k)['response'], part))
             for k in keys_now]
    rated = judge.rate(items, progress)
    ratings.add([dict(key=rating_key(judge.name, k, part), judge=judge.name, gen=k, part=part,
                      **dataclasses.asdict(r)) for k, r in zip(keys_now, rated)])
  return len(todo)


def group_ratings(judge: Judge, setup: Setup, ratings: Store, group: Group,
                  indices: Sequence[int] | None = None, part: str = 'whole') -> list[Ratings]:
  """The group's ratings, instruction-major (index, then sample)."""
  n = len(setup.instructions[group.concept_id])
  return stored_ratings(ratings, judge.name, group, range(n) if indices is None else indices,
                        setup.samples, part)


def stored_ratings(ratings: Store, judge_name: str, group: Group, indices: Sequence[int],
                   samples: int, part: str = 'whole') -> list[Ratings]:
  """A group's stored ratings by one judge, instruction-major; needs no loaded model or judge,
  so a finished evaluation's stores can be read back on their own."""
  out = []
  for i in indices:
    for s in range(samples):
      rec = ratings.get(rating_key(judge_name, gen_key(group, i, s), part))
      if rec is None:
        raise ProsvError(f'missing {part} rating for {gen_key(group, i, s)}; rerun the '
                         'evaluation to finish it')
      out.append(Ratings(rec['concept'], rec['instruction'], rec['fluency']))
  return out


def group_keys(setup: Setup, group: Group) -> list[str]:
  return [gen_key(group, i, s) for i in range(len(setup.instructions[group.concept_id]))
          for s in range(setup.samples)]


def select_multipliers(judge: Judge, setup: Setup, ratings: Store, concepts: Sequence[int],
                       multipliers: Sequence[float], attack: bool = False,
                       method: str = 'fssv') -> dict:
  """Per concept: the grid multiplier of `method`'s vectors with the best score on the first
  half of the instructions, the per-multiplier scores on both halves (for the plot), and
  whether the trained factor (multiplier 1) was the pick, and the best on the second half
  (None when 1 is not in the grid)."""
  out = {}
  for cid in concepts:
    first, second = scores.split_halves(len(setup.instructions[cid]))
    pick = {m: scores.mean_harmonic(group_ratings(judge, setup, ratings,
                                                  Group(method, cid, m, attack), first))
            for m in multipliers}
    report = {m: scores.mean_harmonic(group_ratings(judge, setup, ratings,
                                                    Group(method, cid, m, attack), second))
              for m in multipliers}
    chosen = scores.select_factor(pick)
    trained = 1.0 in report
    out[cid] = dict(multiplier=chosen, select=pick, report=report, report_indices=second,
                    trained_selected=(chosen == 1.0) if trained else None,
                    trained_best_on_report=(report[1.0] == max(report.values()))
                    if trained else None)
  return out


def stored_difference(workdir: str, a: str, b: str, results_name: str = 'results',
                      concepts: Sequence[int] | None = None) -> dict:
  """Any two evaluated methods compared, paired, from an evaluation's stores: the harmonic
  mean of `a` minus `b` with the bootstrap the evaluation uses (concepts, then instructions;
  its draws, seed and level), and their utility losses' difference over concepts. For pairs
  the evaluation's own tables do not hold (e.g. one FSSV preset against another).

  Returns {a, b, concepts, harmonic: {a, b, diff, ci}, utility: {a, b, diff, ci} or None}.
  """
  path = os.path.join(workdir, f'{results_name}.json')
  if not os.path.exists(path):
    raise ProsvError(f'{path} not found; run launch/evaluate.py with '
                     f'--config.workdir={workdir} first')
  with open(path, encoding='utf-8') as f:
    results = json.load(f)
  for m in (a, b):
    if m not in results['methods']:
      raise ProsvError(f'{m!r} is not among {path}\'s methods ({", ".join(results["methods"])})'
                       '; name one of them or rerun the evaluation with it')
    if grid_of(m):
      raise ProsvError(f'{m!r} is a factor grid, scored on half the instructions at its pick; '
                       'compare the trained-factor methods')
  concepts = list(concepts or results['concepts'])
  missing = sorted(set(concepts) - set(results['concepts']))
  if missing:
    raise ProsvError(f'concepts {missing} are not in {path} (it holds {results["concepts"]})')
  ratings = Store(os.path.join(workdir, 'ratings.jsonl'))
  count, samples = int(results['instructions']['count']), int(results['instructions']['samples'])
  units = []
  for cid in concepts:
    per_method = []
    for m in (a, b):
      per_method.append([r.harmonic for r in stored_ratings(
          ratings, results['judge'], Group(m, cid), range(count), samples)])
    units.append(np.array(per_method).reshape(2, count, samples))
  stats = results['bootstrap']
  boot = scores.paired_bootstrap(units, [a, b], b, int(stats['draws']), int(stats['seed']),
                                 float(stats['level']))
  harmonic = dict(a=boot[a]['mean'], b=boot[b]['mean'], diff=boot[a]['diff'],
                  ci=boot[a]['diff_ci'])
  utility = None
  loss = {m: results.get('utility', {}).get(m, {}).get('loglik_loss_per_concept') for m in (a, b)}
  if all(loss.values()):
    at = [results['concepts'].index(c) for c in concepts]
    u = scores.concept_bootstrap([loss[a][i] for i in at], [loss[b][i] for i in at],
                                 draws=int(stats['draws']), seed=int(stats['seed']),
                                 level=float(stats['level']))
    utility = dict(a=float(np.mean([loss[a][i] for i in at])),
                   b=float(np.mean([loss[b][i] for i in at])), diff=u['value'], ci=u['ci'])
  return dict(a=a, b=b, concepts=concepts, harmonic=harmonic, utility=utility)
