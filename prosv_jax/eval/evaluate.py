"""One evaluation run: vectors (loaded or trained first), steering score of every method,
robustness under avoid-the-concept instructions, utility; results.json, results.md, plots.

    from prosv_jax.eval.config import eval_config
    from prosv_jax.eval.evaluate import evaluate
    results = evaluate(config)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import zlib

import numpy as np
from tqdm import tqdm

from prosv_jax import data
from prosv_jax.train import config as train_config
from prosv_jax.artifacts import load_vectors
from prosv_jax.vectors import SteeringVectors
from prosv_jax.errors import ProsvError
from prosv_jax.eval import instructions as prompts
from prosv_jax.eval import report, scores, utility
from prosv_jax.eval.steering import (METHODS, VECTOR_METHODS, Group, Setup, Store, grid_of,
                                     reference_of, split_method, vector_set,
                                     generate_groups, group_keys, group_ratings, judge_missing,
                                     rating_key, select_multipliers)
from prosv_jax.models.load import check_spec, load_model
from prosv_jax.sampling import SamplingConfig

JUDGES = ('offline', 'api', 'lm')


def parse_methods(spec: str) -> list[str]:
  """The methods to evaluate: names of METHODS, a vector method optionally with the training
  preset of its vectors ('prosv:smollm2' = PrOSV trained with configs/prosv.py:smollm2)."""
  methods = [m.strip() for m in str(spec).split(',') if m.strip()]
  bad = [m for m in methods if split_method(m)[0] not in METHODS]
  if bad or not methods:
    raise ProsvError(f'methods={spec!r}: unknown {", ".join(bad) or "(none given)"}; use a '
                     f'comma-separated subset of {",".join(METHODS)} (a vector method may '
                     f'name its training preset, e.g. prosv:smollm2)')
  for m in methods:
    base, variant = split_method(m)
    if variant and base not in VECTOR_METHODS:
      raise ProsvError(f'methods: {m!r} names a training preset, but {base} has no vectors; '
                       f'only {", ".join(VECTOR_METHODS)} take one')
    if variant and variant not in train_config.VARIANTS:
      raise ProsvError(f'methods: {m!r} names an unknown training preset {variant!r}; use one '
                       f'of {", ".join(train_config.VARIANTS)}')
  if len(set(methods)) != len(methods):
    raise ProsvError(f'methods={spec!r} names a method twice; name each once')
  return methods


def check_config(config) -> None:
  """Value checks, one line each, before anything is loaded."""
  parse_methods(config.methods)
  if config.judge.kind not in JUDGES:
    raise ProsvError(f'judge.kind={config.judge.kind!r}; use one of {", ".join(JUDGES)}')
  for key in ('count', 'samples'):
    if int(config.instructions[key]) < 1:
      raise ProsvError(f'instructions.{key}={config.instructions[key]}; use at least 1')
  grids = [m for m in parse_methods(config.methods) if grid_of(m)]
  if grids:
    if int(config.instructions.count) < 2:
      raise ProsvError(f'{grids[0]} selects on half the instructions and reports the other '
                       'half: set instructions.count to at least 2')
    if not config.grid.multipliers or any(not m > 0 for m in config.grid.multipliers):
      raise ProsvError(f'grid.multipliers={tuple(config.grid.multipliers)}; use positive '
                       'multiples of the trained factor, e.g. 0.5,1,2')
  if not config.data.concepts:
    raise ProsvError('data.concepts is empty; pass the AxBench concept ids to evaluate')
  if not re.fullmatch(r'[\w.\-]+', str(config.results_name)):
    raise ProsvError(f'results_name={config.results_name!r}; use a plain file stem such as '
                     'results or concepts2-9 (letters, digits, ., -, _)')
  sampling_config(config)
  b = config.bootstrap
  if int(b.draws) < 100 or not 0 < float(b.level) < 1:
    raise ProsvError(f'bootstrap.draws={b.draws}, bootstrap.level={b.level}; use at least 100 '
                     'draws and a level in (0, 1), e.g. 2000 and 0.95')


def sampling_config(config) -> SamplingConfig:
  """The generation.* sampling keys; SamplingConfig names the fix for a bad value."""
  g = config.generation
  try:
    return SamplingConfig(max_new_tokens=int(g.max_new_tokens), temperature=float(g.temperature),
                          top_k=int(g.top_k), top_p=float(g.top_p))
  except ProsvError as e:  # its message starts with the field name: point at the config key
    raise ProsvError(f'generation.{e}') from None


def concept_descriptions(config) -> dict[int, str]:
  if config.data.source == 'demo':
    _, meta = data.demo_table()
  elif config.data.metadata:
    meta = data.read_concept_metadata(config.data.metadata)
  else:
    table = data.read_concept_table(config.data.source)
    meta = dict(zip(table['concept_id'], table['output_concept']))
  missing = [c for c in config.data.concepts if int(c) not in meta]
  if missing:
    raise ProsvError(f'concepts {missing} have no description in {config.data.metadata or config.data.source}; '
                     f'available ids: {sorted(int(k) for k in meta if int(k) >= 0)[:20]}')
  return {int(c): meta[int(c)] for c in config.data.concepts}


def vectors_for(name: str, config, model):
  """A vector set's trained vectors ('prosv', 'fssv' or with a preset, 'prosv:smollm2'): the
  configured folder (vectors.prosv / vectors.fssv), or trained here first (resumable), one run
  per concept in workdir/train_<name> (the ':' written as '-')."""
  method, variant = split_method(name)
  folder = '' if variant else config.vectors[method]
  if folder:
    vectors = load_vectors(folder)
  else:
    if variant:
      c = train_config.variant_config(method, variant)
      if c.model != config.model:
        raise ProsvError(f'{name}: preset {variant!r} trains on {c.model!r}, this evaluation '
                         f'loads {config.model!r}; set --config.model={c.model} or pick a '
                         f'preset of this model')
      c.dtype = config.dtype
    else:
      c = train_config.method_config(method)
      c.model, c.dtype, c.layer = config.model, config.dtype, config.layer
    if config.chat_template != 'vectors':  # a base model: train with the template evaluated
      c.chat_template = config.chat_template
    c.data.source, c.data.metadata = config.data.source, config.data.metadata
    c.data.max_examples = int(config.train.max_examples)
    c.train.epochs = int(config.train.epochs)
    folder = os.path.join(config.workdir, f'train_{name.replace(":", "-")}')
    vectors = SteeringVectors.stack([_train_one(c, model, folder, int(cid))
                                     for cid in config.data.concepts])
  for cid in config.data.concepts:
    vectors.index_of(str(int(cid)))  # a clear error now, not after an hour of generation
  if vectors.model and vectors.model != config.model:
    raise ProsvError(f'{folder} was trained on {vectors.model!r}, this evaluation loads '
                     f'{config.model!r}; set --config.model={vectors.model}')
  return vectors


def _train_one(c, model, folder: str, cid: int) -> SteeringVectors:
  """One concept's vectors, in its own workdir: the paper trains one run per concept, a
  finished one is skipped on a rerun, and K concepts in one step would hold K times the
  activations (the same result: K concepts per step equal K separate runs, tested)."""
  from prosv_jax.train.job import train  # pylint: disable=import-outside-toplevel
  c = c.copy_and_resolve_references()
  c.data.concepts = (cid,)
  c.workdir = os.path.join(folder, f'concept{cid}')
  print(f'training {c.positions} vectors for concept {cid} in {c.workdir}')
  return train(c, model).vectors


def baseline_template(config, vectors: dict) -> str:
  """The chat template of the unsteered and prompting baselines (and the utility's own answers).

  Vector methods are always prompted with their own vectors' template. The baselines take
  config.chat_template; 'vectors' (the default) means the template the evaluated vectors were
  trained with, so every method sees the same prompt format, and they must agree on it.
  """
  if config.chat_template != 'vectors':
    return config.chat_template
  used = {m: v.chat_template for m, v in vectors.items()}
  if len(set(used.values())) > 1:
    raise ProsvError(f'the vector sets were trained with different chat templates '
                     f'({", ".join(f"{m}: {t[:40]!r}" for m, t in used.items())}); set '
                     f'--config.chat_template for the unsteered and prompting baselines')
  return next(iter(used.values()), '')  # no vectors: the tokenizer's own


def make_judge(config, model):
  kind = config.judge.kind
  if kind == 'offline':
    from prosv_jax.eval.offline_judge import OfflineJudge
    name = config.judge.fluency_model or config.model
    if name != config.model:
      from prosv_jax.models.load import load_model
      model = load_model(name, config.dtype)
    return OfflineJudge.load(model, config.judge.calibration, model_name=name)
  if kind == 'api':
    from prosv_jax.eval.api_judge import ApiJudge
    api = config.judge.api
    cache = api.cache_path or os.path.join(config.workdir, 'judge_cache.sqlite')
    return ApiJudge(base_url=api.base_url, model=api.model, api_key_env=api.api_key_env,
                    max_concurrency=int(api.max_concurrency), cache_path=cache)
  from prosv_jax.eval.lm_judge import LMJudge
  if config.judge.lm.model and config.judge.lm.model != config.model:
    return LMJudge.load(config.judge.lm.model, config.dtype)
  return LMJudge(model)


def _run_groups(groups, setup, gens, ratings, judge, desc):
  groups = list(dict.fromkeys(groups))  # the grid pick may be the trained factor itself
  keys = [k for g in groups for k in group_keys(setup, g)]
  with tqdm(total=len(keys), desc=f'{desc}: generate', unit='gen', dynamic_ncols=True) as bar:
    bar.update(len([k for k in keys if k in gens]))
    generate_groups(setup, groups, gens, progress=bar.update)
  _judge(keys, setup, gens, ratings, judge, f'{desc}: judge', 'whole')


def _judge(keys, setup, gens, ratings, judge, desc, part):
  with tqdm(total=len(keys), desc=desc, unit='gen', dynamic_ncols=True) as bar:
    bar.update(len([k for k in keys if rating_key(judge.name, k, part) in ratings]))
    judge_missing(judge, setup, gens, ratings, keys, progress=bar.update, part=part)


def _judge_halves(groups, setup, gens, ratings, judge, desc):
  """Rates the first and the second half of each response of the reported groups."""
  keys = [k for g in dict.fromkeys(groups) for k in group_keys(setup, g)]
  for part in ('first', 'second'):
    _judge(keys, setup, gens, ratings, judge, f'{desc}: judge {part} halves', part)


def _method_groups(method, cid, multipliers, attack, selected=None):
  if grid_of(method):
    if attack:
      return [_reported_group(method, cid, selected, True)]
    return [Group(grid_of(method), cid, m, False) for m in multipliers]
  return [Group(method, cid, 1.0, attack)]


def _reported_group(method, cid, selected, attack):
  """The generations a method's score is made of (a grid: its vectors at the pick)."""
  if grid_of(method):
    return Group(grid_of(method), cid, selected[method][cid]['multiplier'], attack)
  return Group(method, cid, 1.0, attack)


def _reported_indices(method, count):
  """Instruction indices a method reports on: a grid only those it did not select on."""
  return scores.split_halves(count)[1] if grid_of(method) else list(range(count))


def _units(judge, setup, ratings, method, cid, selected, attack, indices, part='whole',
           aspect='harmonic'):
  """One score (`aspect` of `part` of the responses) [instructions, samples] of one method on
  one concept."""
  rated = group_ratings(judge, setup, ratings, _reported_group(method, cid, selected, attack),
                        indices, part)
  return np.array([getattr(r, aspect) for r in rated]).reshape(len(indices), setup.samples)


def _concept_change(judge, setup, ratings, method, concepts, selected, attack, stats):
  """The concept score of the responses' second half minus their first half, with its paired
  bootstrap interval: below 0 when the edit fades as the response goes on."""
  units = []
  for cid in concepts:
    indices = _reported_indices(method, len(setup.instructions[cid]))
    units.append(np.stack([_units(judge, setup, ratings, method, cid, selected, attack, indices,
                                  part, 'concept') for part in ('first', 'second')]))
  boot = scores.paired_bootstrap(units, ['first', 'second'], 'first', int(stats.draws),
                                 int(stats.seed), float(stats.level))['second']
  return dict(diff=boot['diff'], ci=boot['diff_ci'])


def _intervals(judge, setup, ratings, methods, concepts, selected, attack, stats, second):
  """Paired bootstrap of each method's harmonic mean and of its difference to its PrOSV
  (steering.reference_of), on the method's own units (second=False; a grid's are the second
  half) or on the second half. A difference also names its reference."""
  names = [m for m in methods if second or not grid_of(m)]
  if not names:
    return {}
  units = []
  for cid in concepts:
    count = len(setup.instructions[cid])
    indices = scores.split_halves(count)[1] if second else list(range(count))
    units.append(np.stack([_units(judge, setup, ratings, m, cid, selected, attack, indices)
                           for m in names]))
  args = (int(stats.draws), int(stats.seed), float(stats.level))
  # One paired bootstrap per reference, all with the same draws (same seed): the means and
  # their intervals are the same in each, and every difference is paired on the same units.
  refs = {m: reference_of(m, names) for m in names}
  out = None
  for ref in dict.fromkeys(r for r in refs.values() if r) or [None]:
    boot = scores.paired_bootstrap(units, names, ref, *args)
    out = out or {m: dict(mean=b['mean'], ci=b['ci']) for m, b in boot.items()}
    for m in names:
      if ref is not None and refs[m] == ref:
        out[m].update(diff=boot[m]['diff'], diff_ci=boot[m]['diff_ci'], reference=ref)
  return out


def _summaries(judge, setup, ratings, method, concepts, selected, attack, part, second):
  per_concept = {}
  for cid in concepts:
    count = len(setup.instructions[cid])
    indices = scores.split_halves(count)[1] if second else _reported_indices(method, count)
    g = _reported_group(method, cid, selected, attack)
    per_concept[cid] = scores.summarize(group_ratings(judge, setup, ratings, g, indices, part))
  return per_concept


def _method_scores(judge, setup, ratings, methods, concepts, selected, attack, stats,
                   halves):
  """Per method: per-concept summaries and their average, on the whole responses and (with
  `halves`) on the first and second half of their tokens; bootstrap intervals of the
  harmonic mean and of the difference to PrOSV. Grids report on the second half of the
  instructions at the pick, and are compared with PrOSV on those same units."""
  second_ok = all(len(setup.instructions[c]) >= 2 for c in concepts)
  own = _intervals(judge, setup, ratings, methods, concepts, selected, attack, stats, False)
  late = (_intervals(judge, setup, ratings, methods, concepts, selected, attack, stats, True)
          if second_ok else {})
  out = {}
  for method in methods:
    args = (judge, setup, ratings, method, concepts, selected, attack)
    per_concept = _summaries(*args, 'whole', False)
    res = dict(mean=scores.over_concepts(per_concept),
               instructions='second half' if grid_of(method) else 'all',
               per_concept={str(k): v for k, v in per_concept.items()})
    boot = late[method] if grid_of(method) else own[method]
    res['mean']['harmonic_ci'] = boot['ci']
    if 'diff' in boot:
      res['vs_prosv'] = dict(diff=boot['diff'], ci=boot['diff_ci'], reference=boot['reference'],
                             instructions=res['instructions'])
    if second_ok:
      res['second_half'] = scores.over_concepts(_summaries(*args, 'whole', True))
      res['second_half']['harmonic_ci'] = late[method]['ci']
      if 'diff' in late[method]:
        res['second_half']['vs_prosv'] = dict(diff=late[method]['diff'],
                                              ci=late[method]['diff_ci'],
                                              reference=late[method]['reference'])
    if halves:
      res['response_halves'] = {part: scores.over_concepts(_summaries(*args, part, False))
                                for part in ('first', 'second')}
      res['response_halves']['concept_change'] = _concept_change(*args, stats)
    out[method] = res
  return out


def _grid_results(selected):
  """results['grid']: per grid method, the pick per concept and how often it was 1x."""
  out = {}
  for method, per in selected.items():
    concepts = {str(c): dict(v, select={f'{m:g}': s for m, s in v['select'].items()},
                             report={f'{m:g}': s for m, s in v['report'].items()})
                for c, v in per.items()}
    picked = [v['trained_selected'] for v in per.values() if v['trained_selected'] is not None]
    best = [v['trained_best_on_report'] for v in per.values()
            if v['trained_best_on_report'] is not None]
    # The second-half gain of the pick over the trained factor: what the search bought.
    gain = [v['report'][v['multiplier']] - v['report'][1.0] for v in per.values()
            if 1.0 in v['report']]
    out[method] = dict(per_concept=concepts, trained_selected=sum(picked),
                       trained_best_on_report=sum(best), concepts=len(per),
                       gain_over_trained=float(np.mean(gain)) if gain else None)
  return out


def _own_answers(model, rows, workdir, chat_template: str, max_new_tokens: int = 128):
  """The rows with `output` replaced by this model's own greedy unsteered answer.

  AxBench's negatives are the answers of the model its data was made for (gemma-2); the
  utility loss is about the steered model's own answers, so they are generated here once and
  kept in workdir/own_answers.jsonl.
  """
  from prosv_jax.chat import chat_prompt_ids
  from prosv_jax.sampling import generate_ids
  store = Store(os.path.join(workdir, 'own_answers.jsonl'))
  todo = [x for x in dict.fromkeys(rows['input']) if x not in store]
  for start in range(0, len(todo), 16):
    part = todo[start:start + 16]
    ids = [chat_prompt_ids(model.tokenizer, x, chat_template) for x in part]
    out = generate_ids(model.params, model.cfg, ids,
                       sampling=SamplingConfig(max_new_tokens=max_new_tokens))
    store.add([dict(key=x, response=model.tokenizer.decode(o, skip_special_tokens=True))
               for x, o in zip(part, out)])
  answers = [store.get(x)['response'] for x in rows['input']]
  keep = [bool(a.strip()) for a in answers]
  return rows.assign(output=answers)[keep]


def _utility(config, model, vectors, methods, concepts, descriptions, selected, template):
  """Log-likelihood loss on the model's own answers, and MC/GSM8K accuracy when given."""
  out = {}
  need = int(config.utility.negatives) > 0
  if need:
    table = data.read_concept_table(config.data.source) if config.data.source != 'demo' \
        else data.demo_table()[0]
    rows = utility.negative_rows(table).drop_duplicates('input')
    rows = rows.iloc[:int(config.utility.negatives)]
    if config.utility.own_answers:
      rows = _own_answers(model, rows, config.workdir, template)
  mc = gsm = None
  cap = int(config.utility.max_questions) or None
  if config.utility.multiple_choice:
    mc = utility.read_multiple_choice(config.utility.multiple_choice)[:cap]
  if config.utility.gsm8k:
    gsm = utility.read_gsm8k(config.utility.gsm8k)[:cap]

  def multiplier_of(method, cid) -> float:
    """The factor multiplier a method steers concept cid with (a grid's pick, else 1)."""
    return selected[method][cid]['multiplier'] if grid_of(method) else 1.0

  def steer_of(method, cid) -> dict:
    """The utility functions' keyword arguments: the vectors and concept, or the baselines'
    template (vector methods use their vectors' own)."""
    if method in ('unsteered', 'prompting'):
      return {'chat_template': template}
    v = vectors[vector_set(method)]
    if grid_of(method):
      v = v.scaled(multiplier_of(method, cid))
    return {'vectors': v, 'concept': str(cid)}

  def with_prompt(questions, method, cid):
    """The prompting baseline answers with the concept instruction before each question."""
    if method != 'prompting':
      return questions
    return [dataclasses.replace(q, question=prompts.prompting(q.question, descriptions[cid]))
            for q in questions]

  # Each (method, concept) loss is kept in workdir/utility.jsonl like the generations, so a
  # rerun or another view of the same workdir (results_name, a subset of concepts) reads it
  # instead of scoring the rows again (~2-5 min a method on SmolLM2 on 2 CPU cores).
  store = Store(os.path.join(config.workdir, 'utility.jsonl'))
  plain = None  # unsteered NLL of the rows, the same for every concept

  def loglik_loss(method, cid, s) -> float:
    nonlocal plain
    key = (f'{method}|{cid}|{multiplier_of(method, cid):g}|{len(rows)}|'
           f'{int(bool(config.utility.own_answers))}|{zlib.crc32(template.encode()):08x}')
    if key in store:
      return store.get(key)['loglik_loss']
    if method == 'prompting':  # the cost of the concept instruction in the prompt
      if plain is None:
        plain = utility.loglik_loss(model, rows, **s)['nll_unsteered']
      r = rows.assign(input=[prompts.prompting(x, descriptions[cid]) for x in rows['input']])
      loss = utility.loglik_loss(model, r, **s)['nll_unsteered'] - plain
    else:
      loss = utility.loglik_loss(model, rows, **s)['loss']
    store.add([dict(key=key, loglik_loss=float(loss))])
    return float(loss)

  for method in tqdm(methods, desc='utility', unit='method', dynamic_ncols=True):
    res = {}
    per = [(cid, steer_of(method, cid)) for cid in concepts]
    if method == 'unsteered':
      per = per[:1]  # the same for every concept
    if need:
      losses = [loglik_loss(method, cid, s) for cid, s in per]
      res['loglik_loss'] = float(np.mean(losses))
      res['loglik_loss_std'] = float(np.std(losses))
      res['loglik_loss_per_concept'] = [float(x) for x in losses]
    if mc is not None:
      res['multiple_choice'] = float(np.mean([utility.multiple_choice_accuracy(
          model, with_prompt(mc, method, cid), **s)['accuracy'] for cid, s in per]))
    if gsm is not None:
      res['gsm8k'] = float(np.mean([utility.gsm8k_accuracy(
          model, with_prompt(gsm, method, cid), **s)['accuracy'] for cid, s in per]))
    out[method] = res
  return out


def verdict(results: dict, stats) -> dict:
  """The two questions the method's claim rests on, answered with their intervals:

  harmonic: PrOSV's harmonic mean minus FSSV's (the paired bootstrap of the main table);
    PrOSV is at least FSSV's when the interval lies above 0 and below it when below 0.
  utility: PrOSV's log-likelihood loss minus half of FSSV's, paired over concepts
    (scores.concept_bootstrap); PrOSV keeps at most half of FSSV's utility loss when the
    interval lies below 0.
  An interval that spans 0 does not separate the two: said as such, not rounded to a yes.
  Every FSSV is paired with the PrOSV its difference was taken against (reference_of): the
  default presets' answers are at the top level, those of a training preset evaluated for
  both methods (prosv:P and fssv:P) under presets[P], and any other pair (e.g. the paper's
  FSSV against the study's PrOSV) under across['prosv:P vs fssv'].
  """
  methods = results.get('methods', {})
  out, presets, across = {}, {}, {}
  for fssv, res in methods.items():
    prosv = (res.get('vs_prosv') or {}).get('reference')
    if split_method(fssv)[0] != 'fssv' or not prosv:
      continue
    pair = _verdict_pair(results, prosv, fssv, stats)
    variant = split_method(fssv)[1]
    if (prosv, fssv) == ('prosv', 'fssv'):
      out.update(pair)
    elif split_method(prosv)[1] == variant and variant:
      presets[variant] = pair
    elif pair:
      across[f'{prosv} vs {fssv}'] = pair
  if presets:
    out['presets'] = dict(sorted(presets.items()))
  if across:
    out['across'] = across
  return out


def _verdict_pair(results: dict, prosv: str, fssv: str, stats) -> dict:
  out = {}
  methods = results.get('methods', {})
  vs = (methods.get(fssv) or {}).get('vs_prosv')
  if prosv in methods and vs and vs.get('reference', 'prosv') == prosv:
    out['harmonic'] = dict(prosv=methods[prosv]['mean']['harmonic'],
                           fssv=methods[fssv]['mean']['harmonic'],
                           prosv_minus_fssv=-vs['diff'], ci=[-vs['ci'][1], -vs['ci'][0]])
    out['harmonic']['side'] = scores.side(out['harmonic']['ci'])
  util = results.get('utility') or {}
  per = [(util.get(m) or {}).get('loglik_loss_per_concept') for m in (prosv, fssv)]
  if all(per):
    boot = scores.concept_bootstrap(per[0], per[1], 0.5, int(stats.draws), int(stats.seed),
                                    float(stats.level))
    out['utility'] = dict(prosv=util[prosv]['loglik_loss'], fssv=util[fssv]['loglik_loss'],
                          prosv_minus_half_fssv=boot['value'], ci=boot['ci'],
                          side=scores.side(boot['ci']), concepts=boot['concepts'])
  return out


def evaluate(config, model=None, judge=None) -> dict:
  """Runs (or resumes) the evaluation `config` describes; returns the results dict."""
  check_config(config)
  t0 = time.time()
  from prosv_jax.train.job import make_workdir  # pylint: disable=import-outside-toplevel
  make_workdir(config.workdir)
  methods = parse_methods(config.methods)
  concepts = [int(c) for c in config.data.concepts]
  descriptions = concept_descriptions(config)
  if config.instructions.alpaca_eval:
    pool, origin = prompts.read_alpaca_eval(config.instructions.alpaca_eval), 'alpaca_eval'
  else:
    pool, origin = prompts.held_out_pool(config.data.source), 'held-out dataset instructions'
  count = int(config.instructions.count)
  drawn = {c: prompts.axbench_draw(pool, c, count) for c in concepts}
  needed = sorted({vector_set(m) for m in methods if vector_set(m)})
  for m in needed:  # given folders are read now, a missing one fails before the slow load
    if m in VECTOR_METHODS and config.vectors[m]:
      load_vectors(config.vectors[m])
  if model is None:
    check_spec(config.model)
    model = load_model(config.model, config.dtype)
  vectors = {m: vectors_for(m, config, model) for m in needed}
  setup = Setup(model=model, vectors=vectors, descriptions=descriptions,
                chat_template=baseline_template(config, vectors),
                instructions=drawn,
                samples=int(config.instructions.samples),
                sampling=sampling_config(config),
                batch_size=int(config.generation.batch_size), seed=int(config.generation.seed))
  judge = judge or make_judge(config, model)
  gens = Store(os.path.join(config.workdir, 'generations.jsonl'))
  ratings = Store(os.path.join(config.workdir, 'ratings.jsonl'))
  multipliers = [float(m) for m in config.grid.multipliers]

  groups = [g for cid in concepts for m in methods
            for g in _method_groups(m, cid, multipliers, False)]
  _run_groups(groups, setup, gens, ratings, judge, 'steering')
  selected = {m: select_multipliers(judge, setup, ratings, concepts, multipliers,
                                    method=grid_of(m)) for m in methods if grid_of(m)}
  reported = [_reported_group(m, cid, selected, False) for cid in concepts for m in methods]
  halves = bool(config.judge.halves)
  if halves:
    _judge_halves(reported, setup, gens, ratings, judge, 'steering')
  stats = config.bootstrap
  results = dict(
      config=json.loads(config.to_json_best_effort()), judge=judge.name, concepts=concepts,
      descriptions={str(k): v for k, v in descriptions.items()},
      instructions=dict(source=origin, count=count, samples=setup.samples),
      methods=_method_scores(judge, setup, ratings, methods, concepts, selected, False, stats,
                             halves),
      bootstrap=dict(draws=int(stats.draws), seed=int(stats.seed), level=float(stats.level),
                     resample=scores.BOOTSTRAP_UNITS,
                     reference='prosv' if 'prosv' in methods else None,
                     references='a method with a training preset (name:preset) is compared '
                                'with PrOSV of that preset when it is evaluated, else with '
                                'PrOSV; each difference names its reference',
                     grids='fssv_grid and prosv_grid report on the second half of the '
                           'instructions; their intervals and differences against PrOSV use '
                           'PrOSV on that same second half'),
      grid=_grid_results(selected),
      vectors={m: dict(positions=v.positions, layer=v.layer,
                       factor={str(c): float(v.factor[v.index_of(str(c))]) for c in concepts})
               for m, v in vectors.items()})
  if config.robustness:
    attack = [g for cid in concepts for m in methods
              for g in _method_groups(m, cid, multipliers, True, selected)]
    _run_groups(attack, setup, gens, ratings, judge, 'robustness')
    if halves:
      _judge_halves(attack, setup, gens, ratings, judge, 'robustness')
    results['robustness'] = _method_scores(judge, setup, ratings, methods, concepts, selected,
                                           True, stats, halves)
  if int(config.utility.negatives) > 0 or config.utility.multiple_choice or config.utility.gsm8k:
    results['utility'] = _utility(config, model, vectors, methods, concepts, descriptions,
                                  selected, setup.chat_template)
  results['verdict'] = verdict(results, stats)
  results['wall_s'] = round(time.time() - t0, 1)
  report.write_all(results, config.workdir, config.results_name)
  return results
