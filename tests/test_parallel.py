"""Sharding and multi-host: rules, mesh errors, and sharded runs equal to one device.

This process already has JAX up with one CPU device, so runs on several devices happen in
subprocesses of this same file (`python tests/test_parallel.py <mode> ...`) with
XLA_FLAGS=--xla_force_host_platform_device_count: one process with 4 devices, and two processes
with 2 devices each joined by jax.distributed (a real multi-host run over localhost).
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from prosv_jax import parallel, sweep
from prosv_jax.train.config import base_config
from prosv_jax.errors import ProsvError
from prosv_jax.models import transformer
from prosv_jax.models.config import ModelConfig

HERE = os.path.abspath(__file__)
STEPS = 4  # 4 examples per concept, batch 2, 2 epochs


def run_config(model_path, workdir, data=1, model=1, **overrides):
  """A few steps of two concepts jointly on the tiny model (2 rows each: 4 rows a step)."""
  c = base_config()
  c.model = model_path
  c.layer = 1
  c.workdir = str(workdir)
  c.data.concepts = (0, 1)
  c.data.max_examples = 4
  c.data.max_response_tokens = 16
  c.train.batch_size = 2
  c.train.epochs = 2
  c.train.checkpoint_every = 2
  c.mesh.data, c.mesh.model = data, model
  return sweep.apply(c, overrides)


PROMPTS = [[2, 8, 9, 10], [2, 11, 12], [2, 13, 14, 15, 16], [2, 9]]


def generations(params, cfg, prompts=PROMPTS):
  """Greedy ids unsteered and steered at every token (prefill and decode)."""
  from prosv_jax import steer
  from prosv_jax.sampling import SamplingConfig, generate_ids
  sampling = SamplingConfig(max_new_tokens=8)
  rng = np.random.default_rng(0)
  vector = {'factor': np.asarray([1.5], np.float32),
            'direction': rng.normal(size=(1, cfg.hidden_size)).astype(np.float32)}
  kwargs = steer.generation_kwargs(vector, 0, 1, steer.parse_positions('all'), len(prompts))
  return {'plain': generate_ids(params, cfg, prompts, sampling=sampling),
          'steered': generate_ids(params, cfg, prompts, sampling=sampling, **kwargs)}


def run_result(workdir, summary) -> dict:
  from prosv_jax.artifacts import load_vectors
  v = load_vectors(os.path.join(str(workdir), 'vectors'))
  with open(os.path.join(str(workdir), 'metrics.jsonl')) as f:
    lines = [json.loads(x) for x in f if x.strip()]
  return {'factor': v.factor.tolist(), 'direction': v.direction.tolist(),
          'loss': [x['loss_per_concept'] for x in lines], 'steps': [x['step'] for x in lines],
          'final_loss': summary['final_loss']}


# ---------------------------------------------------------------- subprocess workers


def _worker_devices(model_path, out_dir, scope):
  """One process, 4 CPU devices: training on several meshes, generation, a bad mesh. scope
  'core' trains only the runs the default suite compares ('one', 'd2m2', 'resumed'); 'full'
  adds the other meshes, packing, no bank, SimPO and slots (the slow tier: ~3x the time)."""
  from prosv_jax.models.load import load_model
  from prosv_jax.train.job import train_and_export
  from prosv_jax.train.trainer import Trainer
  assert jax.device_count() == 4, jax.devices()
  out = {'runs': {}}
  runs = {
      'one': (1, 1, {}),
      'd2m2': (2, 2, {'mesh.shard_concepts': True}),  # concepts split over 'data' as well
      'd4m1': (4, 1, {}),
      'one_nobank': (1, 1, {'train.cache_hidden': False}),
      'd2m2_nobank': (2, 2, {'train.cache_hidden': False}),
      'one_simpo': (1, 1, {'train.loss': 'simpo'}),  # neutral answers: sharded generation
      # Packed and right-padded rows on a mesh (packed rows split evenly over 'data').
      'one_padded': (1, 1, {'data.pack': 'off'}),
      'd2m2_packed': (2, 2, {'data.pack': 'on', 'mesh.shard_concepts': True}),
      'd4m1_packed_nobank': (4, 1, {'data.pack': 'on', 'train.cache_hidden': False}),
      'd1m4_simpo': (1, -1, {'train.loss': 'simpo'}),
  }
  if scope == 'core':
    runs = {k: runs[k] for k in ('one', 'd2m2')}
  for name, (data, model, overrides) in runs.items():
    workdir = os.path.join(out_dir, name)
    summary = train_and_export(run_config(model_path, workdir, data, model, **overrides))
    out['runs'][name] = run_result(workdir, summary)

  # Grid cells as slots (prosv_jax.train.slots): 4 cells x 2 concepts, the 8 slots split
  # over 'data' with shard_concepts.
  slot_runs = {'slots_one': (1, 1, {}), 'slots_d2m2': (2, 2, {'mesh.shard_concepts': True})}
  for name, (data, model, overrides) in (slot_runs if scope == 'full' else {}).items():
    from prosv_jax.train.job import train
    trained = train(run_config(model_path, os.path.join(out_dir, name), data, model,
                               **{'train.slots': 'beta=1,4;seed=0,5', **overrides}))
    out['runs'][name] = [run_result(os.path.dirname(cell.summary['artifacts']['vectors']),
                                    cell.summary) for cell in trained.cells]

  # Half on one device, the rest resumed from its checkpoint on a 2 x 2 mesh.
  workdir = os.path.join(out_dir, 'resumed')
  train_and_export(run_config(model_path, workdir), max_steps=STEPS // 2)
  summary = train_and_export(run_config(model_path, workdir, 2, 2,
                                        **{'mesh.shard_concepts': True}))
  out['runs']['resumed'] = run_result(workdir, summary)

  trainer = Trainer(run_config(model_path, os.path.join(out_dir, 'placed'), 2, 2))
  q = trainer.model.params['layers']['attn']['q']['kernel']
  out['q_spec'] = [list(x) if isinstance(x, tuple) else x for x in q.sharding.spec]
  out['q_devices'] = len(q.sharding.device_set)

  model = load_model(model_path)
  out['gen'] = {'one': generations(model.params, model.cfg),
                'one_odd': generations(model.params, model.cfg, PROMPTS[:3])}
  for name, (data, width) in {'d2m2': (2, 2), 'd4m1': (4, 1)}.items():
    sharded = parallel.shard_params(model.params, parallel.make_mesh(data, width))
    out['gen'][name] = generations(sharded, model.cfg)
    out['gen'][name + '_odd'] = generations(sharded, model.cfg, PROMPTS[:3])  # 3 rows: replicated

  try:
    Trainer(run_config(model_path, os.path.join(out_dir, 'bad'), 3, 1))
    out['bad_mesh'] = None
  except ProsvError as e:
    out['bad_mesh'] = str(e)
  with open(os.path.join(out_dir, 'result.json'), 'w') as f:
    json.dump(out, f)


def _worker_multihost(model_path, workdir, out_file):
  """One of two processes with 2 CPU devices each; the 2 x 2 mesh spans both."""
  assert parallel.maybe_initialize_distributed()
  assert parallel.maybe_initialize_distributed()  # idempotent
  from prosv_jax.train.job import train_and_export
  assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
  summary = train_and_export(run_config(model_path, workdir, 2, 2,
                                        **{'mesh.shard_concepts': True}))
  model = parallel.load_on_mesh(model_path, 'float32', parallel.make_mesh(2, 2))
  q = model.params['layers']['attn']['q']['kernel']
  out = {'process': jax.process_index(), 'summary_final_loss': summary['final_loss'],
         'summary_factor': summary['factor'], 'gen': generations(model.params, model.cfg),
         'q_addressable': len(q.addressable_shards), 'q_fully_addressable': q.is_fully_addressable}
  with open(out_file, 'w') as f:
    json.dump(out, f)


# ---------------------------------------------------------------- fixtures


def _env(devices: int, **extra) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', **extra)
  env.pop('PROSV_DISTRIBUTED', None)
  return env


def _devices(model_path, tmp_path_factory, scope) -> dict:
  out_dir = tmp_path_factory.mktemp('devices')
  proc = subprocess.run([sys.executable, HERE, 'devices', model_path, str(out_dir), scope],
                        env=_env(4), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(out_dir / 'result.json') as f:
    return json.load(f)


@pytest.fixture(scope='module')
def four_devices(tiny_model_path, tmp_path_factory):
  """The results of _worker_devices, core runs."""
  return _devices(tiny_model_path, tmp_path_factory, 'core')


@pytest.fixture(scope='module')
def four_devices_full(tiny_model_path, tmp_path_factory):
  """The results of _worker_devices, every run."""
  return _devices(tiny_model_path, tmp_path_factory, 'full')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def two_hosts(tiny_model_path, tmp_path_factory):
  """(results of both _worker_multihost processes, their shared workdir)."""
  folder = tmp_path_factory.mktemp('hosts')
  workdir = folder / 'w'
  port = _free_port()
  procs, outs = [], []
  for i in range(2):
    outs.append(folder / f'out{i}.json')
    env = _env(2, JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(
        [sys.executable, HERE, 'multihost', tiny_model_path, str(workdir), str(outs[-1])],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  logs = []
  try:
    for proc in procs:
      logs.append(proc.communicate(timeout=600)[1])
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  for proc, log in zip(procs, logs):
    assert proc.returncode == 0, log[-4000:]
  results = []
  for out in outs:
    with open(out) as f:
      results.append(json.load(f))
  return results, workdir


# ---------------------------------------------------------------- rules (no devices needed)


QWEN25_32B = ModelConfig(family='qwen2', vocab_size=152064, hidden_size=5120,
                         intermediate_size=27648, num_layers=64, num_heads=40, num_kv_heads=8,
                         head_dim=128, qkv_bias=True, tie_embeddings=False)


def _specs(cfg, data, model):
  specs = parallel.param_specs(transformer.param_shapes(cfg),
                               AbstractMesh((data, model), parallel.AXES))
  flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
  return {parallel.path_str(path): tuple(spec) for path, spec in flat}


def test_rules_give_fsdp_and_tensor_parallel_specs_for_the_real_parameter_names():
  specs = _specs(QWEN25_32B, 2, 8)  # every dimension divides: every rule applies as written
  assert specs == {
      'embed/embedding': ('model', 'data'),  # [V, D]
      'lm_head/kernel': ('data', 'model'),  # [D, V]
      'final_norm/scale': (),
      'layers/attn_norm/scale': (),
      'layers/mlp_norm/scale': (),
      'layers/attn/q/kernel': (None, 'data', 'model'),  # [N, D, H*E]
      'layers/attn/k/kernel': (None, 'data', 'model'),
      'layers/attn/v/kernel': (None, 'data', 'model'),
      'layers/attn/q/bias': (None, 'model'),
      'layers/attn/k/bias': (None, 'model'),
      'layers/attn/v/bias': (None, 'model'),
      'layers/attn/o/kernel': (None, 'model', 'data'),  # [N, H*E, D]
      'layers/mlp/gate/kernel': (None, 'data', 'model'),  # [N, D, F]
      'layers/mlp/up/kernel': (None, 'data', 'model'),
      'layers/mlp/down/kernel': (None, 'model', 'data'),  # [N, F, D]
  }


def test_a_dimension_its_axis_does_not_divide_is_replicated():
  # SmolLM2-135M-like: 9 heads x 64, vocab 49152, MLP 1536, hidden 576, 30 layers.
  cfg = ModelConfig(family='llama', vocab_size=49153, hidden_size=576, intermediate_size=1536,
                    num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64)
  specs = _specs(cfg, 5, 64)  # 576 % 5, 49153 % 64, 3*64 % 64 == 0, 1536 % 64 == 0
  assert specs['embed/embedding'] == ()  # tied: no lm_head; neither V nor D divides
  assert specs['layers/attn/q/kernel'] == (None, None, 'model')
  assert specs['layers/attn/k/kernel'] == (None, None, 'model')
  assert specs['layers/mlp/down/kernel'] == (None, 'model')
  gemma3 = ModelConfig(family='gemma3', vocab_size=262144, hidden_size=640,
                       intermediate_size=2048, num_layers=18, num_heads=4, num_kv_heads=1,
                       head_dim=256, qk_norm=True, sandwich_norms=True, norm_plus_one=True)
  specs = _specs(gemma3, 4, 1)
  assert specs['layers/attn/q_norm/scale'] == () and specs['layers/post_mlp_norm/scale'] == ()
  assert specs['layers/attn/k/kernel'] == (None, 'data', 'model')  # size 1 always divides


def test_fit_spec_and_batch_sharding_fall_back_per_dimension():
  mesh = AbstractMesh((2, 4), parallel.AXES)
  assert parallel.fit_spec(P('data', 'model'), (6, 10), mesh) == P('data')
  assert parallel.fit_spec(P(('data', 'model'),), (16, 3), mesh) == P(('data', 'model'))
  assert parallel.fit_spec(P(('data', 'model'),), (12, 3), mesh) == P()
  with pytest.raises(ProsvError, match='fix the sharding rule'):
    parallel.fit_spec(P(None, 'data', 'model'), (4, 4), mesh)
  custom = ((r'^embed/', P('data')), (r'embed', P('model')))  # first match wins
  specs = parallel.param_specs({'embed': {'embedding': np.zeros((8, 8))}}, mesh, custom)
  assert specs['embed']['embedding'] == P('data')


def test_bad_mesh_sizes_name_the_config_keys():
  with pytest.raises(ProsvError, match=r'mesh.data=2 x mesh.model=1 does not match the 1 '
                                       r'visible devices; set --config.mesh.data and '
                                       r'--config.mesh.model'):
    parallel.make_mesh(2, 1)
  for data, model, message in ((0, 1, r'mesh.data=0; .*--config.mesh.data=-1'),
                               (1, -2, r'mesh.model=-2'),
                               (-1, -1, r'both -1; .*--config.mesh.model=1')):
    with pytest.raises(ProsvError, match=message):
      parallel.make_mesh(data, model)
  from prosv_jax.train.config import check_config
  config = base_config()
  config.mesh.data = 0
  with pytest.raises(ProsvError, match='mesh.data=0'):
    check_config(config)


def test_one_by_one_is_no_mesh_and_minus_one_takes_every_device():
  config = base_config()
  assert (config.mesh.data, config.mesh.model) == (1, 1)
  assert parallel.mesh_from_config(config) is None
  config.mesh.data = -1  # one device here: still no mesh to shard over
  assert parallel.mesh_from_config(config) is None
  mesh = parallel.make_mesh(-1, 1)
  assert dict(mesh.shape) == {'data': jax.device_count(), 'model': 1}
  # For benchmarks: a mesh over a subset of the devices.
  assert parallel.make_mesh(1, 1, devices=jax.devices()[:1]).size == 1


def test_distributed_initialization_follows_the_launch_environment(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  for key in ('PROSV_DISTRIBUTED', 'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES',
              'JAX_PROCESS_ID', 'SLURM_JOB_ID', 'SLURM_NTASKS'):
    monkeypatch.delenv(key, raising=False)
  assert not parallel.maybe_initialize_distributed() and not calls  # one process: no-op

  monkeypatch.setenv('SLURM_JOB_ID', '7')
  monkeypatch.setenv('SLURM_NTASKS', '1')
  assert not parallel.maybe_initialize_distributed()  # a one-task SLURM job
  monkeypatch.setenv('SLURM_NTASKS', '4')
  assert parallel.maybe_initialize_distributed() and calls.pop() == {}  # JAX reads SLURM_*
  monkeypatch.setenv('PROSV_DISTRIBUTED', '0')
  assert not parallel.maybe_initialize_distributed() and not calls  # opted out
  monkeypatch.setenv('PROSV_DISTRIBUTED', '1')
  assert parallel.maybe_initialize_distributed() and calls.pop() == {}  # auto-detection
  for key in ('PROSV_DISTRIBUTED', 'SLURM_JOB_ID', 'SLURM_NTASKS'):
    monkeypatch.delenv(key)

  monkeypatch.setenv('JAX_NUM_PROCESSES', '2')
  with pytest.raises(ProsvError, match='JAX_COORDINATOR_ADDRESS and JAX_PROCESS_ID not set'):
    parallel.maybe_initialize_distributed()
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'host0:1234')
  monkeypatch.setenv('JAX_PROCESS_ID', '1')
  assert parallel.maybe_initialize_distributed()
  assert calls.pop() == dict(coordinator_address='host0:1234', num_processes=2, process_id=1)

  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: True)
  assert parallel.maybe_initialize_distributed() and not calls  # idempotent


def test_only_process_zero_writes(tmp_path, tiny_model_path, monkeypatch):
  from prosv_jax.train.job import train_and_export
  monkeypatch.setattr(parallel, 'is_main_process', lambda: False)
  summary = train_and_export(run_config(tiny_model_path, tmp_path / 'w'))
  assert summary['steps'] == STEPS
  assert os.listdir(tmp_path / 'w') == ['checkpoints']  # written by every process together
  assert sorted(os.listdir(tmp_path / 'w' / 'checkpoints')) == ['2', '4']


# ---------------------------------------------------------------- 4 devices, one process


def assert_same_run(got, want, rtol=1e-5, atol=1e-6):
  np.testing.assert_allclose(got['factor'], want['factor'], rtol=rtol)
  np.testing.assert_allclose(got['direction'], want['direction'], rtol=rtol * 10, atol=atol)
  assert got['steps'] == want['steps'] == list(range(1, STEPS + 1))
  # metrics.jsonl rounds losses to 5 decimals: allow a unit of the last one on top.
  np.testing.assert_allclose(got['loss'], want['loss'], rtol=rtol / 10, atol=2e-5)
  np.testing.assert_allclose(got['final_loss'], want['final_loss'], rtol=rtol)


def test_sharded_training_equals_one_device(four_devices):
  runs = four_devices['runs']
  assert_same_run(runs['d2m2'], runs['one'])
  assert not np.allclose(runs['one']['direction'][0], runs['one']['direction'][1])


@pytest.mark.slow
def test_sharded_slot_run_equals_one_device(four_devices_full):
  runs = four_devices_full['runs']
  assert len(runs['slots_d2m2']) == len(runs['slots_one']) == 4
  for got, want in zip(runs['slots_d2m2'], runs['slots_one']):
    assert_same_run(got, want)
  assert not np.allclose(runs['slots_one'][0]['factor'], runs['slots_one'][2]['factor'])


def test_a_run_resumes_on_another_mesh(four_devices):
  runs = four_devices['runs']
  assert_same_run(runs['resumed'], runs['one'])


@pytest.mark.slow
@pytest.mark.parametrize('name', ['d2m2_packed', 'd4m1_packed_nobank'])
def test_sharded_packed_training_equals_one_device_padded(four_devices_full, name):
  runs = four_devices_full['runs']
  assert_same_run(runs[name], runs['one_padded'])
  assert_same_run(runs['one'], runs['one_padded'])  # 'auto', whichever it picked


@pytest.mark.slow
@pytest.mark.parametrize('name,one', [
    ('d4m1', 'one'),  # data parallel only
    ('d2m2_nobank', 'one_nobank'),  # without the block-L bank
    ('d1m4_simpo', 'one_simpo'),  # SimPO with its generated answers, model parallel only
])
def test_other_meshes_and_modes_equal_one_device(four_devices_full, name, one):
  runs = four_devices_full['runs']
  assert_same_run(runs[name], runs[one])


def test_frozen_weights_are_spread_over_the_mesh(four_devices):
  assert four_devices['q_spec'] == [None, 'data', 'model'] and four_devices['q_devices'] == 4


def test_sharded_greedy_generation_equals_one_device(four_devices):
  gen = four_devices['gen']
  assert gen['one']['plain'] != gen['one']['steered']  # the steering really acts
  assert all(len(row) == 8 for row in gen['one']['plain'])
  for name in ('d2m2', 'd4m1'):
    assert gen[name] == gen['one'], name
    assert gen[name + '_odd'] == gen['one_odd'], name


def test_a_mesh_that_does_not_match_the_devices_is_refused(four_devices):
  assert four_devices['bad_mesh'] == (
      'mesh.data=3 x mesh.model=1 does not match the 4 visible devices; set --config.mesh.data '
      'and --config.mesh.model so that their product is 4 (-1 = all remaining)')


# ---------------------------------------------------------------- two processes


@pytest.mark.slow
def test_two_processes_train_like_one_device_and_only_process_zero_writes(two_hosts,
                                                                          four_devices):
  results, workdir = two_hosts
  one = four_devices['runs']['one']
  assert sorted(r['process'] for r in results) == [0, 1]
  assert_same_run(run_result(workdir, {'final_loss': results[0]['summary_final_loss']}), one)
  for r in results:  # every process returns the same summary
    np.testing.assert_allclose(r['summary_final_loss'], one['final_loss'], rtol=1e-5)
    np.testing.assert_allclose(r['summary_factor'], one['factor'], rtol=1e-5)
    # Each process holds only its own 2 of the 4 shards of a weight.
    assert r['q_addressable'] == 2 and not r['q_fully_addressable']
    assert r['gen'] == four_devices['gen']['one']
  assert sorted(os.listdir(workdir)) == [
      'checkpoints', 'config.json', 'control_vector_concept0.gguf',
      'control_vector_concept1.gguf', 'metrics.jsonl', 'summary.json', 'vectors']


if __name__ == '__main__':
  {'devices': _worker_devices, 'multihost': _worker_multihost}[sys.argv[1]](*sys.argv[2:])
