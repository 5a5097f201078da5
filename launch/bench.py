"""Benchmarks: one JSON line per case, with the command and the machine.

  python launch/bench.py --suite=inference            # prefill / decode tokens/s
  python launch/bench.py --suite=steer_decode         # decode tokens/s unsteered, PrOSV, FSSV
  python launch/bench.py --suite=train                # PrOSV/FSSV steps/s at K concepts/step
  python launch/bench.py --suite=reference            # one concept's full training vs PyTorch

Prefill tokens/s counts prompt tokens (all rows the full width); decode tokens/s counts
generated tokens over all rows (EOS ignored, so every row runs to the end). Training tokens/s
counts real (non-pad) prompt+response tokens. Every case is compiled and run once before it
is timed. Training cases use AxBench Concept10 (2b_l10) beside the repo; K above 10 reuses
concepts under new ids (the workload, not the data, is what is measured).
"""

import json
import os
import platform
import sys
import tempfile
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from prosv_jax import data, steer
from prosv_jax.train import optim
from prosv_jax.train.config import method_config
from prosv_jax.models.load import DEFAULT_MODEL, load_model
from prosv_jax.sampling import SamplingConfig, decode, prefill, row_keys
from prosv_jax.train.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONCEPT10 = os.path.join(ROOT, '..', 'shared', 'data', 'axbench', 'concept10', 'prod_2b_l10_v1')

SUITE = flags.DEFINE_enum('suite', 'inference', ['inference', 'steer_decode', 'train',
                                                 'reference'], 'Which cases to run.')
MODEL = flags.DEFINE_string('model', DEFAULT_MODEL, 'Model spec.')
DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Weight dtype.')
BATCH = flags.DEFINE_list('batch', ['1', '8', '32'], 'Inference batch sizes.')
PROMPT_LEN = flags.DEFINE_list('prompt_len', ['64', '256'], 'Inference prompt lengths.')
NEW_TOKENS = flags.DEFINE_integer('new_tokens', 64, 'Decode steps per case.')
REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per inference case (best reported).')
CONCEPTS = flags.DEFINE_list('concepts_per_step', ['1', '4', '16'], 'K for the train suite.')
TRAIN_EXAMPLES = flags.DEFINE_integer('train_examples', 24, 'Examples per concept (train suite).')
TRAIN_STEPS = flags.DEFINE_integer('train_steps', 2, 'Timed steps per train case.')
DATA = flags.DEFINE_string('data', CONCEPT10, 'AxBench folder for the train/reference suites.')
LAYER = flags.DEFINE_integer('layer', 10, 'Steering layer.')
RESPONSE_TOKENS = flags.DEFINE_integer('max_response_tokens', 0, 'Train/reference suites: cut '
                                       'responses to this many tokens (0 = whole, the default '
                                       'since the paper-faithful defaults; 128 was the old one).')
REMAT_ROWS = flags.DEFINE_integer('remat_rows', 96, 'Train cases with more rows per step than '
                                  'this recompute the upper blocks in the backward pass.')


def machine() -> dict:
  dev = jax.devices()[0]
  return {'platform': dev.platform, 'device': dev.device_kind, 'devices': jax.device_count(),
          'cpus': os.cpu_count(), 'host': platform.machine(), 'jax': jax.__version__}


def emit(record: dict):
  record.update(command='python ' + ' '.join(sys.argv), machine=machine())
  print(json.dumps(record), flush=True)


