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
from prosv_jax.eval.judge import Ratings
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


def test_evaluation_end_to_end_and_resume(tmp_path, tiny):
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

  assert set(results['methods']) == {'unsteered', 'prompting', 'fssv', 'fssv_grid', 'prosv'}
  for name in ('results.json', 'results.md', 'scores.png', 'grid.png', 'generations.jsonl',
               'ratings.jsonl'):
    assert os.path.exists(tmp_path / 'ev' / name), name
  gens = _lines(tmp_path / 'ev' / 'generations.jsonl')
  # main: 2 concepts x (unsteered, prompting, prosv, 3 grid factors incl. fssv at 1) x 4 x 2;
  # attack: 2 x (unsteered, prompting, fssv, prosv, the grid pick) x 4 x 2, the pick may be 1.
  keys = {g['key'] for g in gens}
  assert len(keys) == len(gens)
  main = [g for g in gens if not g['attack']]
  assert len(main) == 2 * 6 * 4 * 2
  assert judge.rated == len(gens)
  # Prompting and attack prompts really carry the rewrites; the judge sees the plain instruction.
  prompting = [g for g in main if g['method'] == 'prompting']
  assert all(g['instruction'] in g['prompt'] and g['prompt'] != g['instruction']
             for g in prompting)
  assert all(g['prompt'] != g['instruction'] for g in gens if g['attack'])

  # Grid arithmetic recomputed from the ratings file.
  ratings = {r['gen']: Ratings(r['concept'], r['instruction'], r['fluency'])
             for r in _lines(tmp_path / 'ev' / 'ratings.jsonl')}
  for cid in (0, 1):
    first, second = scores.split_halves(4)
    pick = {m: scores.mean_harmonic(ratings[f'fssv|{cid}|{m:g}|0|{i}|{s}']
                                    for i in first for s in range(2)) for m in (0.5, 1.0, 2.0)}
    best = scores.select_factor(pick)
    assert results['grid'][str(cid)]['multiplier'] == best
    reported = scores.summarize([ratings[f'fssv|{cid}|{best:g}|0|{i}|{s}']
                                 for i in second for s in range(2)])
    assert results['methods']['fssv_grid']['per_concept'][str(cid)]['harmonic'] == \
        pytest.approx(reported['harmonic'])
  per = [results['methods']['prosv']['per_concept'][str(c)]['harmonic'] for c in (0, 1)]
  assert results['methods']['prosv']['mean']['harmonic'] == pytest.approx(np.mean(per))
  assert results['methods']['prosv']['mean']['harmonic_std'] == pytest.approx(np.std(per))
  assert set(results['robustness']) == set(results['methods'])
  assert results['utility']['unsteered']['loglik_loss'] == pytest.approx(0.0, abs=1e-6)
  assert results['utility']['prosv']['loglik_loss'] != 0.0
  for method in results['methods']:  # user-given files are scored for every method
    assert 0 <= results['utility'][method]['multiple_choice'] <= 1
    assert 0 <= results['utility'][method]['gsm8k'] <= 1
  assert '| PrOSV, trained factor |' in (tmp_path / 'ev' / 'results.md').read_text()

  # A rerun regenerates and rejudges nothing and gives the same results.
  judge2 = ScriptedJudge()
  again = evaluate(config, model, judge2)
  assert judge2.rated == 0
  assert len(_lines(tmp_path / 'ev' / 'generations.jsonl')) == len(gens)
  assert again['methods'] == results['methods']

  # A kill mid-write: half the generations kept plus a torn line; the rerun fills the rest
  # with the same rows (seeded), and only those are judged again.
  gpath = tmp_path / 'ev' / 'generations.jsonl'
  text = gpath.read_text().splitlines(keepends=True)
  gpath.write_text(''.join(text[:len(text) // 2]) + text[len(text) // 2][:20])
  (tmp_path / 'ev' / 'ratings.jsonl').write_text('')
  judge3 = ScriptedJudge()
  resumed = evaluate(config, model, judge3)
  assert judge3.rated == len(gens)
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
