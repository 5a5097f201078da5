"""Grid cells as slots of one step (train.slots): each cell equals its separate run."""

import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from prosv_jax import sweep
from prosv_jax.errors import ProsvError
from prosv_jax.train import slots
from prosv_jax.train.config import base_config, check_config

pytest.importorskip('torch')  # the tiny model is made by transformers' PyTorch classes

from prosv_jax.train import optim  # noqa: E402
from prosv_jax.train.job import train  # noqa: E402
from test_train import final_params, tiny_config  # noqa: E402

BETAS = (1.0, 2.0, 4.0)
FACTOR_LRS = (0.5, 5.0, 50.0)  # at base width 2304: 1/6 of that on the tiny width 64


# --- declaring slots ------------------------------------------------------------------------


def _config(slots_spec, workdir='w'):
  c = base_config()
  c.workdir = workdir
  c.train.slots = slots_spec
  return c


def test_a_product_names_its_cells_like_a_sweep():
  cells = slots.cells(_config('beta=1,2;optim.factor_lr=0.5,5'))
  assert [c.name for c in cells] == ['beta1_flr0.5', 'beta1_flr5', 'beta2_flr0.5', 'beta2_flr5']
  assert cells[1].workdir == os.path.join('w', 'beta1_flr5')
  assert cells[1].values == {'steer.beta': 1.0, 'steer.direction_scale': 8.0,
                             'optim.factor_lr': 5.0, 'optim.direction_lr': 0.04,
                             'train.seed': 42}
  # A cell's config is its separate run's: own values, no slots, own workdir.
  c = cells[2].config
  assert (c.steer.beta, c.optim.factor_lr, c.train.slots, c.workdir) == (2.0, 0.5, '',
                                                                       'w/beta2_flr0.5')
  # The product names the same runs as the sweep of the same axes.
  names = [sweep.run_name(p) for p in sweep.grid({'steer.beta': (1.0, 2.0),
                                                  'optim.factor_lr': (0.5, 5.0)})]
  assert [c.name for c in cells] == names
  plain = base_config()
  assert slots.cells(plain)[0].config is plain  # no slots: the config is its one cell


def test_a_json_list_gives_cells_with_their_own_names_and_workdirs():
  spec = json.dumps([{'s': 1, 'dlr': 0.02, 'seed': 3, 'name': 'a', 'workdir': '/x/a'},
                     {'steer.direction_scale': 8}])
  a, b = slots.cells(_config(spec))
  assert (a.name, a.workdir, a.seed, a.direction_scale) == ('a', '/x/a', 3, 1.0)
  assert a.values['optim.direction_lr'] == 0.02 and b.name == 's8'


@pytest.mark.parametrize('spec,message', [
    ('model=a,b', "train.slots sets 'model', which is no slot key"),
    ('beta=1;beta=2', 'train.slots sets steer.beta twice'),
    ('beta', "train.slots part 'beta' does not parse"),
    ('beta=x', "train.slots gives steer.beta='x'; use a number"),
    ('seed=1.5', "train.slots gives train.seed='1.5'; use a number (a whole one)"),
    ('[{"beta": 1}', 'train.slots is not valid JSON'),
    ('[]', 'train.slots must list at least one cell'),
    ('[{"beta": 1, "name": "a"}, {"beta": 2, "name": "a"}]', 'two cells named a'),
    ('[{"beta": 1, "workdir": "w"}]', 'the run itself uses'),
])
def test_bad_slots_are_one_line_errors(spec, message):
  with pytest.raises(ProsvError, match=message.replace('(', r'\(').replace(')', r'\)')):
    slots.cells(_config(spec))


def test_each_cell_is_checked_like_its_separate_run():
  with pytest.raises(ProsvError, match=r'train.slots cell beta-1: steer.beta=-1.0; use beta > 0'):
    check_config(_config('beta=1,-1'))
  with pytest.raises(ProsvError, match=r'cell flr2000: optim.factor_lr=2000.0; use a positive'):
    check_config(_config('flr=1,2000'))
  with pytest.raises(ProsvError, match=r'train.slots cell .*: train.seed=-1; use a seed >= 0'):
    check_config(_config('seed=-1'))
  check_config(_config('beta=1,2;flr=0.5,5;s=1,8;dlr=0.04;seed=0,1'))


