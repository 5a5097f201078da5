"""The steering evaluation end to end on a tiny random model, with a scripted judge: vectors
trained first, every method generated and judged, grid selection, robustness, utility,
results files, resume after a kill, and bad configs."""

import json
import os

import numpy as np
import pytest

from prosv_jax import sweep
from prosv_jax.errors import ProsvError
from prosv_jax.eval import scores
from prosv_jax.eval.config import eval_config
from prosv_jax.eval.evaluate import evaluate, sampling_config
from prosv_jax.eval.judge import Item, Ratings
from prosv_jax.eval.steering import response_part
from prosv_jax.models.load import load_model
from prosv_jax.sampling import SamplingConfig

pytest.importorskip('torch')  # the tiny model is made by transformers' PyTorch classes
pytest.importorskip('matplotlib')

from hf_fixtures import save_tiny_hf_model, save_tiny_tokenizer  # noqa: E402


class ScriptedJudge:
  """Ratings that are a fixed function of the response text, so they can be recomputed."""
  name = 'scripted'

  def __init__(self):
    self.rated = 0

  def rate(self, items, progress=None):
    self.rated += len(items)
    out = []
    for it in items:
      h = sum(map(ord, it.response + it.concept))
      out.append(Ratings(float(h % 3), float((h // 3) % 3), float(1 + (h // 9) % 2)))
    if progress:
      progress(len(items))
    return out


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  folder = tmp_path_factory.mktemp('tiny')
  path, _ = save_tiny_hf_model(folder, 'llama', num_hidden_layers=3, initializer_range=0.1)
  # Choice letters and digits too, so the multiple-choice and GSM8K files can be scored.
  save_tiny_tokenizer(path, words=tuple('hello world the a cat dog sat on mat is happy sad big '
                                        'small red blue one two three and . , ! ? A B C D 0 1 2 '
                                        '3 4 5 6 7 8 9'.split()))
  return str(path), load_model(path)


def config_for(model_path, workdir, **overrides):
  c = eval_config()
  c.model = model_path
  c.layer = 1
  c.workdir = str(workdir)
  c.data.concepts = (0, 1)
  c.train.epochs = 1
  c.train.max_examples = 8
  c.instructions.count = 4
  c.instructions.samples = 2
  c.generation.max_new_tokens = 6
  c.grid.multipliers = (0.5, 1.0, 2.0)
  c.utility.negatives = 4
  return sweep.apply(c, overrides)


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_evaluation_end_to_end_and_resume(tmp_path, tiny, monkeypatch):
  path, model = tiny
  judge = ScriptedJudge()
  mc, gsm = tmp_path / 'mc.jsonl', tmp_path / 'gsm.jsonl'
  mc.write_text('\n'.join(json.dumps(q) for q in (
      {'question': 'the cat sat on the ?', 'choices': ['mat', 'dog'], 'answer': 0},
      {'question': 'one and one is ?', 'choices': ['one', 'two', 'three'], 'answer': 'B'})))
  gsm.write_text(json.dumps({'question': 'one and two ?', 'answer': '#### 3'}))
  config = config_for(path, tmp_path / 'ev', **{'utility.multiple_choice': str(mc),
                                                 'utility.gsm8k': str(gsm)})
  results = evaluate(config, model, judge)

  assert set(results['methods']) == {'unsteered', 'prompting', 'fssv', 'fssv_grid', 'prosv',
                                     'prosv_grid'}
  for name in ('results.json', 'results.md', 'scores.png', 'grid.png', 'generations.jsonl',
               'ratings.jsonl'):
    assert os.path.exists(tmp_path / 'ev' / name), name
  gens = _lines(tmp_path / 'ev' / 'generations.jsonl')
  # main: 2 concepts x (unsteered, prompting, 3 FSSV and 3 PrOSV grid factors incl. 1) x 4 x 2;
  # attack: 2 x (unsteered, prompting, fssv, prosv, the grid picks) x 4 x 2, a pick may be 1.
  keys = {g['key'] for g in gens}
  assert len(keys) == len(gens)
  main = [g for g in gens if not g['attack']]
  assert len(main) == 2 * 8 * 4 * 2
  # Every generation rated whole; the reported ones (a grid: its pick) also by halves.
  records = _lines(tmp_path / 'ev' / 'ratings.jsonl')
  by_part = {p: {r['gen']: r for r in records if r['part'] == p}
             for p in ('whole', 'first', 'second')}
  assert set(by_part['whole']) == keys
  reported = set()
  for cid in (0, 1):
    picks = {m: results['grid'][m]['per_concept'][str(cid)]['multiplier']
             for m in ('fssv_grid', 'prosv_grid')}
    for attack in (0, 1):
      groups = {('unsteered', 1.0), ('prompting', 1.0), ('fssv', 1.0), ('prosv', 1.0),
                ('fssv', picks['fssv_grid']), ('prosv', picks['prosv_grid'])}
      reported |= {f'{m}|{cid}|{x:g}|{attack}|{i}|{s}' for m, x in groups
                   for i in range(4) for s in range(2)}
  assert set(by_part['first']) == set(by_part['second']) == reported
  assert judge.rated == len(gens) + 2 * len(reported)
  # A half is the text of half the response's tokens, rated by the same judge.
  g = next(g for g in main if g['method'] == 'prosv' and len(g['response'].split()) > 2)
  first = response_part(model.tokenizer, g['response'], 'first')
  assert first and first != g['response'] and g['response'].startswith(first.split()[0])
  concept = results['descriptions'][str(g['concept_id'])]
  want = ScriptedJudge().rate([Item(g['instruction'], concept, first)])[0]
  assert by_part['first'][g['key']]['concept'] == want.concept
  # Prompting and attack prompts really carry the rewrites; the judge sees the plain instruction.
  prompting = [g for g in main if g['method'] == 'prompting']
  assert all(g['instruction'] in g['prompt'] and g['prompt'] != g['instruction']
             for g in prompting)
  assert all(g['prompt'] != g['instruction'] for g in gens if g['attack'])

  # Grid arithmetic recomputed from the ratings file.
  ratings = {k: Ratings(r['concept'], r['instruction'], r['fluency'])
             for k, r in by_part['whole'].items()}
  for grid, kind in (('fssv_grid', 'fssv'), ('prosv_grid', 'prosv')):
    for cid in (0, 1):
      first, second = scores.split_halves(4)
      pick = {m: scores.mean_harmonic(ratings[f'{kind}|{cid}|{m:g}|0|{i}|{s}']
                                      for i in first for s in range(2)) for m in (0.5, 1.0, 2.0)}
      best = scores.select_factor(pick)
      got = results['grid'][grid]['per_concept'][str(cid)]
      assert got['multiplier'] == best and got['trained_selected'] == (best == 1.0)
      reported_scores = scores.summarize([ratings[f'{kind}|{cid}|{best:g}|0|{i}|{s}']
                                          for i in second for s in range(2)])
      assert results['methods'][grid]['per_concept'][str(cid)]['harmonic'] == \
          pytest.approx(reported_scores['harmonic'])
    # A grid is compared with PrOSV on the second half of the instructions only.
    r = results['methods'][grid]
    assert r['instructions'] == 'second half'
    assert r['vs_prosv']['diff'] == pytest.approx(
        r['mean']['harmonic'] - results['methods']['prosv']['second_half']['harmonic'])
  for method, r in results['methods'].items():
    low, high = r['mean']['harmonic_ci']
    assert low <= r['mean']['harmonic'] <= high
    assert ('vs_prosv' in r) == (method != 'prosv')
    h = r['response_halves']  # the concept score's change from the first to the second half
    assert h['concept_change']['diff'] == pytest.approx(h['second']['concept']
                                                        - h['first']['concept'])
  assert results['methods']['fssv']['vs_prosv']['diff'] == pytest.approx(
      results['methods']['fssv']['mean']['harmonic']
      - results['methods']['prosv']['mean']['harmonic'])
  per = [results['methods']['prosv']['per_concept'][str(c)]['harmonic'] for c in (0, 1)]
  assert results['methods']['prosv']['mean']['harmonic'] == pytest.approx(np.mean(per))
  assert results['methods']['prosv']['mean']['harmonic_std'] == pytest.approx(np.std(per))
  assert set(results['robustness']) == set(results['methods'])
  assert results['utility']['unsteered']['loglik_loss'] == pytest.approx(0.0, abs=1e-6)
  assert results['utility']['prosv']['loglik_loss'] != 0.0
  for method in results['methods']:  # user-given files are scored for every method
    assert 0 <= results['utility'][method]['multiple_choice'] <= 1
    assert 0 <= results['utility'][method]['gsm8k'] <= 1
  # The verdict: the main table's paired difference, and the utility losses per concept.
  v = results['verdict']
  assert v['harmonic']['prosv_minus_fssv'] == pytest.approx(
      -results['methods']['fssv']['vs_prosv']['diff'])
  assert v['harmonic']['side'] == scores.side(v['harmonic']['ci'])
  p, f = (results['utility'][m]['loglik_loss_per_concept'] for m in ('prosv', 'fssv'))
  assert len(p) == len(f) == 2
  assert v['utility']['prosv_minus_half_fssv'] == pytest.approx(np.mean(p) - 0.5 * np.mean(f))
  table = (tmp_path / 'ev' / 'results.md').read_text()
  assert "Is PrOSV's harmonic mean at least FSSV's?" in table
  assert "Is PrOSV's utility loss at most half of FSSV's?" in table
  assert '| PrOSV, trained factor |' in table and 'Factor grid, PrOSV' in table
  assert 'Response halves' in table

  # A rerun regenerates and rejudges nothing, scores no utility row again (its losses are
  # stored per method and concept) and gives the same results.
  stored = _lines(tmp_path / 'ev' / 'utility.jsonl')
  assert len(stored) == 1 + 5 * 2  # unsteered once; prompting and 4 vector methods x 2
  from prosv_jax.eval import utility

  def no_scoring(*args, **kwargs):
    raise AssertionError('utility rows scored again')

  with monkeypatch.context() as m:
    m.setattr(utility, 'loglik_loss', no_scoring)
    judge2 = ScriptedJudge()
    again = evaluate(config, model, judge2)
  assert judge2.rated == 0
  assert len(_lines(tmp_path / 'ev' / 'generations.jsonl')) == len(gens)
  assert again['methods'] == results['methods']
  assert again['utility'] == results['utility']

  # A kill mid-write: half the generations kept plus a torn line; the rerun fills the rest
  # with the same rows (seeded), and only those are judged again.
  gpath = tmp_path / 'ev' / 'generations.jsonl'
  text = gpath.read_text().splitlines(keepends=True)
  gpath.write_text(''.join(text[:len(text) // 2]) + text[len(text) // 2][:20])
  (tmp_path / 'ev' / 'ratings.jsonl').write_text('')
  judge3 = ScriptedJudge()
  resumed = evaluate(config, model, judge3)
  assert judge3.rated == judge.rated
  assert resumed['methods'] == results['methods']


@pytest.mark.parametrize('overrides, match', [
    ({'methods': 'prosv,dexperts'}, 'dexperts'),
    ({'judge.kind': 'gpt5'}, 'judge.kind'),
    ({'instructions.count': 1}, 'at least 2'),
    ({'grid.multipliers': (0.0, 1.0)}, 'grid.multipliers'),
    ({'data.concepts': (0, 99)}, '99'),
    ({'instructions.alpaca_eval': '/nonexistent.json'}, 'AlpacaEval'),
    ({'generation.top_k': -1}, 'generation.top_k'),
    ({'generation.top_p': 0.0}, 'generation.top_p'),
    ({'bootstrap.draws': 10}, 'bootstrap.draws'),
    ({'methods': 'prosv_grid', 'instructions.count': 1}, 'prosv_grid selects'),
    ({'results_name': '../elsewhere'}, 'results_name'),
])
def test_bad_eval_configs_fail_before_generation(tmp_path, tiny, overrides, match):
  path, model = tiny
  with pytest.raises(ProsvError, match=match):
    evaluate(config_for(path, tmp_path / 'bad', **overrides), model, ScriptedJudge())
  assert not os.path.exists(tmp_path / 'bad' / 'generations.jsonl')


def test_sampling_defaults_are_the_papers():
  """The paper's generate() calls ran with HF's sampling defaults: T 1, top-k 50, top-p 1."""
  assert sampling_config(eval_config()) == SamplingConfig(max_new_tokens=128, temperature=1.0,
                                                          top_k=50, top_p=1.0)


def test_concept10_preset():
  """configs/eval.py:concept10 is the documented run; its values pass the config checks."""
  import importlib.util
  from paths import REPO
  from prosv_jax.eval.evaluate import check_config
  spec = importlib.util.spec_from_file_location('eval_cfg', REPO / 'configs' / 'eval.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config('concept10')
  assert c.data.concepts == tuple(range(10)) and c.data.source.endswith('prod_2b_l10_v1')
  assert (c.instructions.count, c.instructions.samples) == (20, 2)
  assert c.methods.split(',') == ['unsteered', 'prompting', 'fssv', 'fssv_grid', 'prosv',
                                  'prosv_grid']
  check_config(c)
  assert module.get_config().data.concepts == (0,)
  with pytest.raises(ProsvError, match='configs/eval.py:concept10'):
    module.get_config('concept100')


def test_response_halves_split_at_the_token_midpoint(tiny):
  _, model = tiny
  tok = model.tokenizer
  text = tok.decode(tok.encode('the cat sat on the mat', add_special_tokens=False))
  first, second = (response_part(tok, text, p) for p in ('first', 'second'))
  n = len(tok.encode(text, add_special_tokens=False))
  assert len(tok.encode(first, add_special_tokens=False)) == n // 2
  assert len(tok.encode(second, add_special_tokens=False)) == n - n // 2
  assert response_part(tok, text, 'whole') == text
  assert response_part(tok, '', 'first') == response_part(tok, '', 'second') == ''
  with pytest.raises(ValueError, match='part'):
    response_part(tok, text, 'middle')


def test_methods_with_a_training_preset(tmp_path, tiny, monkeypatch):
  """'prosv:P' evaluates PrOSV vectors trained with preset P beside the default presets' own;
  FSSV of P is compared with PrOSV of P, PrOSV of P with the default PrOSV, and the verdict
  answers for P too."""
  from prosv_jax.train import config as train_config
  path, model = tiny
  tiny_row = dict(beta=0.5, factor_lr=2.0, direction_scale=1.0, direction_lr=0.01, epochs=1,
                  batch_size=4)
  monkeypatch.setitem(train_config.VARIANTS, 'tinyp', train_config.Variant(
      path, 1, model.cfg.hidden_size, tiny_row, dict(tiny_row, beta=2.0)))
  config = config_for(path, tmp_path / 'ev', **{
      'methods': 'unsteered,prosv,fssv,prosv:tinyp,fssv:tinyp,prosv_grid:tinyp',
      'robustness': False, 'judge.halves': False})
  results = evaluate(config, model, ScriptedJudge())

  methods = results['methods']
  assert list(methods) == ['unsteered', 'prosv', 'fssv', 'prosv:tinyp', 'fssv:tinyp',
                           'prosv_grid:tinyp']
  # Each vector set trained in its own folder, the preset's with the preset's init.
  for name in ('train_prosv', 'train_fssv', 'train_prosv-tinyp', 'train_fssv-tinyp'):
    assert os.path.exists(tmp_path / 'ev' / name / 'concept0' / 'summary.json'), name
  with open(tmp_path / 'ev' / 'train_prosv-tinyp' / 'concept0' / 'config.json') as f:
    assert json.load(f)['steer']['beta'] == 0.5
  assert set(results['vectors']) == {'prosv', 'fssv', 'prosv:tinyp', 'fssv:tinyp'}
  assert results['vectors']['prosv:tinyp']['factor'] != results['vectors']['prosv']['factor']
  gens = _lines(tmp_path / 'ev' / 'generations.jsonl')
  grid = {(g['method'], g['multiplier']) for g in gens if g['method'].endswith(':tinyp')}
  assert grid == {('prosv:tinyp', 0.5), ('prosv:tinyp', 1.0), ('prosv:tinyp', 2.0),
                  ('fssv:tinyp', 1.0)}
  # References: a preset's FSSV against the preset's PrOSV, that PrOSV against the default one.
  mean = {m: r['mean']['harmonic'] for m, r in methods.items()}
  assert methods['fssv:tinyp']['vs_prosv']['reference'] == 'prosv:tinyp'
  assert methods['fssv:tinyp']['vs_prosv']['diff'] == pytest.approx(
      mean['fssv:tinyp'] - mean['prosv:tinyp'])
  assert methods['prosv:tinyp']['vs_prosv']['reference'] == 'prosv'
  assert methods['fssv']['vs_prosv']['reference'] == 'prosv'
  assert methods['prosv_grid:tinyp']['vs_prosv']['reference'] == 'prosv:tinyp'
  assert 'vs_prosv' not in methods['prosv']
  v = results['verdict']
  assert v['harmonic']['prosv_minus_fssv'] == pytest.approx(mean['prosv'] - mean['fssv'])
  p = v['presets']['tinyp']
  assert p['harmonic']['prosv_minus_fssv'] == pytest.approx(
      mean['prosv:tinyp'] - mean['fssv:tinyp'])
  assert len(p['utility']['ci']) == 2
  # Any pair of evaluated methods from the stores (launch/pair.py --eval): the verdict's own
  # difference and interval for the verdict's pair, and pairs the tables do not hold.
  from prosv_jax.eval.steering import stored_difference
  d = stored_difference(str(tmp_path / 'ev'), 'prosv:tinyp', 'fssv:tinyp')
  assert d['harmonic']['diff'] == pytest.approx(p['harmonic']['prosv_minus_fssv'])
  assert d['harmonic']['ci'] == pytest.approx(p['harmonic']['ci'])
  loss = results['utility']
  assert d['utility']['diff'] == pytest.approx(
      np.mean(loss['prosv:tinyp']['loglik_loss_per_concept'])
      - np.mean(loss['fssv:tinyp']['loglik_loss_per_concept']))
  one = stored_difference(str(tmp_path / 'ev'), 'fssv:tinyp', 'fssv', concepts=[1])
  per = {m: methods[m]['per_concept']['1']['harmonic'] for m in ('fssv:tinyp', 'fssv')}
  assert one['harmonic']['diff'] == pytest.approx(per['fssv:tinyp'] - per['fssv'])
  with pytest.raises(ProsvError, match='factor grid'):
    stored_difference(str(tmp_path / 'ev'), 'prosv_grid:tinyp', 'prosv')
  with pytest.raises(ProsvError, match='not among'):
    stored_difference(str(tmp_path / 'ev'), 'prompting', 'prosv')
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, 'launch/pair.py', f'--eval={tmp_path / "ev"}',
                        'prosv:tinyp', 'fssv:tinyp'], cwd=root, check=True, capture_output=True,
                       text=True).stdout
  assert f'= {d["harmonic"]["diff"]:+.3f} [{d["harmonic"]["ci"][0]:+.3f},' in out
  assert 'utility loss (nats/token):' in out
  table = (tmp_path / 'ev' / 'results.md').read_text()
  assert "Is PrOSV's harmonic mean at least FSSV's (preset tinyp)?" in table
  assert '| FSSV, trained factor (preset tinyp) |' in table
  assert '(vs prosv:tinyp)' in table and 'Factor grid, PrOSV (preset tinyp)' in table

  # A subset of the concepts (e.g. those no selection saw) reported from the same stores under
  # another name: nothing generated or judged again, results.* left as they were.
  before = (tmp_path / 'ev' / 'results.json').read_text()
  judge = ScriptedJudge()
  sub = evaluate(sweep.apply(config, {'data.concepts': (1,), 'results_name': 'concept1'}),
                 model, judge)
  assert judge.rated == 0 and sub['concepts'] == [1]
  assert (tmp_path / 'ev' / 'results.json').read_text() == before
  for name in ('concept1.json', 'concept1.md', 'concept1_scores.png', 'concept1_grid.png'):
    assert os.path.exists(tmp_path / 'ev' / name), name
  assert sub['methods']['prosv:tinyp']['per_concept']['1'] == \
      methods['prosv:tinyp']['per_concept']['1']

  # The default FSSV against the preset's PrOSV when that is the one PrOSV named: the same
  # stores, its difference and verdict under 'across'.
  mixed = evaluate(sweep.apply(config, {'methods': 'unsteered,fssv,prosv:tinyp',
                                        'results_name': 'mixed'}), model, judge)
  assert judge.rated == 0
  vs = mixed['methods']['fssv']['vs_prosv']
  assert vs['reference'] == 'prosv:tinyp'
  assert vs['diff'] == pytest.approx(mean['fssv'] - mean['prosv:tinyp'])
  across = mixed['verdict']['across']['prosv:tinyp vs fssv']
  assert across['harmonic']['prosv_minus_fssv'] == pytest.approx(-vs['diff'])
  assert 'harmonic' not in mixed['verdict'] and 'presets' not in mixed['verdict']
  table = (tmp_path / 'ev' / 'mixed.md').read_text()
  assert "at least FSSV's (prosv:tinyp against fssv)?" in table


@pytest.mark.parametrize('methods, match', [
    ('unsteered:smollm2', 'has no vectors'),
    ('prosv:nope', 'unknown training preset'),
    ('prosv,prosv', 'twice'),
    ('prosv:gemma3_270m', 'trains on'),
])
def test_bad_training_presets_fail_before_generation(tmp_path, tiny, methods, match):
  path, model = tiny
  with pytest.raises(ProsvError, match=match):
    evaluate(config_for(path, tmp_path / 'bad', methods=methods), model, ScriptedJudge())
  assert not os.path.exists(tmp_path / 'bad' / 'generations.jsonl')


def test_offline_judge_of_a_base_model_names_the_fluency_model_fix(tiny, tmp_path):
  # gemma3-270m is a base model: no chat template to score fluency under. The judge says which
  # key fixes it, and with that key it rates fluency with the named model instead.
  import types
  from prosv_jax.eval.evaluate import make_judge
  from prosv_jax.eval.offline_judge import default_calibration_path
  path, model = tiny
  base = types.SimpleNamespace(tokenizer=types.SimpleNamespace(chat_template=None))
  c = config_for(path, tmp_path)
  c.model = 'gemma3-270m'
  with pytest.raises(ProsvError, match='judge.fluency_model'):
    make_judge(c, base)
  c.judge.fluency_model = path
  c.judge.calibration = default_calibration_path('smollm2-135m-instruct')
  judge = make_judge(c, base)
  assert judge.model is not base and judge.model.tokenizer.chat_template
