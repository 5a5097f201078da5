"""Sharding and multi-host: a ('data', 'model') device mesh and where every array lives on it.

Everything here is JAX's own SPMD machinery: a jax.sharding.Mesh, NamedSharding/PartitionSpec
placements, and jitted functions whose sharded inputs let the compiler partition the work and
insert the collectives. Nothing in the model or the step knows about devices.

Axes:
  data   batch rows, plus FSDP: the frozen weights' hidden (D) dimension is split over it, and
         each layer's slice is all-gathered when the layer runs.
  model  tensor parallelism: attention heads (q/k/v/o), the MLP width and the vocabulary.

Which weight goes where is a list of (regex over the '/'-joined parameter path, PartitionSpec)
rules, first match wins, no match = replicated (PARAM_RULES). A dimension whose size is not a
multiple of its mesh axis size is replicated on that dimension instead (fit_spec), so odd head
counts, odd vocabularies and tiny test models still run, only with less memory saved. Because
q/k/v/o are split on the flattened heads*head_dim axis, a model axis that does not divide the
head count cuts a head in two; the result is the same, the compiler just moves more data.

Multi-host (several processes, e.g. one per GPU host): call maybe_initialize_distributed()
before anything touches a device. Every process then runs the same program on the same global
batches (the data order is a pure function of the step), builds the same global arrays, and
hands each of its devices only that device's slice (place: jax.make_array_from_callback), so
no accelerator ever receives a whole weight (the compiled step then all-gathers one layer's
FSDP slices at a time). Host memory is another matter: load_model reads the whole checkpoint
into each host's RAM (on the host CPU, not on an accelerator) before it is placed, so every
host needs RAM for the full model, transiently about twice (a 32B model is ~64 GB in bf16);
reading only a host's own shards would need the readers to hand shard_params numpy/memmap
arrays instead of jax arrays.
Only process 0 writes logs and exports (is_main_process); orbax checkpoints are written by all
processes together, so the workdir must be on a filesystem that every host sees.
"""

import contextlib
import dataclasses
import os
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from prosv_jax.errors import ProsvError

DATA, MODEL = 'data', 'model'
AXES = (DATA, MODEL)

# (regex over the '/'-joined path, spec), first match wins; no match = replicated. Shapes as in
# prosv_jax.models.transformer (N layers, D hidden, V vocab, F MLP width, heads*E attention).
PARAM_RULES: tuple[tuple[str, P], ...] = (
    (r'^embed/embedding$', P(MODEL, DATA)),  # [V, D]: vocab-parallel (also the tied head)
    (r'^lm_head/kernel$', P(DATA, MODEL)),  # [D, V]
    (r'^layers/attn/(q|k|v)/kernel$', P(None, DATA, MODEL)),  # [N, D, heads*E]
    (r'^layers/attn/(q|k|v)/bias$', P(None, MODEL)),  # [N, heads*E]
    (r'^layers/attn/o/kernel$', P(None, MODEL, DATA)),  # [N, H*E, D]
    (r'^layers/mlp/(gate|up)/kernel$', P(None, DATA, MODEL)),  # [N, D, F]
    (r'^layers/mlp/(gate|up)/bias$', P(None, MODEL)),  # [N, F]
    (r'^layers/mlp/down/kernel$', P(None, MODEL, DATA)),  # [N, F, D]
    # Norm scales, q/k norms and the o/down biases ([N, D]) are small: replicated.
)

# ---------------------------------------------------------------- processes


def maybe_initialize_distributed() -> bool:
  """Joins the other processes of a multi-process launch; True when several processes run.

  Several processes are assumed when the launch environment says so:
    PROSV_DISTRIBUTED=1      let jax.distributed.initialize() detect everything itself (Cloud
                             TPU pods, SLURM, Open MPI, mpi4py, GKE/Kubernetes);
    PROSV_DISTRIBUTED=0      never (e.g. independent single-process runs inside a SLURM job);
    JAX_NUM_PROCESSES > 1    explicit: with JAX_COORDINATOR_ADDRESS (host:port of process 0)
                             and JAX_PROCESS_ID (0..n-1) on every process;
    SLURM_JOB_ID and SLURM_NTASKS > 1   a multi-task SLURM step (srun), detected by JAX.
  Anything else is one process and a no-op. Idempotent. It must run before any JAX
  computation: JAX refuses to join a cluster once its backend is up.
  """
  if jax.distributed.is_initialized():
    return True
  env = os.environ
  flag = env.get('PROSV_DISTRIBUTED', '').strip().lower()
  if flag in ('0', 'false', 'no'):
    return False
  kwargs = {}
  if flag in ('1', 'true', 'yes'):
    pass  # JAX's cluster auto-detection
  elif _int_env('JAX_NUM_PROCESSES', 1) > 1:
    missing = [k for k in ('JAX_COORDINATOR_ADDRESS', 'JAX_PROCESS_ID') if not env.get(k)]
    if missing:
      raise ProsvError(f'JAX_NUM_PROCESSES={env["JAX_NUM_PROCESSES"]} but {" and ".join(missing)}'
                       f' not set; set them on every process (or unset JAX_NUM_PROCESSES)')
    kwargs = dict(coordinator_address=env['JAX_COORDINATOR_ADDRESS'],
                  num_processes=_int_env('JAX_NUM_PROCESSES', 1),
                  process_id=_int_env('JAX_PROCESS_ID', 0))
  elif env.get('SLURM_JOB_ID') and _int_env('SLURM_NTASKS', 1) > 1:
    pass  # JAX reads SLURM_NTASKS, SLURM_PROCID and the node list itself
  else:
    return False
  try:
    jax.distributed.initialize(**kwargs)
  except RuntimeError as e:
    raise ProsvError(f'jax.distributed.initialize failed ({e}); call '
                     f'maybe_initialize_distributed() before any JAX computation') from e
  return True