# --- training -------------------------------------------------------------------------------


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def _assert_same_run(cell_dir, separate_dir):
  """Same parameters and the same loss at every step."""
  f1, d1 = final_params(separate_dir)
  f2, d2 = final_params(cell_dir)
  np.testing.assert_allclose(f2, f1, rtol=1e-5)
  np.testing.assert_allclose(d2, d1, rtol=1e-4, atol=1e-6)
  m1, m2 = _metrics(separate_dir), _metrics(cell_dir)
  assert [m['step'] for m in m2] == [m['step'] for m in m1]
  np.testing.assert_allclose([m['loss'] for m in m2], [m['loss'] for m in m1], rtol=1e-5)
  np.testing.assert_allclose([m['loss_per_concept'] for m in m2],
                             [m['loss_per_concept'] for m in m1], atol=2e-5)
  s1, s2 = (json.load(open(os.path.join(d, 'summary.json'))) for d in (separate_dir, cell_dir))
  np.testing.assert_allclose(s2['final_loss'], s1['final_loss'], rtol=1e-5)
  for key in ('factor_lr', 'direction_lr', 'steps', 'total_steps', 'concept_ids'):
    assert s2[key] == s1[key], key
  # The cell's config.json is its separate run's (so that run would find it finished).
  c1, c2 = (json.load(open(os.path.join(d, 'config.json'))) for d in (separate_dir, cell_dir))
  assert {**c2, 'workdir': None} == {**c1, 'workdir': None}


def test_a_beta_by_factor_lr_grid_equals_the_nine_separate_runs(tmp_path, tiny_model,
                                                                tiny_model_path):
  spec = f'steer.beta={",".join(map(str, BETAS))};optim.factor_lr={",".join(map(str, FACTOR_LRS))}'
  grid = train(tiny_config(tiny_model_path, tmp_path / 'grid', **{'train.slots': spec}),
               tiny_model)
  assert [c['status'] for c in grid.summary['cells']] == ['done'] * 9
  assert grid.vectors is None and len(grid.cells) == 9
  for cell in slots.cells(tiny_config(tiny_model_path, tmp_path / 'grid',
                                      **{'train.slots': spec})):
    alone = tmp_path / 'alone' / cell.name
    train(tiny_config(tiny_model_path, alone, **{'steer.beta': cell.beta,
                                                 'optim.factor_lr': cell.values[
                                                     'optim.factor_lr']}), tiny_model)
    _assert_same_run(cell.workdir, alone)
  factors = [c.summary['factor'][0] for c in grid.cells]
  assert len({round(f, 4) for f in factors}) == 9  # the cells really differ
  # The run's own workdir: config, checkpoints and the cells' outcomes, no vectors of its own.
  run = json.load(open(tmp_path / 'grid' / 'summary.json'))
  assert run['slots'] == 9 and run['steps'] == run['total_steps']
  assert not os.path.exists(tmp_path / 'grid' / 'vectors')
  again = train(tiny_config(tiny_model_path, tmp_path / 'grid', **{'train.slots': spec}),
                tiny_model)
  assert again.summary['already_finished'] and len(again.cells) == 9
  np.testing.assert_array_equal(again.cells[4].vectors.factor, grid.cells[4].vectors.factor)


def test_direction_scale_direction_lr_and_seed_per_cell_with_two_concepts(tmp_path, tiny_model,
                                                                         tiny_model_path):
  cells = [{'steer.direction_scale': 1.0, 'optim.direction_lr': 0.02, 'train.seed': 1},
           {'steer.direction_scale': 8.0, 'optim.direction_lr': 0.08, 'train.seed': 2},
           {'steer.direction_scale': 4.0, 'optim.direction_lr': 0.04, 'steer.beta': 2.0}]
  config = tiny_config(tiny_model_path, tmp_path / 'grid', **{
      'train.slots': json.dumps(cells), 'data.concepts': (0, 1)})
  train(config, tiny_model)
  for cell in slots.cells(config):
    alone = tmp_path / 'alone' / cell.name
    train(tiny_config(tiny_model_path, alone, **{'data.concepts': (0, 1), **cell.values}),
          tiny_model)
    _assert_same_run(cell.workdir, alone)


