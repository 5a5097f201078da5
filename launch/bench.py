"""Benchmarks: one JSON line per case, with the command and the machine.

  python launch/bench.py --suite=inference            # prefill / decode tokens/s
  python launch/bench.py --suite=steer_decode         # decode tokens/s unsteered, PrOSV, FSSV
  python launch/bench.py --suite=train                # PrOSV/FSSV steps/s at K concepts/step
  python launch/bench.py --suite=reference            # one concept's full training vs PyTorch
  python launch/bench.py --suite=breakdown            # where one training step's time goes
  python launch/bench.py --suite=parity               # this device's fp32/bf16 logits vs the CPU
  python launch/bench.py --suite=sample               # decode as the evaluation samples (top-k 50)
  python launch/bench.py --suite=shapes               # compiled step shapes per run, planned vs not
  python launch/bench.py --suite=profile              # one step op by op (trace + HLO)
  python launch/bench.py --suite=work                 # FLOPs ours and the PyTorch recipe compute

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
import types

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from prosv_jax import data, parallel, steer
from prosv_jax import flops as flop_count
from prosv_jax.flops import step_flops
from prosv_jax.train import optim
from prosv_jax.train.config import method_config
from prosv_jax.models.load import DEFAULT_MODEL, load_model
from prosv_jax.sampling import SamplingConfig, decode, prefill, row_keys
from prosv_jax.train.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONCEPT10 = os.path.join(ROOT, '..', 'shared', 'data', 'axbench', 'concept10', 'prod_2b_l10_v1')

SUITE = flags.DEFINE_enum('suite', 'inference', ['inference', 'steer_decode', 'train',
                                                 'reference', 'breakdown', 'parity',
                                                 'sample', 'shapes', 'profile', 'work'],
                          'Which cases to run.')
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
PACK = flags.DEFINE_list('pack', ['auto'], 'Train suite: data.pack values to run (auto/on/off).')
POSITIONS = flags.DEFINE_list('train_positions', ['p2+s2', 'all'], 'Train suite: position specs.')
ATTENTION = flags.DEFINE_enum('attention', 'einsum', ['einsum', 'dot_product'],
                              'Train suite: how attention runs (config key attention).')
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


def run_sample(model):
  """Batch 32, prompts of 30-39 tokens (left-padded to 48), 128 new tokens sampled at
  temperature 1 with top-k 50 as the evaluation does (EOS ignored): decode ms per step."""
  cfg, params = model.cfg, model.params
  b, width, new = 32, 48, 128
  prompts = [[1] + list(np.random.default_rng(i).integers(100, 20000, 30 + i % 10))
             for i in range(b)]
  tokens = jnp.asarray([[0] * (width - len(p)) + p for p in prompts], jnp.int32)
  lengths = jnp.asarray([len(p) for p in prompts], jnp.int32)
  sampling = SamplingConfig(max_new_tokens=new, temperature=1.0, top_k=50)
  logits, cache = prefill(params, cfg, tokens, lengths, cache_size=width + new)
  run = lambda: decode(params, cfg, cache, logits, lengths, row_keys(0, b), sampling=sampling,
                       eos_ids=(), pad_id=0)
  t = median_time(run, REPEATS.value)
  emit({'case': 'sample', 'model': MODEL.value, 'batch': b, 'new_tokens': new, 'top_k': 50,
        'decode_ms_per_step': round(1000 * t / new, 1), 'seconds_per_row': round(t / b, 3)})


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
  peak = matmul_peak(dtype=jnp.dtype(DTYPE.value))
  with tempfile.TemporaryDirectory() as tmp:
    for k in map(int, CONCEPTS.value):
      source = bench_table(k, tmp)
      for positions in POSITIONS.value:
        for pack in PACK.value:
          config = train_config(positions, k, source, TRAIN_EXAMPLES.value)
          config.train.remat = k * config.train.batch_size > REMAT_ROWS.value
          config.data.pack = pack
          config.attention = ATTENTION.value
          trainer = Trainer(config, model)
          bank_s = trainer.prepare()
          secs, tokens = timed_steps(trainer, TRAIN_STEPS.value)
          flops = sum(step_flops(trainer.model.cfg, trainer.layer,
                                 [trainer.flat[r] for r in trainer.batch_rows(s)])
                      for s in range(TRAIN_STEPS.value))
          emit({'case': 'train', 'positions': positions, 'concepts_per_step': k,
                'batch_per_concept': trainer.batch_size, 'model': MODEL.value,
                'dtype': DTYPE.value, 'attention': ATTENTION.value,
                'layer': LAYER.value, 'remat': bool(config.train.remat),
                'steps_per_s': round(TRAIN_STEPS.value / secs, 4),
                'tokens_per_s': round(tokens / secs, 1),
                'concept_steps_per_s': round(k * TRAIN_STEPS.value / secs, 4),
                'useful_tflop_per_s': round(flops / secs / 1e12, 4),
                'matmul_peak_tflop_per_s': round(peak / 1e12, 3),
                'fraction_of_peak': round(flops / secs / peak, 4),
                'bank_s': round(bank_s, 2), 'bank_rows': len(trainer.flat),
                'pack': pack, 'packed': trainer.packed,
                # token slots per real token: padding's share
                'slots_per_token': round(trainer.slots_per_token, 4)})


def run_shapes(model):
  """Compiled step shapes of one concept's full right-padded run (12 epochs, as the
  evaluation trains each concept), per concept of --data: the shapes the steps need on their
  own against Trainer.step_shapes' plan (no new shape after the first epoch), and the token
  slots per real token both ways. Host work only: nothing is trained."""
  table = data.read_concept_table(DATA.value)
  total = {'raw': 0, 'planned': 0, 'raw_late': 0, 'raw_slots': 0, 'planned_slots': 0,
           'real': 0}
  for cid in sorted(int(i) for i in table['concept_id'].unique() if i >= 0):
    config = train_config('p2+s2', 1, DATA.value, 0)
    config.data.concepts = (cid,)
    config.data.pack = 'off'
    trainer = Trainer(config, model)
    spe, planned = trainer.steps_per_epoch, trainer.step_shapes
    raw, real = [], 0
    for step in range(trainer.total_steps):
      b = trainer.host_batch(trainer.batch_rows(step))
      raw.append((len(b['length']), b['tokens'].shape[1], trainer.response_width(b)))
      real += int(b['length'].sum())
    record = {'case': 'shapes', 'concept': cid, 'steps': trainer.total_steps,
              'shapes_raw': len(set(raw)), 'shapes_planned': len(set(planned)),
              'raw_new_after_epoch1': len(set(raw[spe:]) - set(raw[:spe])),
              'planned_new_after_epoch1': len(set(planned[spe:]) - set(planned[:spe])),
              'slots_per_token_raw': round(sum(n * w for n, w, _ in raw) / real, 4),
              'slots_per_token_planned': round(sum(n * w for n, w, _ in planned) / real, 4)}
    emit(record)
    total['raw'] += record['shapes_raw']
    total['planned'] += record['shapes_planned']
    total['raw_late'] += record['raw_new_after_epoch1']
    total['raw_slots'] += sum(n * w for n, w, _ in raw)
    total['planned_slots'] += sum(n * w for n, w, _ in planned)
    total['real'] += real
  emit({'case': 'shapes_total', 'shapes_raw': total['raw'], 'shapes_planned': total['planned'],
        'raw_new_after_epoch1': total['raw_late'],
        'slots_per_token_raw': round(total['raw_slots'] / total['real'], 4),
        'slots_per_token_planned': round(total['planned_slots'] / total['real'], 4)})


def run_parity(model):
  """Logits of this device (fp32 and bf16 weights) against the CPU's fp32 on real prompts."""
  from prosv_jax.chat import chat_prompt_ids
  from prosv_jax.models import transformer
  table = data.read_concept_table(DATA.value)
  texts = list(table['input'][:4])
  prompts = [chat_prompt_ids(model.tokenizer, t) for t in texts]
  width = max(map(len, prompts))
  tokens = np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, :len(p)] = p
  lengths = np.array([len(p) for p in prompts], np.int32)

  def logits(params, device):
    with jax.default_device(device):
      pos, valid = transformer.positions_from_lengths(jnp.asarray(lengths), width, False)
      out = jax.jit(lambda p, t: transformer.forward(p, model.cfg, t, pos, valid).logits)(
          jax.device_put(params, device), jnp.asarray(tokens))
      return np.asarray(out, np.float32), np.asarray(valid)

  cpu = jax.devices('cpu')[0]
  want, valid = logits(model.params, cpu)
  for dtype in ('float32', 'bfloat16'):
    params = jax.tree.map(lambda a: a.astype(dtype), model.params)
    got, _ = logits(params, jax.devices()[0])
    diff = np.abs(got - want)[valid]
    emit({'case': 'parity', 'model': MODEL.value, 'dtype': dtype,
          'device': jax.devices()[0].device_kind, 'tokens': int(valid.sum()),
          'max_abs_logit_diff': float(diff.max()),
          'mean_abs_logit_diff': float(diff.mean()),
          'logit_scale': float(np.abs(want[valid]).mean()),
          'top1_agreement': float(np.mean(got.argmax(-1)[valid] == want.argmax(-1)[valid]))})


