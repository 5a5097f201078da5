"""launch/bench_scale.py: throughput rows over device and concept counts, and its FLOP count."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'launch'))
import bench_scale  # noqa: E402  (defines its absl flags; nothing here parses them)

SCRIPT = os.path.join(ROOT, 'launch', 'bench_scale.py')


def run_script(*args, timeout=300):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # the script sets the device count of its own workers
  return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope='module')
def tiny_tokenizer_model(tmp_path_factory):
  """A tiny HF model folder; here it only supplies the tokenizer (--random_model=tiny)."""
  pytest.importorskip('torch')  # the folder is made by transformers' PyTorch classes
  from hf_fixtures import save_tiny_hf_model, save_tiny_tokenizer
  path, _ = save_tiny_hf_model(tmp_path_factory.mktemp('tiny'), 'llama', num_hidden_layers=3)
  save_tiny_tokenizer(path)
  return path


@pytest.mark.slow
def test_rows_for_every_device_and_concept_count(tiny_tokenizer_model):
  proc = run_script('--random_model=tiny', f'--model={tiny_tokenizer_model}', '--data=demo',
                    '--devices=1,2', '--concepts=1,2', '--steps=1', '--batch_size=4',
                    '--train_examples=8', '--max_response_tokens=16', '--peak_tflops=1')
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout)  # stdout is exactly the one JSON object
  assert out['command'].startswith('python ') and '--devices=1,2' in out['command']
  assert out['machine']['platform'] == 'cpu' and out['machine']['simulated_devices']
  assert {'cpus', 'jax', 'device_kinds'} <= set(out['machine'])
  assert out['settings']['layer'] == bench_scale.TINY_LAYER
  rows = out['results']
  assert [(r['devices'], r['concepts']) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
  for r in rows:
    assert r['mesh'] == [r['devices'], 1] and r['rows'] == 4 * r['concepts']
    for key in ('steps_per_s', 'concept_steps_per_s', 'tokens_per_s', 'tflops',
                'fraction_of_peak', 'compile_s', 'peak_rss_gb'):
      assert r[key] > 0, (key, r)
    assert r['concept_steps_per_s'] == pytest.approx(r['concepts'] * r['steps_per_s'], rel=1e-3)
    assert 0 < r['tokens_per_step'] <= r['padded_tokens_per_step']
    assert r['fraction_of_peak'] == pytest.approx(r['tflops'] / r['devices'], abs=2e-4)


def test_bad_settings_fail_before_any_run():
  proc = run_script('--devices=3', '--mesh_model=2', timeout=120)
  assert proc.returncode != 0 and not proc.stdout
  assert 'error: --devices=3 is not a multiple of --mesh_model=2' in proc.stderr


def test_random_shapes_are_the_real_models():
  from prosv_jax.train.config import VARIANTS
  from prosv_jax.models.config import from_hf_config
  from prosv_jax.models import transformer
  sizes = {'smollm2': 134.5e6, 'gemma3_270m': 268.1e6, 'gemma2_2b': 2.614e9,
           'gemma2_9b': 9.242e9, 'qwen25_32b': 32.76e9}
  for name, size in sizes.items():
    cfg = from_hf_config(bench_scale.random_hf_config(name, 49152))
    assert cfg.hidden_size == VARIANTS[name].width
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(transformer.param_shapes(cfg)))
    assert count == pytest.approx(size, rel=2e-3), name


def test_step_flops_agrees_with_xla_and_skips_weight_gradients():
  """XLA's own count of a compiled step: one block above L, no padding, small attention."""
  transformers = pytest.importorskip('transformers')
  from prosv_jax import data, steer
  from prosv_jax.train import optim
  from prosv_jax.train.config import base_config
  from prosv_jax.models import transformer
  from prosv_jax.models.config import from_hf_config
  from prosv_jax.train.step import train_step
  cfg = from_hf_config(transformers.LlamaConfig(
      hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False))
  layer, rows, prompt, response = 0, 4, 24, 8  # 32 tokens a row: a multiple of 16, no padding
  examples = [data.Example(np.arange(1, prompt + 1, dtype=np.int32),
                           np.arange(3, response + 3, dtype=np.int32), 0, '')] * rows
  batch = {k: jnp.asarray(v) for k, v in data.pad_batch(examples, 0, 16).items()}
  batch['rows'] = jnp.arange(rows, dtype=jnp.int32)
  optimizer = optim.make_optimizer(base_config().optim, 10, cfg.hidden_size)
  sp = steer.init_steer_params(jax.random.key(1), cfg.hidden_size, 1, 4.0, 8.0)
  state = {'steer': sp, 'opt': optimizer.init(sp), 'step': jnp.zeros((), jnp.int32)}
  compiled = train_step.lower(
      state, transformer.param_shapes(cfg), batch,
      jax.ShapeDtypeStruct((rows, prompt + response, cfg.hidden_size), jnp.float32), cfg=cfg,
      layer=layer, positions=steer.parse_positions('p2+s2'), loss_kind='lang', num_concepts=1,
      optimizer=optimizer, response_width=response).compile()
  cost = compiled.cost_analysis()
  xla = (cost[0] if isinstance(cost, (list, tuple)) else cost)['flops']
  ours = bench_scale.step_flops(cfg, layer, examples)
  # XLA also counts elementwise work and the masked half of each attention square. A weight
  # gradient (the usual 6x rather than 4x per weight and token) would put ours near 2/3 of it.
  assert 0.85 * xla <= ours <= xla, (ours, xla)