def test_an_interrupted_slot_run_resumes_to_the_same_cells(tmp_path, tiny_model,
                                                           tiny_model_path):
  spec = 'beta=1,4;seed=1,2'
  straight = tiny_config(tiny_model_path, tmp_path / 'straight', **{'train.slots': spec})
  train(straight, tiny_model)
  broken = tiny_config(tiny_model_path, tmp_path / 'broken', **{'train.slots': spec,
                                                                  'train.epochs': 2})
  stopped = train(broken, tiny_model, max_steps=1)  # checkpoint_every=2: resumes from step 0
  assert [c['status'] for c in stopped.summary['cells']] == ['stopped'] * 4
  stopped = train(broken, tiny_model, max_steps=3)
  assert stopped.summary['steps'] == 3
  assert ocp.CheckpointManager(str(tmp_path / 'broken' / 'checkpoints')).latest_step() == 3
  train(broken, tiny_model)
  for a, b in zip(slots.cells(straight), slots.cells(broken)):
    _assert_same_run(b.workdir, a.workdir)


def test_a_diverging_cell_is_frozen_and_the_others_train_on(tmp_path, tiny_model,
                                                            tiny_model_path, monkeypatch):
  # The init factor is beta * sqrt(64) = 32; one Adam step of LR 100 takes it past 40.
  monkeypatch.setattr(optim, 'MAX_PARAM', 40.0)
  config = tiny_config(tiny_model_path, tmp_path / 'grid', **{
      'train.slots': 'flr=0.5,600', 'data.concepts': (0, 1)})
  result = train(config, tiny_model)
  good, bad = slots.cells(config)
  assert [c['status'] for c in result.summary['cells']] == ['done', 'failed']
  failed = json.load(open(os.path.join(bad.workdir, 'failed.json')))
  assert failed['error'].startswith('cell flr600 diverged at step 1: the steering vector '
                                    'exploded')
  assert failed['step'] == 0 and result.cells[1].summary['error'] == failed['error']
  assert not os.path.exists(os.path.join(bad.workdir, 'summary.json'))
  assert not os.path.exists(os.path.join(bad.workdir, 'vectors'))
  assert sweep.read_summary(good.workdir)['steps'] == 4
  alone = tmp_path / 'alone'
  train(tiny_config(tiny_model_path, alone, **{'data.concepts': (0, 1), **good.values}),
        tiny_model)
  _assert_same_run(good.workdir, alone)
  # A cell alone in the run: it stops like a separate run, with the same error.
  with pytest.raises(ProsvError, match='every cell of train.slots diverged, the last at step 1'):
    train(tiny_config(tiny_model_path, tmp_path / 'all', **{'train.slots': 'flr=600,700'}),
          tiny_model)


def test_a_checkpoint_from_before_slots_resumes(tmp_path, tiny_model, tiny_model_path):
  """Checkpoints written before the state had 'live' (runs/ keeps such) still resume."""
  train(tiny_config(tiny_model_path, tmp_path / 'straight'), tiny_model)
  config = tiny_config(tiny_model_path, tmp_path / 'old')
  train(config, tiny_model, max_steps=2)
  manager = ocp.CheckpointManager(str(tmp_path / 'old' / 'checkpoints'))
  state = manager.restore(2)
  assert 'live' in state
  del state['live']
  manager.delete(2)
  manager.save(2, args=ocp.args.StandardSave(state), force=True)
  manager.wait_until_finished()
  train(config, tiny_model)
  _assert_same_run(tmp_path / 'old', tmp_path / 'straight')