def best_time(fn, repeats):
  jax.block_until_ready(fn())  # compile + warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def run_inference(model):
  cfg, params = model.cfg, model.params
  rng = np.random.default_rng(0)
  for b in map(int, BATCH.value):
    for p in map(int, PROMPT_LEN.value):
      tokens = jnp.asarray(rng.integers(10, cfg.vocab_size, size=(b, p)), jnp.int32)
      lengths = jnp.full((b,), p, jnp.int32)
      size = p + NEW_TOKENS.value
      run_prefill = lambda: prefill(params, cfg, tokens, lengths, cache_size=size)
      t_prefill = best_time(run_prefill, REPEATS.value)
      logits, cache = run_prefill()
      sampling = SamplingConfig(max_new_tokens=NEW_TOKENS.value)
      run_decode = lambda: decode(params, cfg, cache, logits, lengths, row_keys(0, b),
                                  sampling=sampling, eos_ids=(), pad_id=0)
      t_decode = best_time(run_decode, REPEATS.value)
      emit({'case': 'inference', 'model': MODEL.value, 'dtype': DTYPE.value, 'batch': b,
            'prompt_len': p, 'new_tokens': NEW_TOKENS.value,
            'prefill_tokens_per_s': round(b * p / t_prefill, 1),
            'decode_tokens_per_s': round(b * NEW_TOKENS.value / t_decode, 1),
            'prefill_s': round(t_prefill, 4), 'decode_s': round(t_decode, 4)})


def run_steer_decode(model):
  """Decode throughput with no vector, a prompt-only vector and a full-sequence vector."""
  cfg, params = model.cfg, model.params
  b, p = int(BATCH.value[-1]), int(PROMPT_LEN.value[0])
  tokens = jnp.asarray(np.random.default_rng(0).integers(10, cfg.vocab_size, (b, p)), jnp.int32)
  lengths = jnp.full((b,), p, jnp.int32)
  sp = steer.init_steer_params(jax.random.key(0), cfg.hidden_size, 1, 4.0, 8.0)
  sampling = SamplingConfig(max_new_tokens=NEW_TOKENS.value)
  for name in ('unsteered', 'p2+s2', 'all'):
    kw = {}
    if name != 'unsteered':
      kw = steer.generation_kwargs(sp, 0, LAYER.value, steer.parse_positions(name), b)
    mask = kw.pop('steer_mask_fn', lambda *_: None)(lengths, p)
    logits, cache = prefill(params, cfg, tokens, lengths, cache_size=p + NEW_TOKENS.value,
                            steer=kw.get('steer'), steer_mask=mask,
                            steer_layer=kw.get('steer_layer'))
    run = lambda: decode(params, cfg, cache, logits, lengths, row_keys(0, b),
                         sampling=sampling, eos_ids=(), pad_id=0, **kw)
    t = best_time(run, REPEATS.value)
    emit({'case': 'steer_decode', 'steer': name, 'model': MODEL.value, 'batch': b,
          'prompt_len': p, 'new_tokens': NEW_TOKENS.value,
          'decode_tokens_per_s': round(b * NEW_TOKENS.value / t, 1), 'decode_s': round(t, 4)})


def bench_table(k: int, folder: str, source: str = '') -> str:
  """A train table with at least k concept ids (extra ids copy existing concepts).

  source: an AxBench folder or file, or 'demo' for the packaged demo concepts ('' = --data).
  """
  source = source or DATA.value
  table = data.demo_table()[0] if source == 'demo' else data.read_concept_table(source)
  ids = sorted(i for i in table['concept_id'].unique() if i >= 0)
  parts = [table]
  for extra in range(len(ids), k):
    copy = table[table['concept_id'] == ids[extra % len(ids)]].copy()
    copy['concept_id'] = extra
    parts.append(copy)
  import pandas as pd
  path = os.path.join(folder, f'bench_k{k}.parquet')
  pd.concat(parts).to_parquet(path)
  return path


def train_config(positions: str, k: int, source: str, examples: int, epochs: int = 12):
  c = method_config('fssv' if positions == 'all' else 'prosv')  # the configs/ presets
  c.positions = positions
  c.layer = LAYER.value
  c.model = MODEL.value
  c.dtype = DTYPE.value
  c.data.source = source
  c.data.concepts = tuple(range(k))
  c.data.max_examples = examples
  c.train.epochs = epochs
  c.data.max_response_tokens = RESPONSE_TOKENS.value
  return c