def _int_env(name: str, default: int) -> int:
  value = os.environ.get(name, '').strip()
  if not value:
    return default
  try:
    return int(value)
  except ValueError:
    raise ProsvError(f'{name}={value!r} is not an integer; fix the launch environment') from None


def is_main_process() -> bool:
  """True on the process that writes logs and exports (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process gets here (no-op on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------- the mesh


def check_mesh_sizes(data, model) -> None:
  """Each of mesh.data / mesh.model is a positive device count or -1, not both -1."""
  for name, size in (('data', data), ('model', model)):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not (
        size == -1 or size >= 1):
      raise ProsvError(f'mesh.{name}={size!r}; use a positive device count or -1 (all '
                       f'remaining), e.g. --config.mesh.{name}=-1')
  if data == -1 and model == -1:
    raise ProsvError('mesh.data and mesh.model are both -1; give one of them a size, e.g. '
                     '--config.mesh.model=1')


def make_mesh(data: int = 1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'model') mesh over `devices` (default: every device of every process).

  -1 in one axis means all the devices left by the other. The product must be exactly the
  device count. 'model' varies fastest, so with several processes a model group stays within
  one host (where devices talk fastest) whenever it fits. Axes are AxisType.Auto: the compiler
  propagates shardings through the unannotated model code.
  """
  check_mesh_sizes(data, model)
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  data, model = int(data), int(model)
  asked = f'mesh.data={data} x mesh.model={model}'
  if data == -1:
    data = n // model if n % model == 0 else 0
  elif model == -1:
    model = n // data if n % data == 0 else 0
  if data < 1 or model < 1 or data * model != n:
    raise ProsvError(f'{asked} does not match the {n} visible devices; set --config.mesh.data '
                     f'and --config.mesh.model so that their product is {n} (-1 = all remaining)')
  return jax.make_mesh((data, model), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def mesh_from_config(config) -> Mesh | None:
  """The mesh config.mesh asks for; None for 1 x 1 (one device, no sharding at all)."""
  data, model = int(config.mesh.data), int(config.mesh.model)
  if (data, model) == (1, 1):
    return None
  mesh = make_mesh(data, model)
  return mesh if mesh.size > 1 else None


def mesh_of(tree) -> Mesh | None:
  """The multi-device mesh the arrays of `tree` are placed on, or None."""
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, 'sharding', None)
    if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
      return sharding.mesh
  return None


# ---------------------------------------------------------------- specs


