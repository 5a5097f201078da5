"""Joint training on a tiny random model: multi-concept, the block-L bank, resume, bad input."""

import io
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

pytest.importorskip('torch')  # the tiny model is made by transformers' PyTorch classes

from prosv_jax import sweep  # noqa: E402
from prosv_jax.train import optim  # noqa: E402
from prosv_jax.train import step as train_step  # noqa: E402
from prosv_jax.artifacts import load_vectors  # noqa: E402
from prosv_jax.train.config import base_config  # noqa: E402
from prosv_jax.errors import ProsvError  # noqa: E402
from prosv_jax.train.job import heldout_figures, train_and_export  # noqa: E402
from prosv_jax.train.trainer import Trainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(model_path, workdir, **overrides):
  c = base_config()
  c.model = model_path
  c.layer = 1
  c.workdir = str(workdir)
  c.data.concepts = (0,)
  c.data.max_examples = 8
  c.data.max_response_tokens = 24
  c.train.batch_size = 4
  c.train.epochs = 2
  c.train.checkpoint_every = 2
  return sweep.apply(c, overrides)


def final_params(workdir):
  v = load_vectors(os.path.join(workdir, 'vectors'))
  return v.factor, v.direction


@pytest.mark.parametrize('positions', ['p2+s2', 'all'])
def test_multi_concept_equals_single_concept(tmp_path, tiny_model, tiny_model_path, positions):
  together = train_and_export(tiny_config(tiny_model_path, tmp_path / 'k3', positions=positions,
                                          **{'data.concepts': (0, 1, 2)}), tiny_model)
  f3, d3 = final_params(tmp_path / 'k3')
  for k, cid in enumerate((0, 1, 2)):
    train_and_export(tiny_config(tiny_model_path, tmp_path / f'c{cid}', positions=positions,
                                 **{'data.concepts': (cid,)}), tiny_model)
    f1, d1 = final_params(tmp_path / f'c{cid}')
    np.testing.assert_allclose(f3[k], f1[0], rtol=1e-5)
    np.testing.assert_allclose(d3[k], d1[0], rtol=1e-4, atol=1e-6)
  assert len(together['final_loss']) == 3
  assert not np.allclose(d3[0], d3[1])  # the concepts really learnt different things


def test_bank_equals_recomputing(tmp_path, tiny_model, tiny_model_path):
  banked = train_and_export(tiny_config(tiny_model_path, tmp_path / 'bank'), tiny_model)
  fresh = train_and_export(tiny_config(tiny_model_path, tmp_path / 'nobank',
                                       **{'train.cache_hidden': False}), tiny_model)
  assert banked['hidden_cache'] and not fresh['hidden_cache']
  fb, db = final_params(tmp_path / 'bank')
  fr, dr = final_params(tmp_path / 'nobank')
  np.testing.assert_allclose(fb, fr, rtol=1e-5)
  np.testing.assert_allclose(db, dr, rtol=1e-4, atol=1e-6)
  over = train_and_export(tiny_config(tiny_model_path, tmp_path / 'over',
                                      **{'train.cache_budget_gb': 1e-9}), tiny_model)
  assert not over['hidden_cache']  # over budget: recompute, same job otherwise


def test_training_lowers_the_loss_on_a_fixed_batch(tmp_path, tiny_model, tiny_model_path):
  config = tiny_config(tiny_model_path, tmp_path / 'w', **{'train.epochs': 6})
  trainer = Trainer(config, tiny_model)
  batch = trainer.make_batch(list(range(8)))
  batch.pop('rows')

  def loss(params):
    value, _ = train_step.loss_fn(params, tiny_model.params, tiny_model.cfg, 1,
                                  trainer.positions, 'lang', 1, batch, None,
                                  trainer.response_width(batch))
    return float(value)

  before = loss(trainer.init_state()['steer'])
  train_and_export(config, tiny_model)
  after = loss(load_vectors(os.path.join(config.workdir, 'vectors')).params())
  assert after < before - 0.05, (before, after)