def paper_batches(trainer, seed: int = 0) -> list[dict]:
  """The batches the paper's code builds for one concept: every epoch a fresh random order
  cut into batches, each padded to its own longest row (no bucketing, no width rounding)."""
  examples = trainer.concepts.examples[0]
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(int(trainer.config.train.epochs)):
    order = rng.permutation(len(examples))
    for start in range(0, len(order), trainer.batch_size):
      rows = order[start:start + trainer.batch_size]
      out.append(data.pad_batch([examples[i] for i in rows], trainer.pad_id, multiple=1))
  return out


def computed_work(trainer, paper: list[dict], same: list[dict]) -> dict:
  """FLOPs each side of the reference suite computes over one concept's run, padding and
  masked attention pairs included, and the speedup they allow at an equal rate per FLOP.

  Ours (right-padded runs, as planned): blocks L+1.. forward and input gradient on every slot
  and dense attention (flops.rows_cost), the LM head at the planned response slots, plus the
  block-L bank once (blocks 0..L forward over each example). The PyTorch recipe: every block
  forward on every slot of each batch (dense attention), blocks L+1.. input gradient, and the
  LM head forward and input gradient at every slot (transformers computes logits everywhere;
  the labels mask only zeroes their gradient). `paper`: the batches the paper's code builds;
  `same`: the batches the suite gives the PyTorch recipe as ours (the same rows per step).
  """
  cfg, layer = trainer.model.cfg, trainer.layer
  n, p = cfg.num_layers, flop_count.block_matmul_params(cfg)
  he, head = cfg.num_heads * cfg.head_dim, cfg.hidden_size * cfg.vocab_size

  upper = n - layer - 1  # blocks L+1.. : forward and input gradient (flops.rows_cost)

  def forward(rows, width):  # one block's forward only, dense attention
    return 2.0 * p * rows * width + 4.0 * he * rows * width * width

  def torch_batch(rows, width):
    return ((layer + 1) * forward(rows, width) + upper * flop_count.rows_cost(cfg, rows, width)
            + 4.0 * head * rows * width)

  if trainer.step_shapes is None:
    raise ValueError('computed_work counts right-padded runs; this one packs (data.pack)')
  ours = sum(upper * flop_count.rows_cost(cfg, rows, width) + 4.0 * head * rows * rw
             for rows, width, rw in trainer.step_shapes)
  bank = (layer + 1) * sum(forward(1, e.length) for e in trainer.flat)
  ours += bank
  useful = sum(step_flops(cfg, layer, [trainer.flat[r] for r in trainer.batch_rows(s)])
               for s in range(trainer.total_steps))
  torch_ours = sum(torch_batch(*b['tokens'].shape) for b in same)
  torch_paper = sum(torch_batch(*b['tokens'].shape) for b in paper)
  return {'ours_tflop': round(ours / 1e12, 2), 'ours_bank_tflop': round(bank / 1e12, 2),
          'ours_useful_tflop': round(useful / 1e12, 2),
          'torch_paper_batches_tflop': round(torch_paper / 1e12, 2),
          'torch_our_batches_tflop': round(torch_ours / 1e12, 2),
          'speedup_at_equal_rate_paper_batches': round(torch_paper / ours, 3),
          'speedup_at_equal_rate_our_batches': round(torch_ours / ours, 3),
          'speedup_at_equal_rate_if_ours_computed_only_useful': round(
              torch_paper / (useful + bank), 3)}


