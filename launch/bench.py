"""Throughput benchmark: one JSON line per case, with the command and the machine.

  python launch/bench.py                       # SmolLM2-135M, default cases
  python launch/bench.py --batch=1,8 --prompt_len=128 --new_tokens=32 --dtype=bfloat16

Prefill tokens/s counts prompt tokens (padding included, all rows the full width); decode
tokens/s counts generated tokens over all rows (EOS ignored, so every row runs to the end).
Each case is compiled and run once before it is timed; the figure is the best of --repeats.
"""

import json
import os
import platform
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from prosv_jax.models.load import DEFAULT_MODEL, load_model
from prosv_jax.sampling import SamplingConfig, decode, prefill

MODEL = flags.DEFINE_string('model', DEFAULT_MODEL, 'Model spec.')
DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Weight dtype.')
BATCH = flags.DEFINE_list('batch', ['1', '8', '32'], 'Batch sizes.')
PROMPT_LEN = flags.DEFINE_list('prompt_len', ['64', '256'], 'Prompt lengths.')
NEW_TOKENS = flags.DEFINE_integer('new_tokens', 64, 'Decode steps per case.')
REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per case (best is reported).')


def machine() -> dict:
  dev = jax.devices()[0]
  return {'platform': dev.platform, 'device': dev.device_kind, 'devices': jax.device_count(),
          'cpus': os.cpu_count(), 'host': platform.machine(), 'jax': jax.__version__}


def best_time(fn, repeats):
  jax.block_until_ready(fn())  # compile + warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def main(argv):
  del argv
  model = load_model(MODEL.value, DTYPE.value)
  cfg, params = model.cfg, model.params
  command = 'python ' + ' '.join(sys.argv)
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
      run_decode = lambda: decode(params, cfg, cache, logits, lengths, jax.random.key(0),
                                  sampling=sampling, eos_ids=(), pad_id=0)
      t_decode = best_time(run_decode, REPEATS.value)
      print(json.dumps({
          'case': 'inference', 'model': MODEL.value, 'dtype': DTYPE.value, 'batch': b,
          'prompt_len': p, 'new_tokens': NEW_TOKENS.value,
          'prefill_tokens_per_s': round(b * p / t_prefill, 1),
          'decode_tokens_per_s': round(b * NEW_TOKENS.value / t_decode, 1),
          'prefill_s': round(t_prefill, 4), 'decode_s': round(t_decode, 4),
          'command': command, 'machine': machine()}), flush=True)


if __name__ == '__main__':
  app.run(main)