def _saved_residual_bytes(fn, *args) -> int:
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(fn, *args)
  total = 0
  for dtype, shape in re.findall(r'(f32|bf16|i32|bool)\[([\d,]*)\]', out.getvalue()):
    size = int(np.prod([int(d) for d in shape.split(',') if d])) if shape else 1
    total += size * (2 if dtype == 'bf16' else 1 if dtype == 'bool' else 4)
  return total


def test_backward_keeps_no_activations_of_blocks_below_the_layer(tmp_path, tiny_model,
                                                                  tiny_model_path):
  """Recomputing blocks 0..L inside the loss saves no more for the backward pass than starting
  from a precomputed block-L output: autodiff never reaches the lower blocks."""
  trainer = Trainer(tiny_config(tiny_model_path, tmp_path / 'r'), tiny_model)
  batch = trainer.make_batch(list(range(4)))
  batch.pop('rows')
  width = trainer.response_width(batch)
  params = trainer.init_state()['steer']
  m, cfg = tiny_model.params, tiny_model.cfg

  def loss_at(layer, h_low):
    return lambda p: train_step.loss_fn(p, m, cfg, layer, trainer.positions, 'lang', 1, batch,
                                        h_low, width)[0]

  h_low = train_step.lower_hidden(m, cfg, 1, batch['tokens'], batch['length'])
  from_bank = _saved_residual_bytes(loss_at(1, h_low), params)
  recompute = _saved_residual_bytes(loss_at(1, None), params)
  assert from_bank > 0
  assert recompute <= from_bank + h_low.size * 4
  # A lower steering layer has more blocks above it, hence more saved activations.
  assert _saved_residual_bytes(loss_at(0, None), params) > recompute


def test_non_finite_loss_stops_with_the_step_and_saves(tmp_path, tiny_model, tiny_model_path,
                                                       monkeypatch):
  # beta=inf is refused up front now; a huge finite beta with the bound off overflows the loss.
  monkeypatch.setattr(optim, 'MAX_PARAM', float('inf'))
  config = tiny_config(tiny_model_path, tmp_path / 'nan', **{'steer.beta': 1e36,
                                                         'steer.direction_scale': 1e3})
  with pytest.raises(ProsvError, match=r'diverged at step 1: non-finite loss or gradient; '
                                       r'the last good state \(step 0\) is saved'):
    train_and_export(config, tiny_model)
  assert os.listdir(tmp_path / 'nan' / 'checkpoints')


def test_exploding_factor_stops_with_the_last_good_state(tmp_path, tiny_model, tiny_model_path,
                                                         monkeypatch):
  # The init factor is beta * sqrt(64) = 32; one Adam step of LR 100 takes it past 40 either way.
  monkeypatch.setattr(optim, 'MAX_PARAM', 40.0)
  config = tiny_config(tiny_model_path, tmp_path / 'big', **{'optim.factor_lr': 100.0})
  with pytest.raises(ProsvError, match=r'diverged at step 1: the steering vector exploded'):
    train_and_export(config, tiny_model)
  restored = ocp.CheckpointManager(str(tmp_path / 'big' / 'checkpoints'))
  assert restored.latest_step() == 0  # the init, kept as the last good state


@pytest.mark.parametrize('overrides,message', [
    ({'train.loss': 'mse'}, "train.loss='mse'; use one of lang, simpo"),
    ({'positions': 'first2'}, 'valid forms'),
    ({'layer': 3}, 'pick a layer in 0..2'),
    ({'data.concepts': (7,)}, 'concept'),
    ({'data.concepts': ()}, 'data.concepts is empty'),
    ({'train.batch_size': 0}, 'train.batch_size=0'),
    ({'data.source': '/nonexistent/data.parquet'}, 'nonexistent'),
    ({'steer.init': 'rms'}, "steer.init='rms'; use width"),
    ({'steer.residual_ref': 0.0}, 'steer.residual_ref=0.0; use the positive'),
])
def test_bad_configs_are_rejected_before_compute(tmp_path, tiny_model, tiny_model_path,
                                                  overrides, message):
  with pytest.raises(ProsvError, match=re.escape(message) if '(' not in message else message):
    Trainer(tiny_config(tiny_model_path, tmp_path / 'bad', **overrides), tiny_model)