def path_str(path) -> str:
  """A jax key path as 'layers/attn/q/kernel'."""
  parts = []
  for key in path:
    for attr in ('key', 'idx', 'name'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def fit_spec(spec: P, shape: Sequence[int], mesh) -> P:
  """`spec` for an array of `shape`: every dimension its axes do not divide is replicated.

  mesh: anything with a `.shape` mapping axis name -> size (Mesh or AbstractMesh).
  """
  entries = tuple(spec) + (None,) * (len(shape) - len(spec))
  if len(entries) > len(shape):
    raise ProsvError(f'sharding spec {spec} has more entries than the array has dimensions '
                     f'{tuple(shape)}; fix the sharding rule')
  fitted = []
  for size, axes in zip(shape, entries):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    count = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    fitted.append(axes if names and size % count == 0 else None)
  while fitted and fitted[-1] is None:  # P('data', None) != P('data') as shardings; jit gives
    fitted.pop()  # the short form back, and a mismatch would recompile the step
  return P(*fitted)


def param_specs(params, mesh, rules: Sequence[tuple[str, P]] = PARAM_RULES):
  """The PartitionSpec of every leaf of `params` (arrays or ShapeDtypeStructs)."""
  compiled = [(re.compile(pattern), spec) for pattern, spec in rules]

  def one(path, leaf):
    name = path_str(path)
    spec = next((s for pattern, s in compiled if pattern.search(name)), P())
    return fit_spec(spec, leaf.shape, mesh)

  return jax.tree_util.tree_map_with_path(one, params)


def param_shardings(params, mesh: Mesh, rules: Sequence[tuple[str, P]] = PARAM_RULES):
  """NamedSharding of every leaf of `params` under `rules`."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(params, mesh, rules),
                      is_leaf=lambda x: isinstance(x, P))


def shard_params(params, mesh: Mesh, rules: Sequence[tuple[str, P]] = PARAM_RULES):
  """The frozen weights placed on `mesh` by `rules`; numpy leaves are read shard by shard."""
  return jax.tree.map(place, params, param_shardings(params, mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
  """A whole copy on every device of `mesh`."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, shape: Sequence[int] | None = None) -> NamedSharding:
  """Leading (row) axis over 'data'; replicated instead when `shape`'s rows do not divide."""
  spec = P(DATA)
  if shape is not None:
    spec = fit_spec(spec, shape, mesh) if len(shape) else P()
  return NamedSharding(mesh, spec)


def state_shardings(state, mesh: Mesh, num_concepts: int, shard_concepts: bool = False):
  """Shardings of the steering state (params, optimizer moments, step counters).

  Replicated by default: K x D floats are small. With shard_concepts, every leaf with a leading
  concept axis of size K is split over 'data' when K is a multiple of it; batch rows are laid
  out concept by concept, so each data shard then holds the rows of its own concepts.
  """
  def one(leaf):
    shape = np.shape(leaf)
    if shard_concepts and len(shape) and shape[0] == num_concepts:
      return NamedSharding(mesh, fit_spec(P(DATA), shape, mesh))
    return replicated(mesh)

  return jax.tree.map(one, state)


# ---------------------------------------------------------------- moving data


def place(x, sharding: NamedSharding) -> jax.Array:
  """`x` (numpy or jax) as a global array with `sharding`, one process or several.

  Every process passes the same global value; each device receives only its own slice
  (jax.make_array_from_callback), so a numpy array is never copied whole onto a device.
  """
  if isinstance(x, jax.Array):
    if x.sharding == sharding:
      return x
    same_kind = ({d.platform for d in x.sharding.device_set}
                 == {d.platform for d in sharding.device_set})
    if jax.process_count() == 1 and x.is_fully_addressable and same_kind:
      return jax.device_put(x, sharding)  # device to device, no trip through the host
    x = to_host(x)  # e.g. weights loaded on_host_cpu(): a view of host memory, then sliced
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def place_tree(tree, shardings):
  """place() over a pytree, with a matching pytree of shardings."""
  return jax.tree.map(place, tree, shardings)


def place_batch(batch: dict, mesh: Mesh | None) -> dict:
  """A dict of host arrays [B, ...] with rows over 'data' (jnp arrays when mesh is None)."""
  if mesh is None:
    return {k: jnp.asarray(v) for k, v in batch.items()}
  return {k: place(v, batch_sharding(mesh, np.shape(v))) for k, v in batch.items()}


def to_host(tree):
  """numpy copies of every leaf, gathering across processes when a leaf is spread over them.

  With several processes that gather is a collective: every process must make the call.
  """
  def one(x):
    if not isinstance(x, jax.Array):
      return np.asarray(x)
    if x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:  # every process already holds all of it
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)


def load_on_mesh(spec: str, dtype: str, mesh: Mesh | None):
  """load_model(spec, dtype) with its weights placed on `mesh` by PARAM_RULES (None: as is).

  The checkpoint is read into host memory on the host CPU first, never whole onto one
  accelerator, then each device receives its shards.
  """
  from prosv_jax.models.load import load_model  # pylint: disable=import-outside-toplevel
  if mesh is None:
    return load_model(spec, dtype)
  with on_host_cpu():
    model = load_model(spec, dtype)
  return dataclasses.replace(model, params=shard_params(model.params, mesh))


@contextlib.contextmanager
def on_host_cpu():
  """New arrays go to host memory (the CPU backend) until they are placed on the mesh.

  Loading a model bigger than one accelerator would otherwise fail on device 0 before it
  could be sharded. No-op when the CPU backend is disabled (e.g. JAX_PLATFORMS=cuda).
  """
  try:
    cpu = jax.local_devices(backend='cpu')[0]
  except RuntimeError:
    cpu = None
  with jax.default_device(cpu) if cpu is not None else contextlib.nullcontext():
    yield
