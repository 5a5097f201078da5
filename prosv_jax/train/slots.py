"""Grid cells as slots of one compiled step (train.slots).

A *cell* is what would otherwise be a separate run: the config with its own beta, direction
scale, factor LR, direction LR and seed (SLOT_KEYS). A *slot* is one row of the steering
params: one concept of one cell, slot s = cell * K + k for K concepts, so a cell's rows are
contiguous and laid out as its separate run lays them out. Every slot carries its cell's
values: its init (factor0 = beta * sqrt(n), direction from its own seed), its data order (the
cell's seed, as concept_seed makes it per concept), its Adam LRs (optim.make_optimizer's
row_lrs). The bank, the frozen weights and the compiled step are shared, so a (beta, LR) grid
trains as one run and each cell equals its separate run.

train.slots is '' (one cell: the config itself, nothing changes) or either of

  'steer.beta=1,2,4;optim.factor_lr=0.5,5,50'  a product, the last key varying fastest
                                               (short names too: beta, s, flr, dlr, seed)
  '[{"steer.beta": 1, "optim.factor_lr": 0.5, "name": "a", "workdir": "w/a"}, ...]'
                                               a JSON list of cells (name and workdir optional)

A cell is named like a sweep run (beta1_flr0.5) and writes what its separate run would
(config.json, metrics.jsonl, summary.json, vectors/) in its workdir, by default
<workdir>/<name>; the run's own workdir keeps the config, the checkpoints of every slot and a
summary.json listing the cells. prosv_jax.sweep groups a sweep's runs into such a run when
they differ only in these keys.

Divergence: a cell whose loss, gradient or params go bad at a step (any of its concepts) is
frozen at its params from before that step, the very state its separate run would stop and
save with, and gets a failed.json with that run's error; the other cells train on. Its rows
still run every step (the batch keeps its shape), their updates discarded. The run stops
when no cell is left.

Costs: the batch holds every slot's rows, so blocks L+1.. run S times the rows of one run;
shared are blocks 0..L (the bank), the reads of the frozen weights, the compile, the setup
and the per-step overhead. Needs no JAX.
"""

import dataclasses
import itertools
import json
import os

from prosv_jax.errors import ProsvError

# The keys a cell may set, with the type each value takes.
SLOT_KEYS = {'steer.beta': float, 'steer.direction_scale': float, 'optim.factor_lr': float,
             'optim.direction_lr': float, 'train.seed': int}
# Short names, as sweep run names spell them (prosv_jax.sweep.ALIASES).
SHORT = {'beta': 'steer.beta', 's': 'steer.direction_scale', 'flr': 'optim.factor_lr',
         'dlr': 'optim.direction_lr', 'seed': 'train.seed'}
FORMS = ("'steer.beta=1,2;optim.factor_lr=0.5,5' (a product) or a JSON list of cells like "
         "'[{\"steer.beta\": 1, \"optim.factor_lr\": 0.5}]'")


@dataclasses.dataclass(frozen=True)
class Cell:
  """One grid cell: its name, workdir, slot values and the separate run it equals."""
  name: str  # '' for the one cell of a run without train.slots
  workdir: str
  values: dict  # every SLOT_KEYS key -> this cell's value
  config: object  # the ConfigDict of the cell's separate run (train.slots '', own workdir)

  @property
  def beta(self) -> float:
    return float(self.values['steer.beta'])

  @property
  def direction_scale(self) -> float:
    return float(self.values['steer.direction_scale'])

  @property
  def seed(self) -> int:
    return int(self.values['train.seed'])


def own_values(config) -> dict:
  """The config's own value of every slot key."""
  return {key: kind(_get(config, key)) for key, kind in SLOT_KEYS.items()}