def test_changed_config_in_an_existing_workdir_is_refused(tmp_path, tiny_model, tiny_model_path):
  train_and_export(tiny_config(tiny_model_path, tmp_path / 'w'), tiny_model)
  with pytest.raises(ProsvError, match='differs in: optim'):
    train_and_export(tiny_config(tiny_model_path, tmp_path / 'w', **{'optim.factor_lr': 3.0}),
                     tiny_model)


def _train_cmd(model_path, workdir):
  return [sys.executable, os.path.join(ROOT, 'launch', 'train.py'),
          f'--config={os.path.join(ROOT, "configs", "prosv.py")}', f'--config.model={model_path}',
          '--config.layer=1', f'--config.workdir={workdir}', '--config.data.concepts=0,1',
          '--config.data.max_examples=8', '--config.data.max_response_tokens=16',
          '--config.train.batch_size=4', '--config.train.epochs=20',
          '--config.train.checkpoint_every=5']


def test_killed_run_resumes_to_the_same_parameters(tmp_path, tiny_model_path):
  """SIGKILL a real training process mid-run, rerun the same command, compare with a run that
  was never interrupted."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  straight = tmp_path / 'straight'
  subprocess.run(_train_cmd(tiny_model_path, straight), check=True, env=env,
                 capture_output=True, timeout=600)
  killed = tmp_path / 'killed'
  proc = subprocess.Popen(_train_cmd(tiny_model_path, killed), env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  metrics = killed / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 13:
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'the run ended before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / 'summary.json').exists()
  steps = [int(s) for s in os.listdir(killed / 'checkpoints') if s.isdigit()]
  assert steps and max(steps) < 40
  result = subprocess.run(_train_cmd(tiny_model_path, killed), check=True, env=env,
                          capture_output=True, text=True, timeout=600)
  assert f'resuming from step {max(steps)}' in result.stdout
  f1, d1 = final_params(straight)
  f2, d2 = final_params(killed)
  np.testing.assert_allclose(f2, f1, rtol=1e-6)
  np.testing.assert_allclose(d2, d1, rtol=1e-6, atol=1e-8)
  lines = [json.loads(x) for x in (killed / 'metrics.jsonl').read_text().splitlines()]
  assert [x['step'] for x in lines] == list(range(1, 41))  # no gap, no duplicate


def test_simpo_loss_matches_the_formula():
  rng = np.random.default_rng(0)
  logp = jnp.asarray(-rng.random((4, 5)), jnp.float32)  # 2 pairs: rows [w0, w1, l0, l1]
  present = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]],
                        bool)
  logp = jnp.where(present, logp, 0.0)
  ref = jnp.asarray([-3.0, -9.0, -7.5, -2.0])
  concept = jnp.asarray([0, 1, 0, 1])
  got = np.asarray(train_step.simpo_loss(logp, present, concept, ref, 2))
  lp, n = np.asarray(logp).sum(-1), np.asarray(present).sum(-1)
  for k in range(2):
    w, l = k, k + 2
    r = max(float(ref[l] - ref[w]), 1.0)
    margin = r / n[w] * lp[w] - lp[l] / n[l]
    np.testing.assert_allclose(got[k], np.log1p(np.exp(-margin)), rtol=1e-5)


def test_simpo_training_runs_against_the_models_own_answers(tmp_path, tiny_model,
                                                              tiny_model_path):
  summary = train_and_export(tiny_config(tiny_model_path, tmp_path / 's',
                                         **{'train.loss': 'simpo'}), tiny_model)
  assert summary['loss_kind'] == 'simpo' and np.isfinite(summary['final_loss']).all()
  lines = [json.loads(x) for x in (tmp_path / 's' / 'metrics.jsonl').read_text().splitlines()]
  assert len(lines) == summary['total_steps']


def test_chunked_head_equals_full_logits(tiny_model):
  m = tiny_model
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(37, m.cfg.hidden_size)), jnp.float32)
  target = jnp.asarray(rng.integers(0, m.cfg.vocab_size, 37), jnp.int32)
  from prosv_jax.models import transformer
  full = jax.nn.log_softmax(transformer.head(m.params, m.cfg, h))[jnp.arange(37), target]
  for floats in (2 ** 25, 16 * m.cfg.vocab_size):  # one chunk; 3 chunks with a padded tail
    got = train_step.token_logprobs(m.params, m.cfg, h, target, chunk_floats=floats)
    np.testing.assert_allclose(np.asarray(got), np.asarray(full), rtol=1e-5, atol=1e-5)
    g_full = jax.grad(lambda x: jax.nn.log_softmax(transformer.head(m.params, m.cfg, x))[
        jnp.arange(37), target].sum())(h)
    g = jax.grad(lambda x: train_step.token_logprobs(m.params, m.cfg, x, target,
                                                     chunk_floats=floats).sum())(h)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_full), rtol=1e-4, atol=1e-6)


def test_remat_gives_the_same_parameters(tmp_path, tiny_model, tiny_model_path):
  train_and_export(tiny_config(tiny_model_path, tmp_path / 'a'), tiny_model)
  train_and_export(tiny_config(tiny_model_path, tmp_path / 'b', **{'train.remat': True}),
                   tiny_model)
  fa, da = final_params(tmp_path / 'a')
  fb, db = final_params(tmp_path / 'b')
  np.testing.assert_allclose(fb, fa, rtol=1e-5)
  np.testing.assert_allclose(db, da, rtol=1e-4, atol=1e-6)


def test_train_returns_the_exported_vectors_and_its_model(tmp_path, tiny_model, tiny_model_path):
  from prosv_jax.train.job import train
  config = tiny_config(tiny_model_path, tmp_path / 'r', **{'data.concepts': (0, 1)})
  trained = train(config, tiny_model)
  assert trained.model is tiny_model  # what launch/train.py shows generations with, no reload
  saved = load_vectors(trained.summary['artifacts']['vectors'])
  np.testing.assert_array_equal(trained.vectors.factor, saved.factor)
  np.testing.assert_array_equal(trained.vectors.direction, saved.direction)
  for key in ('layer', 'positions', 'model', 'chat_template', 'concepts'):
    assert getattr(trained.vectors, key) == getattr(saved, key), key
  assert [c['concept_id'] for c in saved.concepts] == [0, 1]
  assert saved.config['training']['train']['epochs'] == 2
  stopped = train(tiny_config(tiny_model_path, tmp_path / 's'), tiny_model, max_steps=1)
  assert stopped.vectors is None and 'artifacts' not in stopped.summary


def test_training_prompts_use_the_config_template_without_touching_the_tokenizer(
    tiny_model, tiny_model_path, tmp_path):
  from prosv_jax.chat import chat_prompt_ids
  tok = tiny_model.tokenizer
  own = tok.chat_template
  trainer = Trainer(tiny_config(tiny_model_path, tmp_path / 'g', chat_template='gemma'),
                    tiny_model)
  example = trainer.concepts.examples[0][0]
  assert example.prompt.tolist() == chat_prompt_ids(tok, example.instruction, 'gemma')
  assert example.prompt.tolist() != chat_prompt_ids(tok, example.instruction)
  assert tok.chat_template == own  # the shared tokenizer keeps its own template


def test_summary_reports_diagnostics_per_concept(tmp_path, tiny_model, tiny_model_path):
  from paths import CONCEPT10
  from prosv_jax.train.concepts import heldout_examples
  if not (CONCEPT10 / 'latent_eval_data.parquet').exists():
    pytest.skip('AxBench Concept10 data not beside the repo')
  c = tiny_config(tiny_model_path, tmp_path / 'diag', **{
      'data.source': str(CONCEPT10), 'data.concepts': (0, 4), 'data.max_examples': 8})
  summary = train_and_export(c, tiny_model)
  keys = ('direction_cosine_to_init', 'direction_moved', 'train_loss', 'train_loss_unsteered',
          'heldout_loss', 'heldout_loss_unsteered', 'steered_residual_rms', 'edit_rms_ratio')
  for key in keys:
    assert len(summary[key]) == 2 and all(np.isfinite(summary[key])), key
  assert all(-1 <= x < 1 for x in summary['direction_cosine_to_init'])
  assert all(x > 0 for x in summary['direction_moved'])

  # The numbers are the jitted loss on one batch of all the rows, by hand.
  trainer = Trainer(c, tiny_model)
  params = {k: jnp.asarray(v) for k, v in load_vectors(os.path.join(c.workdir,
                                                                     'vectors')).params().items()}
  held = heldout_examples(c, tiny_model.tokenizer)
  assert [len(h) for h in held] == [36, 36]  # AxBench's held-out positives of each concept

  def per_concept(p, examples):
    batch = {k: jnp.asarray(v) for k, v in data_pad(examples, trainer).items()}
    width = trainer.response_width(batch)
    return np.asarray(train_step.loss_fn(p, tiny_model.params, tiny_model.cfg, 1,
                                         trainer.positions, 'lang', 2, batch, None, width)[1])

  unsteered = {**params, 'factor': jnp.zeros(2)}
  flat_held = held[0] + held[1]
  np.testing.assert_allclose(summary['heldout_loss'], per_concept(params, flat_held), rtol=1e-4)
  np.testing.assert_allclose(summary['heldout_loss_unsteered'], per_concept(unsteered, flat_held),
                             rtol=1e-4)
  np.testing.assert_allclose(summary['train_loss'], per_concept(params, trainer.flat), rtol=1e-4)
  assert trainer.eval_loss(params, held[1]) == [None, pytest.approx(summary['heldout_loss'][1],
                                                                    rel=1e-4)]
  # Per held-out example: each example's own loss by hand, the same whether the rows are
  # packed or right-padded, adding up to the per-concept figures; and measured again from the
  # exported vectors (job.heldout_figures, for runs from before summaries kept them).
  each = summary['heldout_examples']
  assert each['concept'] == [0] * 36 + [1] * 36
  for i in (0, 7, 40, 71):
    ex = flat_held[i]
    assert each['loss'][i] == pytest.approx(per_concept(params, [ex])[ex.concept], rel=1e-4)
    assert each['unsteered_loss'][i] == pytest.approx(
        per_concept(unsteered, [ex])[ex.concept], rel=1e-4)
  tokens, loss = np.asarray(each['tokens']), np.asarray(each['loss'])
  for k in range(2):
    part = np.asarray(each['concept']) == k
    assert np.sum(loss[part] * tokens[part]) / np.sum(tokens[part]) == pytest.approx(
        summary['heldout_loss'][k], rel=1e-4)
  packed = Trainer(tiny_config(tiny_model_path, tmp_path / 'diag_packed', **{
      'data.source': str(CONCEPT10), 'data.concepts': (0, 4), 'data.max_examples': 8,
      'data.pack': 'on'}), tiny_model)
  assert packed.packed and not trainer.packed
  np.testing.assert_allclose(packed.evaluate(params, flat_held)['example_loss'], each['loss'],
                             rtol=1e-4)
  again = heldout_figures(c.workdir, tiny_model)
  np.testing.assert_allclose(again['heldout_examples']['loss'], each['loss'], rtol=1e-5)
  assert again['heldout_examples']['tokens'] == each['tokens']
  assert again['heldout_loss'] == pytest.approx(summary['heldout_loss'], rel=1e-5)
  # edit RMS over the block-1 RMS at the steered (p2+s2) positions, by hand
  b = data_pad(trainer.flat, trainer)
  h = np.asarray(train_step.lower_hidden(tiny_model.params, tiny_model.cfg, 1,
                                         jnp.asarray(b['tokens']), jnp.asarray(b['length'])))
  from prosv_jax import steer
  mask = np.asarray(steer.position_mask(trainer.positions, b['prompt_len'], b['length'],
                                        b['tokens'].shape[1]))
  for k in range(2):
    rows = mask & (b['concept'] == k)[:, None]
    rms = np.sqrt(np.mean(np.square(h[rows])))
    edit = abs(float(params['factor'][k])) * np.linalg.norm(params['direction'][k]) / 8.0
    assert summary['edit_rms_ratio'][k] == pytest.approx(edit / rms, rel=1e-4)


@pytest.mark.parametrize('cache_hidden', [True, False])
def test_residual_rms_by_hand(tmp_path, tiny_model, tiny_model_path, cache_hidden):
  """Per concept, the RMS of block-L outputs over every token but each example's first,
  each example run alone (no padding); the same from the bank or recomputed."""
  c = tiny_config(tiny_model_path, tmp_path / 'r', **{'data.concepts': (0, 1),
                                                      'train.cache_hidden': cache_hidden})
  trainer = Trainer(c, tiny_model)
  per_concept, pooled = trainer.residual_rms()
  sq, n = np.zeros(2), np.zeros(2)
  for ex in trainer.flat:
    tokens = np.concatenate([ex.prompt, ex.response])[None]
    h = np.asarray(train_step.lower_hidden(tiny_model.params, tiny_model.cfg, 1,
                                           jnp.asarray(tokens), jnp.asarray([ex.length])))
    sq[ex.concept] += np.square(h[0, 1:].astype(np.float64)).sum()
    n[ex.concept] += h[0, 1:].size
  np.testing.assert_allclose(per_concept, np.sqrt(sq / n), rtol=1e-5)
  assert pooled == pytest.approx(np.sqrt(sq.sum() / n.sum()), rel=1e-5)


def test_residual_init_is_the_width_init_in_residual_units(tmp_path, tiny_model, tiny_model_path):
  """steer.init='residual' with (beta, factor LR) trains exactly as 'width' with both times
  the residual RMS r: the init and Adam's factor step are scaled together."""
  lr, ref = 0.5, 0.5
  res = train_and_export(tiny_config(tiny_model_path, tmp_path / 'res', **{
      'steer.init': 'residual', 'steer.residual_ref': ref, 'steer.beta': 2.0,
      'optim.factor_lr': lr}), tiny_model)
  (r,) = res['factor_unit']
  assert r == pytest.approx(res['residual_rms'] / ref, rel=1e-5)
  assert r != pytest.approx(1.0, abs=0.05)
  plain = train_and_export(tiny_config(tiny_model_path, tmp_path / 'plain', **{
      'steer.beta': 2.0 * r, 'optim.factor_lr': lr * r}), tiny_model)
  assert plain['factor_unit'] == [1.0] and plain['init_rule'] == 'width'
  f_res, d_res = final_params(tmp_path / 'res')
  f_plain, d_plain = final_params(tmp_path / 'plain')
  np.testing.assert_allclose(f_res, f_plain, rtol=1e-4)
  np.testing.assert_allclose(d_res, d_plain, rtol=1e-4, atol=1e-6)
  # and the factor did move, by about the LR in residual units per step
  assert abs(f_res[0] - 2.0 * r * np.sqrt(tiny_model.cfg.hidden_size)) > 0.1 * lr * r