def our_batches(trainer) -> list[dict]:
  """The reference suite's batches for the PyTorch recipe on our rows: each step's rows as
  Trainer orders them, padded to the longest rounded up (host arrays)."""
  return [jax.device_get(trainer.make_batch(trainer.batch_rows(s)))
          for s in range(trainer.total_steps)]


def run_work(model):
  """computed_work of the reference suite's run, without training: what speedup over the
  PyTorch recipe the work alone allows (ours is faster only by computing less, or faster)."""
  trainer = Trainer(train_config('p2+s2', 1, DATA.value, 0), model)
  emit({'case': 'work', 'positions': 'p2+s2', 'model': MODEL.value, 'layer': trainer.layer,
        'steps': trainer.total_steps, 'batch': trainer.batch_size,
        'max_response_tokens': trainer.config.data.max_response_tokens,
        **computed_work(trainer, paper_batches(trainer), our_batches(trainer))})


def run_reference(model):
  """One concept's full 12-epoch training, ours against the paper's PyTorch recipe, which runs
  on the batches the paper's code would build and on ours (the same examples per step)."""
  import resource
  from torch_reference import torch_model_from_gguf, train_reference  # launch/, needs torch
  from prosv_jax.models.load import resolve
  trainer = Trainer(train_config('p2+s2', 1, DATA.value, 0), model)
  ours_batches = our_batches(trainer)
  peak = matmul_peak()
  start = time.perf_counter()
  trainer.prepare()
  state = trainer.init_state()
  flops = 0.0
  for s in range(trainer.total_steps):
    state, m, _ = trainer.step(state, s)
    flops += step_flops(model.cfg, trainer.layer, [trainer.flat[r] for r in trainer.batch_rows(s)])
  jax.block_until_ready(state)
  ours = time.perf_counter() - start
  ours_loss = float(np.mean(m['loss']))
  torch_model = torch_model_from_gguf(resolve(MODEL.value))
  c = trainer.config
  factor_lr, direction_lr = optim.scaled_lrs(c.optim, trainer.width)  # what our Adam used
  record = {'case': 'reference', 'positions': 'p2+s2', 'model': MODEL.value, 'layer': c.layer,
            'steps': trainer.total_steps, 'batch': trainer.batch_size,
            'max_response_tokens': c.data.max_response_tokens, 'ours_wall_s': round(ours, 2),
            'ours_last_loss': round(ours_loss, 4),
            'ours_useful_gflop_per_s': round(flops / ours / 1e9, 1),
            'matmul_peak_gflop_per_s': round(peak / 1e9, 1),
            'ours_fraction_of_peak': round(flops / ours / peak, 3)}
  paper = paper_batches(trainer)
  record['work'] = computed_work(trainer, paper, ours_batches)
  for name, batches in (('paper_batches', paper), ('our_batches', ours_batches)):
    ref = train_reference(torch_model, batches, layer=c.layer, width=trainer.width,
                          beta=c.steer.beta, factor_lr=factor_lr,
                          direction_scale=c.steer.direction_scale,
                          direction_lr=direction_lr, total_steps=trainer.total_steps)
    record[name] = {'torch_wall_s': round(ref['wall_s'], 2),
                    'torch_tokens_per_s': round(ref['tokens'] / ref['wall_s'], 1),
                    'speedup': round(ref['wall_s'] / ours, 3),
                    'torch_last_loss': round(float(ref['losses'][-1]), 4)}
  record['ours_tokens_per_s'] = round(record['our_batches']['torch_tokens_per_s']
                                      * record['our_batches']['speedup'], 1)
  record['peak_rss_gb'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
  record['note'] = ('ours includes compiling and the block-L bank; torch excludes its model '
                    'build; both see every real token once per epoch, so speedup is the ratio '
                    'of real tokens/s; peak RSS is the whole process (both models)')
  emit(record)


def matmul_peak(n: int = 2048, repeats: int = 5, dtype=jnp.float32) -> float:
  """This process's measured matmul rate (FLOP/s): the best of `repeats` n x n products.

  On an accelerator n grows to 8192, where its matrix units reach their peak.
  """
  if jax.devices()[0].platform != 'cpu':
    n = max(n, 8192)
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  return 2 * n ** 3 / best_time(lambda: f(a), repeats)


def compiled_flops(fn, *args, **kwargs) -> float:
  """XLA's FLOP count of jitted `fn` on these arguments (0 when the backend gives none)."""
  cost = fn.lower(*args, **kwargs).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', 0.0))


def median_time(fn, repeats: int) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def first_step(model):
  """The breakdown and profile suites' subject: the first step of one PrOSV p2+s2 run
  (K = --concepts_per_step[0] concepts, --train_examples each) as Trainer runs it.

  Returns a namespace: config, the prepared trainer, static (train_step's static arguments),
  host() (builds and places the first batch as Trainer.step does: (placed, host batch)), that
  batch and host_batch, and flops (the step's useful FLOPs, prosv_jax.flops.step_flops).
  """
  k = int(CONCEPTS.value[0])
  with tempfile.TemporaryDirectory() as tmp:
    config = train_config('p2+s2', k, bench_table(k, tmp), TRAIN_EXAMPLES.value)
    trainer = Trainer(config, model)
  trainer.prepare()

  def host():
    # The first step's planned width (right-padded runs); these suites time padded rows.
    planned = trainer.step_shapes[0][1] if trainer.step_shapes else None
    batch = trainer.host_batch(trainer.batch_rows(0), width=planned)
    return parallel.place_batch(batch, trainer.mesh), batch

  batch, host_batch = host()
  width = (trainer.step_shapes[0][2] if trainer.step_shapes
           else trainer.response_width(host_batch))
  static = dict(cfg=model.cfg, layer=trainer.layer, positions=trainer.positions,
                loss_kind=config.train.loss, num_concepts=trainer.num_concepts,
                optimizer=trainer.optimizer, response_width=width)
  flops = step_flops(model.cfg, trainer.layer, [trainer.flat[r] for r in trainer.batch_rows(0)])
  return types.SimpleNamespace(config=config, trainer=trainer, static=static, host=host,
                               batch=batch, host_batch=host_batch, flops=flops)


def run_breakdown(model):
  """Where one PrOSV training step's time goes, each part jitted and timed on its own.

  Parts: host (batch rows, padding, placing), bank gather, the upper blocks forward, the
  response head and cross-entropy, the loss's forward+backward, the optimizer update, the
  whole train_step, and its first call (compile). Also XLA's FLOP count of the step, this
  process's measured matmul peak, and minor page faults per step.
  """
  import resource
  from prosv_jax.train import step as step_lib
  from prosv_jax.models import transformer
  first = first_step(model)
  config, trainer, static = first.config, first.trainer, first.static
  batch, host_batch, width = first.batch, first.host_batch, static['response_width']
  cfg, params, layer, k = model.cfg, model.params, trainer.layer, trainer.num_concepts
  repeats = REPEATS.value

  t_host = median_time(lambda: first.host()[0], repeats)
  start = time.perf_counter()
  jax.block_until_ready(step_lib.train_step(trainer.init_state(), params, batch, trainer.bank,
                                            **static))
  t_first = time.perf_counter() - start
  state = trainer.init_state()

  def run_step():
    nonlocal state
    state, _ = step_lib.train_step(state, params, batch, trainer.bank, **static)
    return state

  t_step = median_time(run_step, repeats)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(run_step())
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

  gather = jax.jit(step_lib.bank_hidden)
  t_tokens = batch['tokens'].shape[1]
  t_gather = median_time(lambda: gather(trainer.bank, batch), repeats)
  h_low = gather(trainer.bank, batch)
  sp = state['steer']

  @jax.jit
  def upper(h_low, batch):
    ctx = step_lib.batch_context(cfg, batch)
    return transformer.run_blocks(params, cfg, h_low, ctx, layer + 1, cfg.num_layers)

  t_upper = median_time(lambda: upper(h_low, batch), repeats)
  h = upper(h_low, batch)

  @jax.jit
  def head_ce(h, batch):
    src = batch['prompt_len'][:, None] - 1 + jnp.arange(width)[None, :]
    src = jnp.clip(src, 0, t_tokens - 1)
    h_resp = jnp.take_along_axis(h, src[..., None], axis=1).reshape(-1, h.shape[-1])
    target = jnp.take_along_axis(batch['tokens'], jnp.clip(src + 1, 0, t_tokens - 1), axis=1)
    return step_lib.token_logprobs(params, cfg, h_resp, target.reshape(-1))

  t_head = median_time(lambda: head_ce(h, batch), repeats)
  loss_args = (params, cfg, layer, trainer.positions, config.train.loss, trainer.num_concepts,
               batch, h_low, width)
  fwd = jax.jit(lambda sp: step_lib.loss_fn(sp, *loss_args)[0])
  t_fwd = median_time(lambda: fwd(sp), repeats)
  fwd_bwd = jax.jit(jax.grad(lambda sp: step_lib.loss_fn(sp, *loss_args)[0]))
  t_fwd_bwd = median_time(lambda: fwd_bwd(sp), repeats)
  grads = fwd_bwd(sp)
  opt = jax.jit(lambda g, o, p: trainer.optimizer.update(g, o, p))
  t_opt = median_time(lambda: opt(grads, state['opt'], state['steer']), repeats)

  xla_flops = compiled_flops(step_lib.train_step, trainer.init_state(), params, batch,
                             trainer.bank, **static)
  flops = first.flops
  peak = matmul_peak()
  real = int(np.sum(host_batch['length']))
  emit({'case': 'breakdown', 'positions': 'p2+s2', 'model': MODEL.value, 'layer': layer,
        'concepts_per_step': k, 'rows': int(batch['tokens'].shape[0]),
        'width': int(t_tokens), 'response_width': int(width), 'real_tokens': real,
        'padded_slots': int(np.prod(batch['tokens'].shape)),
        'seconds': {'host_batch': round(t_host, 4), 'bank_gather': round(t_gather, 4),
                    'upper_blocks_forward': round(t_upper, 4),
                    'head_and_cross_entropy': round(t_head, 4),
                    'loss_forward': round(t_fwd, 4), 'loss_forward_backward': round(t_fwd_bwd, 4),
                    'optimizer': round(t_opt, 4), 'train_step': round(t_step, 4),
                    'first_call_with_compile': round(t_first, 2)},
        'useful_gflop': round(flops / 1e9, 1),
        'useful_gflop_per_s': round(flops / t_step / 1e9, 1),
        'xla_cost_analysis_gflop': round(xla_flops / 1e9, 1),
        'matmul_peak_gflop_per_s': round(peak / 1e9, 1),
        'fraction_of_peak': round(flops / t_step / peak, 3),
        'minor_page_faults_per_step': int(faults),
        'note': 'medians of --repeats runs; useful FLOPs count real tokens only '
                '(prosv_jax.flops.step_flops); XLA counts padded slots, a scan body once'})


def run_profile(model):
  """Where one PrOSV training step's time goes op by op: a jax.profiler trace of --repeats
  steps, each executed thunk classed by the step's compiled HLO (prosv_jax.step_profile):
  matmuls of the MLP, the attention projections, the attention core and the LM head, and the
  work around them (zero-fills, the scan's per-layer stacks, copies, elementwise)."""
  from prosv_jax import step_profile
  from prosv_jax.train import step as step_lib
  first = first_step(model)
  trainer, static, batch = first.trainer, first.static, first.batch
  args = (model.params, batch, trainer.bank)
  compiled = step_lib.train_step.lower(trainer.init_state(), *args, **static).compile()
  instructions = step_profile.parse_hlo(compiled.as_text())

  def run():  # the step donates its state: a fresh one each call
    return jax.block_until_ready(compiled(trainer.init_state(), *args))

  run()
  t_step = median_time(run, REPEATS.value)
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      for _ in range(REPEATS.value):
        run()
    events = step_profile.trace_events(folder)
  parts = step_profile.breakdown(events, instructions, REPEATS.value)
  if not parts['parts']:
    raise SystemExit('the trace holds no events of the step\'s instructions: on a CPU run '
                     'with XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true (this suite sets it)')
  flops = first.flops
  matmul_s = parts['by_kind_wall_s'].get('matmul', 0.0)
  emit({'case': 'profile', 'positions': 'p2+s2', 'model': MODEL.value, 'layer': trainer.layer,
        'concepts_per_step': trainer.num_concepts, 'rows': int(batch['tokens'].shape[0]),
        'width': int(batch['tokens'].shape[1]), 'response_width': int(static['response_width']),
        'real_tokens': int(np.sum(first.host_batch['length'])),
        'padded_slots': int(np.prod(batch['tokens'].shape)),
        'train_step_s': round(t_step, 4), 'useful_gflop': round(flops / 1e9, 1),
        'useful_gflop_per_s': round(flops / t_step / 1e9, 1),
        # The step's useful FLOPs over the time its matmul kernels ran: their own pace.
        'useful_gflop_per_matmul_s': round(flops / matmul_s / 1e9, 1) if matmul_s else None,
        'matmul_peak_gflop_per_s': round(matmul_peak() / 1e9, 1), **parts,
        'note': 'median step time of --repeats calls, then a trace of --repeats more; '
                'wall_s: wall time covered by a class\'s events, summed_s: their durations '
                '(independent thunks overlap on the CPU threads)'})


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if SUITE.value == 'profile':  # read when the backend starts, i.e. at the first array
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               ' --xla_cpu_enable_xprof_traceme=true').strip()
  model = load_model(MODEL.value, DTYPE.value)
  {'inference': run_inference, 'steer_decode': run_steer_decode, 'train': run_train,
   'reference': run_reference, 'breakdown': run_breakdown,
   'parity': run_parity, 'sample': run_sample, 'shapes': run_shapes,
   'profile': run_profile, 'work': run_work}[SUITE.value](model)


if __name__ == '__main__':
  app.run(main)
