"""Packed batches (several examples per row) against right-padded ones on a tiny random model:
the same losses and gradients, no example seeing another, the same trained parameters."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('torch')  # the tiny model is made by transformers' PyTorch classes

from prosv_jax import data, flops, sweep  # noqa: E402
from prosv_jax.artifacts import load_vectors  # noqa: E402
from prosv_jax.errors import ProsvError  # noqa: E402
from prosv_jax.train import step as train_step  # noqa: E402
from prosv_jax.train.job import train_and_export  # noqa: E402
from prosv_jax.train.trainer import Trainer  # noqa: E402
from test_train import tiny_config as train_tiny_config  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')


def tiny_config(model_path, workdir, **overrides):
  """test_train's tiny config with three concepts."""
  return train_tiny_config(model_path, workdir, **{'data.concepts': (0, 1, 2), **overrides})


@functools.partial(jax.jit, static_argnames=('cfg', 'positions', 'loss_kind', 'num_concepts',
                                             'response_width'))
def _loss_and_grad(params, frozen, batch, h_low, *, cfg, positions, loss_kind, num_concepts,
                   response_width):
  grad_fn = jax.value_and_grad(train_step.loss_fn, has_aux=True)
  (_, per_concept), grads = grad_fn(params, frozen, cfg, 1, positions, loss_kind, num_concepts,
                                    batch, h_low, response_width)
  return per_concept, grads


def _both_layouts(trainer, examples, rows, ref_logp=None):
  """The same examples right-padded and packed, with their global rows (for the bank)."""
  padded = data.pad_batch(examples, trainer.pad_id, 16)
  packed = data.pack_batch(examples, trainer.pad_id, trainer.pack_width)
  for b in (padded, packed):
    b['rows'] = np.asarray(rows, np.int32)
    if ref_logp is not None:
      b['ref_logp'] = ref_logp
  return ({k: jnp.asarray(v) for k, v in padded.items()},
          {k: jnp.asarray(v) for k, v in packed.items()}, trainer.response_width(padded))


# Two of the eight cases cover every level of every factor; the other six join the slow tier.
_PACK_CASES = [pytest.param(p, l, c, marks=() if (p, l, c) in (('p2+s2', 'lang', (0,)),
                                                                ('all', 'simpo', (0, 1, 2)))
                            else pytest.mark.slow)
               for p in ('p2+s2', 'all') for l in ('lang', 'simpo') for c in ((0,), (0, 1, 2))]


@pytest.mark.parametrize('positions,loss,concepts', _PACK_CASES)
def test_packed_losses_and_gradients_equal_padded(tmp_path, tiny_model, tiny_model_path,
                                                  positions, loss, concepts):
  m = tiny_model
  trainer = Trainer(tiny_config(tiny_model_path, tmp_path, positions=positions,
                                **{'data.concepts': concepts, 'data.pack': 'off'}), m)
  trainer.prepare()  # the bank of every example, from right-padded rows
  rows = trainer.batch_rows(0)
  if loss == 'simpo':  # winners, then other examples standing in as the losers
    rows = rows + trainer.batch_rows(1)
    ref_logp = np.random.default_rng(0).normal(-20.0, 5.0, len(rows)).astype(np.float32)
  else:
    ref_logp = None
  padded, packed, width = _both_layouts(trainer, [trainer.flat[r] for r in rows], rows,
                                        ref_logp)
  assert packed['tokens'].size < padded['tokens'].size
  params = trainer.init_state()['steer']
  params['factor'] = params['factor'] * 0.05  # a moderate edit: the loss still sees the rest
  kw = dict(cfg=m.cfg, positions=trainer.positions, loss_kind=loss,
            num_concepts=len(concepts))
  for bank in (None, trainer.bank):
    low = lambda b: None if bank is None else train_step.bank_hidden(bank, b)
    want, want_grads = _loss_and_grad(params, m.params, padded, low(padded),
                                      response_width=width, **kw)
    got, got_grads = _loss_and_grad(params, m.params, packed, low(packed), response_width=0,
                                    **kw)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)
    for key in ('factor', 'direction'):
      g, w = np.asarray(got_grads[key]), np.asarray(want_grads[key])
      assert np.abs(w).max() > 0, key  # every concept's params do get a gradient
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max())


def test_steered_positions_are_each_examples_own(tmp_path, tiny_model, tiny_model_path):
  trainer = Trainer(tiny_config(tiny_model_path, tmp_path, **{'data.pack': 'on'}), tiny_model)
  rows = trainer.batch_rows(0)
  padded, packed, _ = _both_layouts(trainer, [trainer.flat[r] for r in rows], rows)
  want = np.asarray(train_step.steer_mask(trainer.positions, padded))
  got = np.asarray(train_step.steer_mask(trainer.positions, packed))
  concepts = np.asarray(train_step.token_concepts(packed, pad=-1))
  assert got.sum() == want.sum() == 4 * len(rows)  # p2+s2 of prompts longer than 4
  for i, n in enumerate(np.asarray(packed['length'])):
    row, start = int(packed['seg_row'][i]), int(packed['seg_start'][i])
    np.testing.assert_array_equal(got[row, start:start + n], want[i, :n])
    np.testing.assert_array_equal(concepts[row, start:start + n], packed['concept'][i])


