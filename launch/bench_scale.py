"""Multi-concept training throughput as the concept count K grows, on 1 and on D devices.

  python launch/bench_scale.py --devices=1,4 --concepts=1,2,4,8 --steps=3
  python launch/bench_scale.py --random_model=gemma2_2b --dtype=bfloat16 --devices=1,8

For each device count D the script runs itself in a subprocess that sees D devices: on a
machine without an accelerator, D simulated CPU devices (JAX_PLATFORMS=cpu and
XLA_FLAGS=--xla_force_host_platform_device_count=D, as tests/test_parallel.py does; they share
the host's cores, so this measures the sharded program's overhead, not a speed-up); on an
accelerator, the first D real devices (no XLA flag; D may not exceed them). Inside it, for each
K in ascending order, a Trainer for K concepts (mesh.data = D / mesh_model, mesh.model =
mesh_model) builds its block-L bank, runs warm-up steps, then times training steps
0..--steps-1 (their own data, as in training), ended by jax.block_until_ready. Bucketed batches
come in a few widths and each width compiles once, so the warm-up runs the first step of every
width the timed steps will meet (usually one or two): the timed loop never compiles.

Data: train concepts of --data (default AxBench Concept10 2b_l10 beside the repo, else the
packaged demo concepts); K above the available concepts copies them under new ids, as in
launch/bench.py, whose flags --model, --dtype, --data, --layer, --train_examples and
--remat_rows apply here too (its other flags do not). --random_model swaps the weights for
random ones of a real model's shapes, built from a transformers config made here (no hub);
the tokenizer then comes from --model (SmolLM2 by default), whose ids every shape covers.

Output: one JSON object on stdout: command, machine (the real machine, as a probe process
sees it: with simulated devices that is one CPU device), settings, and results, one row per
(D, K): steps_per_s, concept_steps_per_s (K x steps/s), tokens_per_s (real prompt + response
tokens, no padding), tokens_per_step, padded_tokens_per_step (token slots: rows x width),
packed (whether the steps packed several examples per row: data.pack), compile_s
(JAX tracing + lowering + compiling during the warm-up, from jax.monitoring), compiled_shapes
(warm-up steps), first_step_s (the first warm-up step: compile + one step), bank_s (block-L
bank, its compile included), peak_rss_gb (the worker's resident-set high-water mark so far: K
ascends, so it is the peak up to and including this K), remat; on an accelerator also
device_peak_gb, tflops (useful TFLOP/s, see step_flops) and fraction_of_peak (of --peak_tflops
x D, or of the device kind's dense peak when PEAK_TABLE knows it; omitted otherwise). tflops
and fraction_of_peak appear on a CPU too when --peak_tflops is given.
If a device count fails, the rows so far are still printed, with `errors`, and the exit
status is 1. One process only: multi-host runs are out of scope here.
"""

import contextlib
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging
import jax

import bench  # launch/bench.py: machine(), bench_table(), train_config() and shared flags
from prosv_jax import parallel
from prosv_jax.flops import attention_pairs, block_matmul_params, step_flops  # noqa: F401
from prosv_jax.train.config import VARIANTS
from prosv_jax.errors import ProsvError
from prosv_jax.models.config import ModelConfig

DEVICES = flags.DEFINE_list('devices', ['1', '4'], 'Device counts, one subprocess each.')
CONCEPTS = flags.DEFINE_list('concepts', ['1', '2', '4', '8'], 'Concept counts K per step.')
STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps per (devices, K), after the warm-up '
                             '(one step per batch width).')
MESH_MODEL = flags.DEFINE_integer('mesh_model', 1, 'mesh.model (tensor parallel) size; '
                                  'mesh.data = devices / this.')
BATCH_SIZE = flags.DEFINE_integer('batch_size', 12, 'Rows per concept per step.')
POSITIONS = flags.DEFINE_string('positions', 'p2+s2', "Steered positions ('all' = FSSV).")
RANDOM_MODEL = flags.DEFINE_enum('random_model', '', ['', 'tiny', *VARIANTS],
                                 'Random weights of this model\'s shapes (tiny = a 3-layer llama '
                                 'of width 64 for tests); the tokenizer comes from --model.')