def _get(config, key: str):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def _key(name: str) -> str:
  """A slot key from its dotted or short name, or a one-line error."""
  key = SHORT.get(name.strip(), name.strip())
  if key not in SLOT_KEYS:
    raise ProsvError(f'train.slots sets {name.strip()!r}, which is no slot key; a cell may set '
                     f'{", ".join(SLOT_KEYS)} (sweep other keys as separate runs)')
  return key


def _value(key: str, raw):
  kind = SLOT_KEYS[key]
  try:
    value = kind(raw) if kind is float else _whole(raw)
  except (TypeError, ValueError):
    raise ProsvError(f'train.slots gives {key}={raw!r}; use a number'
                     + (' (a whole one)' if kind is int else '')) from None
  return value


def _whole(raw) -> int:
  value = float(raw)
  if value != int(value) or isinstance(raw, bool):
    raise ValueError(raw)
  return int(value)


def parse(spec: str) -> list[dict]:
  """train.slots as a list of cells: {slot key: value} plus optional 'name' and 'workdir'."""
  text = str(spec).strip()
  if not text:
    return []
  if text.startswith('['):
    try:
      cells = json.loads(text)
    except ValueError as e:
      raise ProsvError(f'train.slots is not valid JSON ({e.msg}); use {FORMS}') from None
    if not cells or not all(isinstance(c, dict) for c in cells):
      raise ProsvError(f'train.slots must list at least one cell, each a dict; use {FORMS}')
    out = []
    for cell in cells:
      extra = {k: str(v) for k, v in cell.items() if k in ('name', 'workdir')}
      values = {_key(k): v for k, v in cell.items() if k not in ('name', 'workdir')}
      out.append({**{k: _value(k, v) for k, v in values.items()}, **extra})
    return out
  axes = []
  for part in filter(None, (p.strip() for p in text.split(';'))):
    name, sep, raw = part.partition('=')
    values = [v.strip() for v in raw.split(',') if v.strip()]
    if not sep or not values:
      raise ProsvError(f'train.slots part {part!r} does not parse; use {FORMS}')
    key = _key(name)
    if key in (k for k, _ in axes):
      raise ProsvError(f'train.slots sets {key} twice; give all its values in one part')
    axes.append((key, [_value(key, v) for v in values]))
  keys = [k for k, _ in axes]
  return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in axes))]


def cell_name(values: dict) -> str:
  """'beta1_flr0.5': the cell's keys as a sweep names its runs."""
  from prosv_jax.sweep import fragment  # pylint: disable=import-outside-toplevel
  return '_'.join(fragment(k, v) for k, v in values.items())


def cells(config) -> list[Cell]:
  """The cells of config.train.slots in order; one cell, the config itself, when it is ''."""
  own = own_values(config)
  parsed = parse(config.train.get('slots', ''))
  if not parsed:
    return [Cell('', config.workdir, own, config)]
  out, names, workdirs = [], set(), set()
  for i, cell in enumerate(parsed):
    values = {k: v for k, v in cell.items() if k in SLOT_KEYS}
    name = cell.get('name') or cell_name(values) or f'cell{i}'
    workdir = cell.get('workdir') or os.path.join(config.workdir, name)
    if name in names:
      raise ProsvError(f'train.slots has two cells named {name}; give each cell distinct '
                       'values or a name')
    if os.path.normpath(workdir) in workdirs | {os.path.normpath(config.workdir)}:
      raise ProsvError(f'train.slots cell {name} writes to {workdir}, which another cell or the '
                       'run itself uses; give each cell its own workdir')
    names.add(name)
    workdirs.add(os.path.normpath(workdir))
    merged = {**own, **values}
    out.append(Cell(name, workdir, merged, cell_config(config, merged, workdir)))
  return out


def cell_config(config, values: dict, workdir: str):
  """The config of the separate run a cell equals: its values, no slots, its own workdir."""
  c = config.copy_and_resolve_references()
  for key, value in values.items():
    *parents, leaf = key.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  c.train.slots = ''
  c.workdir = workdir
  return c
