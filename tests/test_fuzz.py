"""Bad input through the real entry points: one `error:` line, exit code 1, early, nothing left
behind that blocks the corrected rerun.

Most cases call the CLIs' main() in-process (a SystemExit whose code is a one-line string is
what Python prints to stderr before exiting with status 1); a few run the scripts as
subprocesses to check stderr and the exit status for real. "Before the model loads" is checked
by a model loader that fails the test when called; checks that need the model run on a tiny
random one and must fail before any banking or compiling (Trainer.prepare fails the test).
"""

import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags

pytest.importorskip('torch')  # the tiny model is made by transformers' PyTorch classes

from prosv_jax import cli, parallel  # noqa: E402
from prosv_jax.models import load as model_load  # noqa: E402
from prosv_jax.train.trainer import Trainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, 'configs', 'demo.py')


class ModelLoaded(Exception):
  """Raised by the patched model loader: the check under test came too late."""


class ComputeStarted(Exception):
  """Raised by the patched Trainer.prepare: banking or compiling began."""


@pytest.fixture
def no_model(monkeypatch):
  """Any model load fails the case (the check must come before it)."""
  def refuse(*args, **kwargs):
    raise ModelLoaded(args)
  monkeypatch.setattr(parallel, 'load_on_mesh', refuse)
  monkeypatch.setattr(model_load, 'load_model', refuse)


@pytest.fixture
def no_compute(monkeypatch):
  def refuse(self):
    raise ComputeStarted()
  monkeypatch.setattr(Trainer, 'prepare', refuse)