def test_demo_source_has_no_heldout_split(tiny_model):
  from prosv_jax.train.concepts import heldout_examples
  assert heldout_examples(base_config(), tiny_model.tokenizer) is None


def data_pad(examples, trainer):
  from prosv_jax import data
  return data.pad_batch(examples, trainer.pad_id, 16)


def test_padded_steps_after_the_first_epoch_reuse_its_shapes(tmp_path, tiny_model,
                                                              tiny_model_path):
  """Right-padded steps are planned so that nothing compiles after the first epoch: every
  later step's (rows, width, response width) is one the first epoch ran, wide enough for it."""
  c = tiny_config(tiny_model_path, tmp_path / 'plan', **{
      'data.concepts': (0, 1), 'data.max_examples': 24, 'data.max_response_tokens': 0,
      'data.pack': 'off', 'data.pad_multiple': 4, 'train.epochs': 8,
      'train.checkpoint_every': 100})
  trainer = Trainer(c, tiny_model)
  spe, shapes = trainer.steps_per_epoch, trainer.step_shapes
  assert len(shapes) == trainer.total_steps and set(shapes[spe:]) <= set(shapes[:spe])
  raw = []  # what each step would need on its own: some later one is new to the first epoch
  for step in range(trainer.total_steps):
    b = trainer.host_batch(trainer.batch_rows(step))
    raw.append((len(b['length']), b['tokens'].shape[1], trainer.response_width(b)))
    planned = trainer.train_batch(step)
    n, width, response_width = shapes[step]
    assert planned['tokens'].shape == (n, width) and width >= raw[-1][1]
    assert response_width >= raw[-1][2]
    np.testing.assert_array_equal(planned['tokens'][:, :raw[-1][1]], b['tokens'])
  assert set(raw[spe:]) - set(raw[:spe]), 'the data should need a new shape after epoch 1'
  jax.clear_caches()
  compiles = []  # the memory check compiles each shape ahead; the step must reuse it
  listener = lambda name, _, **kw: compiles.append(kw.get('fun_name')) if (  # noqa: E731
      name == '/jax/core/compile/backend_compile_duration') else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    train_and_export(c, tiny_model)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert train_step.train_step._cache_size() == len(set(shapes[:spe]))
  assert compiles.count('jit(train_step)') == len(set(shapes[:spe]))