PEAK_TFLOPS = flags.DEFINE_float('peak_tflops', 0.0, 'Peak TFLOP/s of one device for '
                                 'fraction_of_peak (0 = look up the device kind).')
WORKER_DEVICES = flags.DEFINE_integer('worker_devices', 0, 'Internal: run as the worker of '
                                      'this device count.')
WORKER_OUT = flags.DEFINE_string('worker_out', '', 'Internal: where the worker writes its rows.')
PROBE = flags.DEFINE_bool('probe', False, 'Internal: print this machine as JSON and exit.')

# Dense (no sparsity) peak TFLOP/s of one device: (lower-case substring of device_kind,
# bfloat16, float32). float32 is what float32 matmuls run at with JAX's default precision:
# TF32 tensor cores on NVIDIA Ampere and later, one bf16 pass on TPU. First match wins.
PEAK_TABLE = (
    ('h100 pcie', 756.0, 378.0),
    ('h100 nvl', 835.5, 417.5),
    ('h100', 989.4, 494.7),  # SXM / HBM3
    ('h200', 989.4, 494.7),
    ('a100', 312.0, 156.0),
    ('tpu v4', 275.0, 275.0),
    ('tpu v5 lite', 197.0, 197.0),  # v5e's device_kind
    ('tpu v5e', 197.0, 197.0),
)

# Real models' shapes as transformers configs (their published config.json values), for
# --random_model. Only shapes and per-family switches matter for throughput.
_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, tie_word_embeddings=False)  # tests/hf_fixtures.py's llama
_GEMMA2 = dict(head_dim=256, query_pre_attn_scalar=256, sliding_window=4096,
               attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
RANDOM_SHAPES = {
    'tiny': ('LlamaConfig', _TINY),
    'smollm2': ('LlamaConfig', dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, rms_norm_eps=1e-5, rope_theta=100000.0,
        max_position_embeddings=8192, tie_word_embeddings=True)),
    'gemma3_270m': ('Gemma3TextConfig', dict(
        hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, vocab_size=262144,
        sliding_window=512, max_position_embeddings=32768)),
    'gemma2_2b': ('Gemma2Config', dict(
        hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, vocab_size=256000, **_GEMMA2)),
    'gemma2_9b': ('Gemma2Config', dict(
        hidden_size=3584, intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16,
        num_key_value_heads=8, vocab_size=256000, **_GEMMA2)),
    'qwen25_32b': ('Qwen2Config', dict(
        hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
        num_key_value_heads=8, vocab_size=152064, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=32768, tie_word_embeddings=False)),
}
TINY_LAYER = 1

# jax.monitoring events whose durations make up compile time (tracing, lowering, XLA).
COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                  '/jax/core/compile/jaxpr_to_mlir_module_duration',
                  '/jax/core/compile/backend_compile_duration')
_compile_seconds = [0.0]


# ---------------------------------------------------------------- model arithmetic


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """--peak_tflops, else the dense peak of one `device_kind` device in PEAK_TABLE, else None."""
  if PEAK_TFLOPS.value > 0:
    return PEAK_TFLOPS.value
  kind = device_kind.lower()
  for name, bf16, fp32 in PEAK_TABLE:
    if name in kind:
      return bf16 if dtype == 'bfloat16' else fp32
  return None


# ---------------------------------------------------------------- models