def timed_steps(trainer, steps: int):
  """(seconds, real tokens) for `steps` steps, each batch shape compiled beforehand.

  Bucketed batches come in a few widths; the same steps run once untimed first, so the timed
  pass measures steady-state throughput rather than compilation.
  """
  def run():
    state, tokens = trainer.init_state(), 0
    for s in range(steps):
      state, _, batch_tokens = trainer.step(state, s)
      tokens += batch_tokens
    return jax.block_until_ready(state), tokens

  run()
  start = time.perf_counter()
  _, tokens = run()
  return time.perf_counter() - start, tokens


def run_train(model):
  with tempfile.TemporaryDirectory() as tmp:
    for k in map(int, CONCEPTS.value):
      source = bench_table(k, tmp)
      for positions in ('p2+s2', 'all'):
        config = train_config(positions, k, source, TRAIN_EXAMPLES.value)
        config.train.remat = k * config.train.batch_size > REMAT_ROWS.value
        trainer = Trainer(config, model)
        bank_s = trainer.prepare()
        secs, tokens = timed_steps(trainer, TRAIN_STEPS.value)
        emit({'case': 'train', 'positions': positions, 'concepts_per_step': k,
              'batch_per_concept': trainer.batch_size, 'model': MODEL.value,
              'layer': LAYER.value, 'remat': bool(config.train.remat),
              'steps_per_s': round(TRAIN_STEPS.value / secs, 4),
              'tokens_per_s': round(tokens / secs, 1),
              'concept_steps_per_s': round(k * TRAIN_STEPS.value / secs, 4),
              'bank_s': round(bank_s, 2), 'bank_rows': len(trainer.flat),
              'packed': trainer.packed,  # token slots per real token: padding's share
              'slots_per_token': round(trainer.slots_per_token, 4)})


def run_reference(model):
  """One concept's full 12-epoch training, ours against the paper's PyTorch recipe."""
  from torch_reference import torch_model_from_gguf, train_reference  # launch/, needs torch
  from prosv_jax.models.load import resolve
  trainer = Trainer(train_config('p2+s2', 1, DATA.value, 0), model)
  batches = [jax.device_get(trainer.make_batch(trainer.batch_rows(s)))
             for s in range(trainer.total_steps)]
  start = time.perf_counter()
  trainer.prepare()
  state = trainer.init_state()
  for s in range(trainer.total_steps):
    state, m, _ = trainer.step(state, s)
  jax.block_until_ready(state)
  ours = time.perf_counter() - start
  ours_loss = float(np.mean(m['loss']))
  torch_model = torch_model_from_gguf(resolve(MODEL.value))
  c = trainer.config
  factor_lr, direction_lr = optim.scaled_lrs(c.optim, trainer.width)  # what our Adam used
  ref = train_reference(torch_model, batches, layer=c.layer, width=trainer.width,
                        beta=c.steer.beta, factor_lr=factor_lr,
                        direction_scale=c.steer.direction_scale,
                        direction_lr=direction_lr, total_steps=trainer.total_steps)
  emit({'case': 'reference', 'positions': 'p2+s2', 'model': MODEL.value, 'layer': c.layer,
        'steps': trainer.total_steps, 'batch': trainer.batch_size,
        'ours_wall_s': round(ours, 2), 'torch_wall_s': round(ref['wall_s'], 2),
        'speedup': round(ref['wall_s'] / ours, 3), 'ours_last_loss': round(ours_loss, 4),
        'torch_last_loss': round(float(ref['losses'][-1]), 4),
        'max_response_tokens': c.data.max_response_tokens,
        'note': 'ours includes compiling and the block-L bank; torch excludes model build'})


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  model = load_model(MODEL.value, DTYPE.value)
  {'inference': run_inference, 'steer_decode': run_steer_decode, 'train': run_train,
   'reference': run_reference}[SUITE.value](model)


if __name__ == '__main__':
  app.run(main)