def test_no_example_sees_another(tmp_path, tiny_model, tiny_model_path):
  """Other tokens in one example's slots leave every other example's log-probs bit-identical,
  steered or not, with the bank or without."""
  m = tiny_model
  trainer = Trainer(tiny_config(tiny_model_path, tmp_path, **{'data.pack': 'on'}), m)
  rows = trainer.batch_rows(0)
  batch = trainer.packed_batch(rows)
  victim = int(np.argmax(batch['length']))
  row, start = batch['seg_row'][victim], batch['seg_start'][victim]
  assert (batch['seg_row'] == row).sum() > 1  # it shares its row
  other = dict(batch, tokens=batch['tokens'].copy())
  n = batch['length'][victim]
  other['tokens'][row, start:start + n] = (batch['tokens'][row, start:start + n] + 5) % 128
  params = trainer.init_state()['steer']
  sums = jax.jit(train_step.response_sums, static_argnames=('cfg', 'layer', 'positions'))
  for steer_params in (None, params):
    a, b = (np.asarray(sums(m.params, m.cfg, 1, trainer.positions, steer_params,
                            {k: jnp.asarray(v) for k, v in x.items()}, None)[0])
            for x in (batch, other))
    keep = np.arange(len(a)) != victim
    assert np.array_equal(a[keep], b[keep])
    assert abs(a[victim] - b[victim]) > 1e-3


def test_auto_packs_where_it_saves_flops(tmp_path, tiny_model, tiny_model_path):
  """auto packs when the run's packed batches cost fewer FLOPs than its padded ones: each
  slot's weight matmuls plus every row's dense attention (width^2 pairs), recounted here from
  the batches themselves."""
  cfg = tiny_model.cfg
  per_slot = 4.0 * flops.block_matmul_params(cfg)
  per_pair = 12.0 * cfg.num_heads * cfg.head_dim

  def cost(batches):
    return sum(per_slot * b['tokens'].size + per_pair * b['tokens'].shape[0]
               * b['tokens'].shape[1] ** 2 for b in batches)

  for concepts in ((0,), (0, 1, 2)):
    c = tiny_config(tiny_model_path, tmp_path, **{'data.concepts': concepts})
    trainer = Trainer(c, tiny_model)
    steps = range(trainer.total_steps)
    packed = [trainer.packed_batch(trainer.batch_rows(s)) for s in steps]
    padded = [trainer.host_batch(trainer.batch_rows(s)) for s in steps]
    assert trainer.packed == (cost(packed) < cost(padded)), (concepts, cost(packed),
                                                             cost(padded))
    # One shape per row count: its LM-head slots are those of its most demanding step.
    by_rows = {}
    for b in packed:
      by_rows.setdefault(len(b['tokens']), set()).add(len(b['head_src']))
    assert all(len(heads) == 1 for heads in by_rows.values()), by_rows
    assert Trainer(sweep.apply(c, {'data.pack': 'on'}), tiny_model).packed
    assert not Trainer(sweep.apply(c, {'data.pack': 'off'}), tiny_model).packed
  with pytest.raises(ProsvError, match="data.pack='yes'; use one of auto, on, off"):
    Trainer(tiny_config(tiny_model_path, tmp_path, **{'data.pack': 'yes'}), tiny_model)


def _final(workdir):
  v = load_vectors(os.path.join(workdir, 'vectors'))
  return v.factor, v.direction


@pytest.mark.parametrize('overrides', [{}, pytest.param(
    {'train.loss': 'simpo', 'train.cache_hidden': False, 'data.concepts': (0, 1)},
    marks=pytest.mark.slow)])
def test_packed_training_gives_the_same_parameters(tmp_path, tiny_model, tiny_model_path,
                                                   overrides):
  """A few steps packed (bank, evaluation and SimPO reference too) against right-padded; a
  padded run resumed packed is the same run (data.pack is not part of what is trained)."""
  runs = {}
  for pack in ('on', 'off'):
    c = tiny_config(tiny_model_path, tmp_path / pack, positions='all',
                    **{'data.pack': pack, **overrides})
    runs[pack] = train_and_export(c, tiny_model)
  assert runs['on']['packed'] and not runs['off']['packed']
  assert runs['on']['slots_per_token'] < runs['off']['slots_per_token']
  f_on, d_on = _final(tmp_path / 'on')
  f_off, d_off = _final(tmp_path / 'off')
  np.testing.assert_allclose(f_on, f_off, rtol=1e-5)
  np.testing.assert_allclose(d_on, d_off, rtol=1e-4, atol=1e-6)
  for key in ('final_loss', 'train_loss', 'train_loss_unsteered', 'steered_residual_rms'):
    np.testing.assert_allclose(runs['on'][key], runs['off'][key], rtol=1e-4, err_msg=key)
  if overrides:
    return
  resumed = tmp_path / 'resumed'
  train_and_export(tiny_config(tiny_model_path, resumed, positions='all',
                               **{'data.pack': 'off'}), tiny_model, max_steps=2)
  train_and_export(tiny_config(tiny_model_path, resumed, positions='all',
                               **{'data.pack': 'on'}), tiny_model)
  f, d = _final(resumed)
  np.testing.assert_allclose(f, f_off, rtol=1e-5)
  np.testing.assert_allclose(d, d_off, rtol=1e-4, atol=1e-6)