def test_a_step_too_large_for_the_device_is_refused_with_the_fix(tmp_path, tiny_model,
                                                                 tiny_model_path, monkeypatch):
  """Checked from XLA's memory analysis before the step first runs, not left to the OOM
  killer; the message names the settings that shrink a step."""
  from prosv_jax import memory
  total, available = memory.device_bytes()
  assert total > 10**8 and 0 < available <= total  # this machine's memory is read
  x = jnp.ones((64, 256))
  compiled = jax.jit(lambda a: (a @ a.T).sum(0)).lower(x).compile()
  assert memory.step_bytes(compiled) >= 64 * 4  # at least its output
  monkeypatch.setattr(memory, 'device_bytes', lambda device=None: (10**6, 10**6))
  with pytest.raises(ProsvError, match=r'one training step \(\d+ rows x \d+ token slots: 1 '
                                       r'concept\(s\), batch 4\) needs [\d.]+ [MG]B .*'
                                       r'--config.train.remat=true'):
    train_and_export(tiny_config(tiny_model_path, tmp_path / 'big'), tiny_model)


def test_residual_rms_launcher_prints_the_trainers_figures(tmp_path, tiny_model, tiny_model_path):
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', 'residual_rms.py'),
       f'--config={os.path.join(ROOT, "configs", "prosv.py")}', f'--config.model={tiny_model_path}',
       '--config.layer=1', '--config.data.concepts=0,2', '--config.data.max_examples=8'],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=True).stdout
  printed = json.loads(out.strip().splitlines()[-1])
  c = tiny_config(tiny_model_path, tmp_path / 'x', **{'data.concepts': (0, 2),
                                                      'data.max_response_tokens': 0})
  per_concept, pooled = Trainer(c, tiny_model).residual_rms()
  assert printed['concepts'] == [0, 2] and printed['layer'] == 1
  np.testing.assert_allclose(printed['residual_rms'], per_concept, rtol=1e-3)
  assert printed['pooled'] == pytest.approx(pooled, rel=1e-3)
  bad = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', 'residual_rms.py'),
       f'--config.model={tiny_model_path}', '--config.layer=9'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith('error: ')