def train_module(argv, monkeypatch):
  """launch/train.py imported afresh for `argv` (config_flags reads overrides at import)."""
  monkeypatch.setattr(sys, 'argv', argv)
  for name in list(flags.FLAGS):
    if name in ('config', 'max_steps') or name.startswith('config.'):
      delattr(flags.FLAGS, name)
  spec = importlib.util.spec_from_file_location('launch_train_fuzz',
                                                os.path.join(ROOT, 'launch', 'train.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  flags.FLAGS.unparse_flags()
  cli.parse_flags(argv)
  return module


def run_train(monkeypatch, workdir, *overrides, config=DEMO):
  argv = ['train.py', f'--config={config}', f'--config.workdir={workdir}', *overrides]
  train_module(argv, monkeypatch).main(argv)


def expect_error(call, *words, within_s=5.0):
  """call() exits with one `error:` line naming `words`, within `within_s` seconds."""
  start = time.perf_counter()
  with pytest.raises(SystemExit) as e:
    call()
  took = time.perf_counter() - start
  message = e.value.code
  assert isinstance(message, str), message  # a str code: printed to stderr, exit status 1
  assert message.startswith('error: ') and '\n' not in message, message
  for word in words:
    assert word in message, message
  assert took < within_s, (took, message)
  return message


def assert_rerun_not_blocked(workdir):
  assert not os.path.exists(os.path.join(workdir, 'config.json'))


@pytest.fixture
def files(tmp_path):
  """Bad files: a plain file, a corrupt .gguf, a data table without the `output` column."""
  plain = tmp_path / 'plain.txt'
  plain.write_text('x')
  corrupt = tmp_path / 'model.gguf'
  corrupt.write_bytes(os.urandom(64))
  columns = tmp_path / 'columns.jsonl'
  columns.write_text(''.join(json.dumps({'input': 'hi', 'concept_id': 0}) + '\n'
                             for _ in range(4)))
  return {'plain': str(plain), 'corrupt': str(corrupt), 'columns': str(columns)}


# (overrides, words the error names, a corrected override that must get past the checks)
TRAIN_CASES = {
    'log_every_0': (['--config.train.log_every=0'], ['train.log_every=0'],
                    '--config.train.log_every=1'),
    'checkpoint_every_0': (['--config.train.checkpoint_every=0'],
                           ['train.checkpoint_every=0'], '--config.train.checkpoint_every=5'),
    'max_examples_negative': (['--config.data.max_examples=-5'], ['data.max_examples=-5'],
                              '--config.data.max_examples=5'),
    'beta_nan': (['--config.steer.beta=nan'], ['steer.beta=nan', 'finite'],
                 '--config.steer.beta=4'),
    'beta_inf': (['--config.steer.beta=inf'], ['steer.beta=inf'], '--config.steer.beta=4'),
    'beta_zero': (['--config.steer.beta=0'], ['steer.beta=0'], '--config.steer.beta=4'),
    'direction_scale_nan': (['--config.steer.direction_scale=nan'],
                            ['steer.direction_scale=nan'], '--config.steer.direction_scale=8'),
    'factor_lr_huge': (['--config.optim.factor_lr=1e30'], ['optim.factor_lr=1e+30', '1000'],
                       '--config.optim.factor_lr=40'),
    'direction_lr_negative': (['--config.optim.direction_lr=-1'], ['optim.direction_lr=-1'],
                              '--config.optim.direction_lr=0.04'),
    'adam_b2_one': (['--config.optim.b2=1.0'], ['optim.b2=1.0'], '--config.optim.b2=0.999'),
    'adam_eps_zero': (['--config.optim.eps=0'], ['optim.eps=0'], '--config.optim.eps=1e-8'),
    'cache_budget_nan': (['--config.train.cache_budget_gb=nan'], ['train.cache_budget_gb'],
                         '--config.train.cache_budget_gb=4'),
    'epochs_negative': (['--config.train.epochs=-2'], ['train.epochs=-2'],
                        '--config.train.epochs=2'),
    'batch_size_zero': (['--config.train.batch_size=0'], ['train.batch_size=0'],
                        '--config.train.batch_size=4'),
    'max_prompt_tokens_zero': (['--config.data.max_prompt_tokens=0'],
                               ['data.max_prompt_tokens=0'], '--config.data.max_prompt_tokens=64'),
    'seed_negative': (['--config.train.seed=-1'], ['train.seed=-1'], '--config.train.seed=1'),
    'show_temperature_negative': (['--config.show.temperature=-1'], ['show.temperature'],
                                  '--config.show.temperature=0'),
    'bad_dtype': (['--config.dtype=float16'], ['dtype=', 'bfloat16'], '--config.dtype=float32'),
    'bad_loss': (['--config.train.loss=mse'], ['train.loss=', 'simpo'],
                 '--config.train.loss=lang'),
    'bad_positions': (['--config.positions=p2+x'], ['p2+x', 'pN+sM'],
                      '--config.positions=p2+s2'),
    'layer_negative': (['--config.layer=-1'], ['layer=-1'], '--config.layer=1'),
    'bad_pack': (['--config.data.pack=yes'], ["data.pack='yes'", 'auto, on, off'],
                 '--config.data.pack=on'),
    'mesh_too_big': (['--config.mesh.data=64'], ['mesh.data=64'], '--config.mesh.data=1'),
    'mesh_zero': (['--config.mesh.model=0'], ['mesh.model=0'], '--config.mesh.model=1'),
    'unknown_concept': (['--config.data.concepts=99'], ['99', 'available ids'],
                        '--config.data.concepts=1'),
    'repeated_concept': (['--config.data.concepts=1,1'], ['more than once'],
                         '--config.data.concepts=1'),
    'missing_data_file': (['--config.data.source=/nonexistent/data.jsonl'],
                          ['/nonexistent/data.jsonl'], '--config.data.source=demo'),
    'data_missing_column': (['--config.data.source={columns}'], ['missing column', 'output'],
                            '--config.data.source=demo'),
    'missing_model_file': (['--config.model=/nonexistent/model.gguf'],
                           ['no such model file', '/nonexistent/model.gguf'], None),
    'corrupt_model_file': (['--config.model={corrupt}'], ['not a GGUF file'], None),
    'model_not_gguf': (['--config.model={plain}'], ['neither a folder nor a .gguf'], None),
}


@pytest.mark.parametrize('case', sorted(TRAIN_CASES))
def test_train_refuses_before_the_model_loads(case, tmp_path, monkeypatch, no_model, files):
  overrides, words, fix = TRAIN_CASES[case]
  overrides = [o.format(**files) for o in overrides]
  workdir = tmp_path / 'w'
  expect_error(lambda: run_train(monkeypatch, workdir, *overrides), *words, within_s=3)
  assert_rerun_not_blocked(workdir)
  if fix:  # the corrected command passes every check and reaches the (patched) model load
    with pytest.raises(ModelLoaded):
      run_train(monkeypatch, workdir, fix)


def test_empty_concepts(tmp_path, monkeypatch, no_model):
  config = tmp_path / 'empty.py'
  config.write_text('from prosv_jax.train.config import base_config\n'
                    'def get_config():\n  c = base_config()\n  c.data.concepts = ()\n'
                    '  return c\n')
  expect_error(lambda: run_train(monkeypatch, tmp_path / 'w', config=str(config)),
               'data.concepts is empty')
  assert_rerun_not_blocked(tmp_path / 'w')


@pytest.mark.parametrize('override,words', [
    ('--config.train.nosuch=1', ["unknown config key 'nosuch'", '--config.train.nosuch']),
    ('--config.train.epochs=abc', ['--config.train.epochs=abc', 'int']),
    ('--config.steer.beta=big', ['--config.steer.beta=big']),
    ('--nosuchflag=1', ['nosuchflag']),
    (f'--config={os.path.join(ROOT, "configs", "prosv.py")}:nope',
     ["unknown config variant 'nope'", 'gemma2_2b']),
])
def test_bad_flags_are_one_line(override, words, tmp_path, monkeypatch, no_model):
  argv = ['train.py', f'--config={DEMO}', f'--config.workdir={tmp_path / "w"}', override]
  expect_error(lambda: train_module(argv, monkeypatch), *words)
  assert not os.path.exists(tmp_path / 'w')


def test_missing_config_file(tmp_path, monkeypatch, no_model):
  expect_error(lambda: run_train(monkeypatch, tmp_path / 'w', config='configs/nosuch.py'),
               'cannot load the config file', 'nosuch.py')


@pytest.mark.parametrize('kind', ['file', 'under_a_file'])
def test_workdir_that_cannot_be_made(kind, tmp_path, monkeypatch, no_model, files):
  workdir = files['plain'] if kind == 'file' else os.path.join(files['plain'], 'run')
  expect_error(lambda: run_train(monkeypatch, workdir), workdir, '--config.workdir')


@pytest.mark.parametrize('overrides,words', [
    (['--config.layer=3'], ['layer 3 is out of range', '3-layer']),
    # Demo prompts are short: a data file with a 600-token prompt, past the 512 positions.
    (['--config.data.source={long}', '--config.data.max_prompt_tokens=1000'],
     ['tokens but the model has 512 positions', 'max_prompt_tokens']),
])
def test_model_checks_fail_right_after_loading(overrides, words, tmp_path, monkeypatch,
                                               no_compute, tiny_model_path):
  long = tmp_path / 'long.jsonl'
  long.write_text(''.join(json.dumps({'input': ' '.join(['one'] * 600), 'output': 'two three',
                                      'concept_id': 0}) + '\n' for _ in range(4)))
  overrides = [o.format(long=long) for o in overrides]
  workdir = tmp_path / 'w'
  expect_error(lambda: run_train(monkeypatch, workdir, f'--config.model={tiny_model_path}',
                                 '--config.layer=1', *overrides), *words, within_s=20)
  assert_rerun_not_blocked(workdir)
  with pytest.raises(ComputeStarted):  # corrected: past every check, into banking
    run_train(monkeypatch, workdir, f'--config.model={tiny_model_path}', '--config.layer=1')


def test_finished_workdir_reruns_without_loading(tmp_path, monkeypatch, no_model, capsys):
  """The rerun returns the saved summary and leaves summary.json as it was."""
  workdir = tmp_path / 'done'
  module = train_module(['train.py', f'--config={DEMO}', f'--config.workdir={workdir}'],
                        monkeypatch)
  config = module.CONFIG.value
  os.makedirs(workdir)
  (workdir / 'config.json').write_text(config.to_json_best_effort(sort_keys=True))
  summary = {'steps': 60, 'total_steps': 60, 'concept_ids': [0], 'final_loss': [2.31],
             'factor': [12.5], 'direction_norm': [3.0], 'residual_rms': 4.2, 'layer': 10,
             'train_s': 71.3, 'setup_s': 5.0, 'steps_per_s': 0.84, 'tokens_per_s': 900.0,
             'artifacts': {'vectors': str(workdir / 'vectors')}}
  (workdir / 'summary.json').write_text(json.dumps(summary, indent=2))
  from prosv_jax.vectors import SteeringVectors  # pylint: disable=import-outside-toplevel
  SteeringVectors.create([12.5], np.ones((1, 8), np.float32), layer=10, positions='p2+s2',
                         concepts=['the ocean']).save(workdir / 'vectors')
  before = (workdir / 'summary.json').read_text()
  start = time.perf_counter()
  module.main(['train.py'])
  assert time.perf_counter() - start < 3
  out = capsys.readouterr().out
  assert 'already holds this finished run' in out
  assert 'final loss (mean over the last epoch): 2.31' in out and 'factor: 12.5' in out
  assert (workdir / 'summary.json').read_text() == before


def test_exploding_factor_stops_with_the_step_and_keeps_the_last_good_state(
    tmp_path, monkeypatch, tiny_model_path):
  """A finite loss does not hide a runaway factor (the bound lowered to make one cheaply)."""
  from prosv_jax.train import optim  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(optim, 'MAX_PARAM', 40.0)  # init factor 4 * sqrt(64) = 32; LR 100 > 40
  workdir = tmp_path / 'w'
  expect_error(lambda: run_train(monkeypatch, workdir, f'--config.model={tiny_model_path}',
                                 '--config.layer=1', '--config.optim.factor_lr=100',
                                 '--config.optim.base_width=0',
                                 '--config.data.max_examples=4', '--config.train.batch_size=4',
                                 '--config.data.max_response_tokens=16'),
               'diverged at step 1', 'exploded', 'last good state (step 0)', 'new --config.workdir',
               within_s=60)
  assert os.listdir(workdir / 'checkpoints') == ['0']


@pytest.mark.parametrize('overrides,words', [
    ({'methods': 'prosv,bogus'}, ['unknown bogus']),
    ({'judge.kind': 'oracle'}, ['judge.kind=', 'offline']),
    ({'generation.temperature': float('nan')}, ['temperature=nan']),
    ({'vectors.prosv': '/nonexistent/vectors', 'methods': 'prosv'}, ['/nonexistent/vectors']),
    ({'model': '/nonexistent/model.gguf', 'methods': 'unsteered'}, ['no such model file']),
])
def test_evaluate_refuses_before_the_model_loads(overrides, words, tmp_path, no_model,
                                                 monkeypatch):
  from prosv_jax import sweep  # pylint: disable=import-outside-toplevel
  from prosv_jax.eval import evaluate as evaluation  # pylint: disable=import-outside-toplevel
  from prosv_jax.eval.config import eval_config  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(evaluation, 'load_model', model_load.load_model)  # the refusing one
  config = sweep.apply(eval_config(), {'workdir': str(tmp_path / 'e'), **overrides})

  def call():
    try:
      evaluation.evaluate(config)
    except evaluation.ProsvError as e:  # what launch/evaluate.py turns into its error line
      raise SystemExit(f'error: {e}') from None
  expect_error(call, *words)


# --------------------------------------------------------------------------- generate.py


@pytest.fixture(scope='module')
def generate_module():
  for name in ('prompt', 'model', 'vectors', 'concept', 'dtype', 'max_new_tokens',
               'temperature', 'top_k', 'top_p', 'seed'):
    if name in flags.FLAGS:  # launch/bench.py (imported by the bench tests) defines some too
      delattr(flags.FLAGS, name)
  spec = importlib.util.spec_from_file_location('launch_generate_fuzz',
                                                os.path.join(ROOT, 'launch', 'generate.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_generate(module, *args):
  argv = ['generate.py', *args]
  flags.FLAGS.unparse_flags()
  cli.parse_flags(argv)
  module.main(argv)


@pytest.mark.parametrize('args,words', [
    (['--vectors=/nonexistent/vectors'], ['/nonexistent/vectors']),
    (['--model=/nonexistent/model.gguf'], ['no such model file']),
    (['--model={corrupt}'], ['not a GGUF file']),
    (['--max_new_tokens=0'], ['max_new_tokens=0']),
    (['--top_p=0'], ['top_p=0']),
    (['--temperature=-1'], ['temperature=-1']),
    (['--temperature=nan'], ['temperature=nan']),
])
def test_generate_refuses_before_the_model_loads(args, words, generate_module, monkeypatch,
                                                 files):
  monkeypatch.setattr(generate_module, 'load_model',
                      lambda *a, **k: (_ for _ in ()).throw(ModelLoaded(a)))
  expect_error(lambda: run_generate(generate_module, *[a.format(**files) for a in args]),
               *words)


def test_generate_refuses_a_prompt_past_the_context(generate_module, tiny_model_path):
  prompt = ' '.join(['one'] * 600)
  expect_error(lambda: run_generate(generate_module, f'--model={tiny_model_path}',
                                    f'--prompt={prompt}', '--max_new_tokens=8'),
               'plus max_new_tokens=8', '512 positions', within_s=20)


# --------------------------------------------------------------------------- subprocesses


def run_script(name, *args, cwd=ROOT):
  start = time.perf_counter()
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', name), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'PYTHONPATH': ROOT})
  return result, time.perf_counter() - start


@pytest.mark.parametrize('script,args,words', [
    ('train.py', ['--config=configs/demo.py', '--config.train.log_every=0'],
     ['train.log_every=0']),
    ('train.py', ['--config=configs/demo.py', '--config.steer.beta=nan'], ['steer.beta=nan']),
    ('evaluate.py', ['--config=configs/eval.py', '--config.methods=prosv,bogus'],
     ['unknown bogus']),
    ('generate.py', ['--vectors=/nonexistent/vectors'], ['/nonexistent/vectors']),
])
def test_scripts_print_one_error_line_and_exit_1(script, args, words, tmp_path):
  result, took = run_script(script, *args, f'--config.workdir={tmp_path / "w"}'
                            if script != 'generate.py' else '--seed=0')
  assert result.returncode == 1, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: '), result.stderr
  for word in words:
    assert word in last, last
  assert 'PyTorch was not found' not in result.stderr + result.stdout
  assert took < 20, took  # imports only: a model load alone takes ~25 s
  assert not os.path.exists(tmp_path / 'w' / 'config.json')