def random_hf_config(name: str, vocab: int):
  """The transformers config of RANDOM_SHAPES[name]; 'tiny' gets a vocabulary of `vocab`."""
  import transformers  # pylint: disable=import-outside-toplevel
  cls, kwargs = RANDOM_SHAPES[name]
  if name == 'tiny':
    kwargs = dict(kwargs, vocab_size=max(128, -(-vocab // 64) * 64))
  return getattr(transformers, cls)(**kwargs)


def random_model(name: str, mesh, dtype: str):
  """Random weights of `name`'s shapes, made directly in place on `mesh`, and --model's tokenizer.

  Each device creates only its own shards, so a model larger than one device still fits.
  """
  import dataclasses  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from prosv_jax.models import transformer  # pylint: disable=import-outside-toplevel
  from prosv_jax.models.config import from_hf_config  # pylint: disable=import-outside-toplevel
  from prosv_jax.models.load import Model, load_model  # pylint: disable=import-outside-toplevel
  with parallel.on_host_cpu():  # only its tokenizer is kept
    tokenizer = load_model(bench.MODEL.value).tokenizer
  if tokenizer is None:
    raise ProsvError(f'--model={bench.MODEL.value} has no tokenizer; with --random_model, pass a '
                     f'--model that has one (it only supplies the tokenizer)')
  cfg = from_hf_config(random_hf_config(name, len(tokenizer)))
  if len(tokenizer) > cfg.vocab_size:
    raise ProsvError(f'--model={bench.MODEL.value} has {len(tokenizer)} token ids, more than '
                     f'{name}\'s vocabulary of {cfg.vocab_size}; pass a --model with a smaller '
                     f'tokenizer (e.g. the default SmolLM2)')
  eos = () if tokenizer.eos_token_id is None else (int(tokenizer.eos_token_id),)
  cfg = dataclasses.replace(cfg, pad_id=tokenizer.pad_token_id, eos_ids=eos,
                            bos_id=tokenizer.bos_token_id)
  init = lambda key: transformer.init_params(cfg, key, jnp.dtype(dtype))
  if mesh is None:
    params = jax.jit(init)(jax.random.key(0))
  else:
    shardings = parallel.param_shardings(transformer.param_shapes(cfg), mesh)
    params = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
  return Model(cfg=cfg, params=params, tokenizer=tokenizer, source=f'random:{name}')


def steered_layer() -> int:
  """--layer when given, else the random model's variant layer, else --layer's default."""
  if flags.FLAGS['layer'].present or not RANDOM_MODEL.value:
    return bench.LAYER.value
  return TINY_LAYER if RANDOM_MODEL.value == 'tiny' else VARIANTS[RANDOM_MODEL.value].layer


def data_source() -> str:
  """--data, or the demo concepts when the default Concept10 folder is not there."""
  if bench.DATA.value == bench.CONCEPT10 and not os.path.exists(bench.CONCEPT10):
    return 'demo'
  return bench.DATA.value


# ---------------------------------------------------------------- the worker (one device count)


def _on_event(event: str, duration: float, **kwargs):
  del kwargs
  if event in COMPILE_EVENTS:
    _compile_seconds[0] += duration


def peak_rss_gb() -> float:
  """This process's resident-set high-water mark (ru_maxrss: KiB on Linux, bytes on macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / (2 ** 30 if sys.platform == 'darwin' else 2 ** 20)


def device_peak_gb(devices) -> float | None:
  """Largest peak_bytes_in_use over `devices` (accelerators report it; CPUs do not)."""
  peaks = [(d.memory_stats() or {}).get('peak_bytes_in_use') for d in devices]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) / 2 ** 30 if peaks else None


@contextlib.contextmanager
def trainer_mesh(mesh):
  """Trainers built inside take `mesh` even when it spans only some of the devices.

  Trainer asks parallel.mesh_from_config, which always spans every device; with D of a larger
  machine's devices, it is pointed at the D-device mesh for the duration.
  """
  if mesh is None or mesh.size == jax.device_count():
    yield
    return
  original = parallel.mesh_from_config
  parallel.mesh_from_config = lambda config: mesh
  try:
    yield
  finally:
    parallel.mesh_from_config = original


def run_case(model, k: int, devices, mesh_shape, layer: int, source: str, folder: str) -> dict:
  """One (device count, K) row: the bank, warm-up steps, then steps 0..--steps-1 timed."""
  from prosv_jax.train.trainer import Trainer  # pylint: disable=import-outside-toplevel
  batch = BATCH_SIZE.value
  config = bench.train_config(POSITIONS.value, k, bench.bench_table(k, folder, source),
                              bench.TRAIN_EXAMPLES.value)
  config.layer = layer
  config.data.max_response_tokens = bench.RESPONSE_TOKENS.value
  config.train.batch_size = batch
  config.train.remat = k * batch > bench.REMAT_ROWS.value
  config.mesh.data, config.mesh.model = mesh_shape
  if (k * batch) % mesh_shape[0]:
    logging.warning('K=%d x %d rows do not split over mesh.data=%d: the batch is replicated',
                    k, batch, mesh_shape[0])
  trainer = Trainer(config, model)
  bank_s = trainer.prepare()

  # Bucketed batches come in a few widths and each width compiles once. The first step of
  # every width the timed steps will meet runs beforehand, so the timed loop never compiles.
  steps = range(STEPS.value)
  batches = [trainer.train_batch(s) for s in steps]  # packed or right-padded, as trained
  first_of_shape = {}
  for s, b in zip(steps, batches):
    width = 0 if trainer.packed else trainer.step_shapes[s][2]
    first_of_shape.setdefault((tuple(v.shape for v in b.values()), width), s)
  state = trainer.init_state()
  compiled_before = _compile_seconds[0]
  warm_s = []
  for s in first_of_shape.values():
    start = time.perf_counter()
    state, metrics, _ = trainer.step(state, s)
    jax.block_until_ready((state, metrics))
    warm_s.append(time.perf_counter() - start)
  compile_s = _compile_seconds[0] - compiled_before

  tokens = 0
  start = time.perf_counter()
  for s in steps:
    state, metrics, step_tokens = trainer.step(state, s)
    tokens += step_tokens
  jax.block_until_ready((state, metrics))
  secs = time.perf_counter() - start

  n = STEPS.value
  row = {'devices': len(devices), 'mesh': list(mesh_shape), 'concepts': k, 'rows': k * batch,
         'steps': n, 'steps_per_s': round(n / secs, 4),
         'concept_steps_per_s': round(k * n / secs, 4), 'tokens_per_s': round(tokens / secs, 1),
         'tokens_per_step': round(tokens / n),
         'padded_tokens_per_step': round(sum(b['tokens'].size for b in batches) / n),
         'packed': trainer.packed,
         'compile_s': round(compile_s, 2), 'compiled_shapes': len(first_of_shape),
         'first_step_s': round(warm_s[0], 2), 'bank_s': round(bank_s, 2),
         'peak_rss_gb': round(peak_rss_gb(), 3), 'remat': bool(config.train.remat)}
  on_accelerator = devices[0].platform != 'cpu'
  if on_accelerator:
    device_gb = device_peak_gb(devices)
    row['device_peak_gb'] = None if device_gb is None else round(device_gb, 3)
  if on_accelerator or PEAK_TFLOPS.value > 0:
    flops = sum(step_flops(trainer.model.cfg, trainer.layer,
                           [trainer.flat[r] for r in trainer.batch_rows(s)]) for s in steps)
    tflops = flops / secs / 1e12
    row['tflops'] = round(tflops, 4)
    peak = peak_tflops(devices[0].device_kind, bench.DTYPE.value)
    if peak:
      row['fraction_of_peak'] = round(tflops / (peak * len(devices)), 4)
  del trainer, state, metrics, batches  # the next K's bank and activations get the memory
  return row


def worker(count: int):
  """Every K on the first `count` devices; the rows go to --worker_out as JSON."""
  jax.monitoring.register_event_duration_secs_listener(_on_event)
  visible = jax.devices()
  if count > len(visible):
    raise ProsvError(f'--devices={count} but this process sees {len(visible)} '
                     f'{visible[0].platform} devices; use at most {len(visible)}')
  devices = visible[:count]
  mesh_shape = (count // MESH_MODEL.value, MESH_MODEL.value)
  mesh = parallel.make_mesh(*mesh_shape, devices=devices) if count > 1 else None
  layer = steered_layer()
  if RANDOM_MODEL.value:
    model = random_model(RANDOM_MODEL.value, mesh, bench.DTYPE.value)
  else:
    model = parallel.load_on_mesh(bench.MODEL.value, bench.DTYPE.value, mesh)
  rows = []
  with tempfile.TemporaryDirectory() as folder, trainer_mesh(mesh):
    for k in sorted(set(int(x) for x in CONCEPTS.value)):
      rows.append(run_case(model, k, devices, mesh_shape, layer, data_source(), folder))
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # progress
  with open(WORKER_OUT.value, 'w') as f:
    json.dump(rows, f)


def probe() -> dict:
  """bench.machine() plus every device kind (run in a subprocess by the parent)."""
  return {**bench.machine(), 'device_kinds': sorted({d.device_kind for d in jax.devices()})}


# ---------------------------------------------------------------- the parent


def positive_ints(flag, values) -> list[int]:
  try:
    out = [int(v) for v in values]
  except ValueError:
    out = []
  if not out or min(out) < 1:
    raise ProsvError(f'--{flag}={",".join(values)}; give positive integers, e.g. --{flag}=1,2')
  return out


def worker_env(count: int, platform: str) -> dict:
  """The environment of the `count`-device worker: simulated CPU devices or real ones."""
  env = dict(os.environ)
  if platform == 'cpu':
    kept = [f for f in env.get('XLA_FLAGS', '').split()
            if not f.startswith('--xla_force_host_platform_device_count')]
    env['XLA_FLAGS'] = ' '.join(kept + [f'--xla_force_host_platform_device_count={count}'])
    env['JAX_PLATFORMS'] = 'cpu'
  return env


def run_self(extra: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
  """This script with the same flags plus `extra`; its stdout goes to our stderr.

  Our stdout carries only the final JSON; the child's stderr (logs, progress) passes through.
  """
  return subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:], *extra],
                        env=env, stdout=sys.stderr, check=False)


def parent() -> int:
  counts = positive_ints('devices', DEVICES.value)
  positive_ints('concepts', CONCEPTS.value)
  if STEPS.value < 1 or BATCH_SIZE.value < 1 or MESH_MODEL.value < 1:
    raise ProsvError(f'--steps={STEPS.value}, --batch_size={BATCH_SIZE.value} and --mesh_model='
                     f'{MESH_MODEL.value} must each be at least 1')
  for count in counts:
    if count % MESH_MODEL.value:
      raise ProsvError(f'--devices={count} is not a multiple of --mesh_model={MESH_MODEL.value};'
                       f' pick device counts that --mesh_model divides')
  with tempfile.TemporaryDirectory() as folder:
    # The parent never starts a backend itself: on a GPU it would hold memory while the
    # workers run. A probe process reports the machine instead.
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--probe'],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
      raise ProsvError(f'could not start JAX to inspect this machine ({proc.stderr.strip()[-300:]}'
                       f'); check the JAX installation')
    machine = json.loads(proc.stdout.strip().splitlines()[-1])
    platform = machine['platform']
    if platform != 'cpu':
      for count in counts:
        if count > machine['devices']:
          raise ProsvError(f'--devices={count} but this machine has {machine["devices"]} '
                           f'{platform} devices; use at most {machine["devices"]}')
    rows, errors = [], []
    for count in counts:
      out = os.path.join(folder, f'rows_{count}.json')
      proc = run_self([f'--worker_devices={count}', f'--worker_out={out}'],
                      worker_env(count, platform))
      if proc.returncode or not os.path.exists(out):
        errors.append(f'devices={count}: worker exited with status {proc.returncode} (its error '
                      f'is above)')
        continue
      with open(out) as f:
        rows += json.load(f)
  record = {
      'command': shlex.join(['python', *sys.argv]),
      'machine': {**machine, 'simulated_devices': platform == 'cpu'},
      'settings': {'model': bench.MODEL.value, 'random_model': RANDOM_MODEL.value or None,
                   'dtype': bench.DTYPE.value, 'layer': steered_layer(),
                   'positions': POSITIONS.value, 'data': data_source(),
                   'batch_size': BATCH_SIZE.value, 'train_examples': bench.TRAIN_EXAMPLES.value,
                   'max_response_tokens': bench.RESPONSE_TOKENS.value, 'steps': STEPS.value,
                   'mesh_model': MESH_MODEL.value, 'remat_rows': bench.REMAT_ROWS.value},
      'results': rows}
  if errors:
    record['errors'] = errors
  print(json.dumps(record), flush=True)
  return 1 if errors else 0


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    if PROBE.value:
      print(json.dumps(probe()), flush=True)
    elif WORKER_DEVICES.value:
      worker(WORKER_DEVICES.value)
    else:
      sys.exit(parent())
  except ProsvError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  app.run(main)
