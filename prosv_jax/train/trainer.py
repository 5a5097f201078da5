"""The Trainer: one job's frozen model, concepts, block-L bank, optimizer and jitted step.

Its batches are a pure function of the step, so a checkpoint's step is also its data position.
Which examples a step trains on never depends on their layout: with data.pack the same
examples are packed several to a row (data.pack_batch) instead of one per padded row.
The job around it (loop, checkpoints, logs, exports) is prosv_jax.train.job.
"""

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from prosv_jax import data, flops, memory, parallel, steer
from prosv_jax.errors import ProsvError
from prosv_jax.models.load import Model, check_spec
from prosv_jax.train import optim, slots
from prosv_jax.train.concepts import (concept_seed, load_concepts, neutral_responses,
                                     read_concepts)
from prosv_jax.train.config import check_config
from prosv_jax.train.step import (batch_lower_hidden_jit, eval_sums, lower_hidden_jit,
                                  reference_logprobs, train_step)
from prosv_jax.padding import round_up

# eval_sums' per-example outputs (the rest are per concept).
EXAMPLE_SUMS = ('example_steered_nll', 'example_unsteered_nll', 'example_tokens')


def _check_context(cfg, concepts) -> None:
  """Every example (prompt + response) must fit the model's positions."""
  longest = max(e.length for per in concepts.examples for e in per)
  if longest > cfg.max_position:
    raise ProsvError(f'an example is {longest} tokens but the model has {cfg.max_position} '
                     f'positions (max_position_embeddings); lower data.max_prompt_tokens / '
                     f'data.max_response_tokens')


class Trainer:
  """Holds the frozen model, the data and the jitted step for one training job."""

  def __init__(self, config, model: Model | None = None):
    check_config(config)
    self.config = config
    # None on one device: then nothing below is placed and everything runs as it always has.
    self.mesh = parallel.mesh_from_config(config)
    # Everything that needs no model is checked before the (slow) load.
    read = read_concepts(config)
    if model is None:
      check_spec(config.model)
      if parallel.is_main_process():  # ~25 s for the embedded model: say what it waits on
        print(f'loading {config.model} ...', flush=True)
      model = parallel.load_on_mesh(config.model, config.dtype, self.mesh)
    elif self.mesh is not None:  # frozen weights: FSDP over 'data', tensor parallel over 'model'
      model = dataclasses.replace(model, params=parallel.shard_params(model.params, self.mesh))
    attention = config.get('attention', 'einsum')
    if model.cfg.attention != attention:  # a runtime choice: the same weights, another kernel
      model = dataclasses.replace(model, cfg=dataclasses.replace(model.cfg, attention=attention))
    self.model = model
    cfg = self.model.cfg
    self.layer = cfg.check_layer(int(config.layer))
    self.positions = steer.parse_positions(config.positions)
    self.concepts = load_concepts(config, self.model.tokenizer, read)
    _check_context(cfg, self.concepts)
    if config.train.loss == 'simpo':
      self.concepts.losers = neutral_responses(self.model, self.concepts, config)
    self.num_concepts = len(self.concepts.ids)
    # Param rows are slots: concept k of grid cell c is row c * K + k (prosv_jax.train.slots);
    # without train.slots the one cell is the config and the rows are its concepts.
    self.cells = slots.cells(config)
    self.num_slots = len(self.cells) * self.num_concepts
    self.slot_cells = tuple(c for c in range(len(self.cells)) for _ in self.concepts.ids)
    self.batch_size = int(config.train.batch_size)
    self.steps_per_epoch = math.ceil(self.concepts.per_concept / self.batch_size)
    self.total_steps = self.steps_per_epoch * int(config.train.epochs)
    self.width = cfg.hidden_size
    self._optimizer = None  # built on first use: steer.init='residual' needs the bank first
    self._residual = None  # (per-concept, pooled) block-L residual RMS; residual_rms()
    # Global row index of every example: the bank's first axis.
    self.flat = [ex for per in self.concepts.examples for ex in per]
    if self.concepts.losers:
      self.flat += [ex for per in self.concepts.losers for ex in per]
    self.lengths = [data.example_lengths(per) for per in self.concepts.examples]
    # Packing (data.pack): rows of one width for the whole run, their count a multiple of the
    # mesh's 'data' size so they split evenly over its devices.
    self.pack_width = data.pack_width(data.example_lengths(self.flat),
                                      int(config.data.pad_multiple))
    self.row_multiple = 1 if self.mesh is None else int(self.mesh.shape[parallel.DATA])
    self.head_slots = {}  # packed LM-head slots per packed row count; _plan_packing()
    # Every step's global examples (SimPO losers included), laid out once for both plans.
    step_examples = [np.asarray(self._with_losers(self.batch_rows(step)))
                     for step in range(self.total_steps)]
    self.packed = self._plan_packing(step_examples)
    # Right-padded runs: each step's (rows, width, response width), planned so that no step
    # after the first epoch needs a shape the first epoch has not compiled.
    self.step_shapes = None if self.packed else self._plan_padded(step_examples)
    self.token_slots = self.real_tokens = 0  # token slots and real tokens of the steps run so far
    self.bank = None  # [N, W, D] block-L outputs, or None (recomputed each step); prepare()
    self.ref_logp = None  # SimPO: unsteered summed log-probs of every response; prepare()
    self._prepared = False
    self.state_shardings = None  # of the steering state on the mesh (set on first use)
    self._memory_checked = set()  # step shapes whose memory has been checked; step()

  # ------------------------------------------------------------------ state

  def init_params(self) -> dict:
    """{'factor': [S], 'direction': [S, n]}: each slot initialised as its separate run would
    (its cell's beta and direction scale, its concept's seed from the cell's seed), the factor
    in the unit of steer.init (factor_units)."""
    per = [steer.init_steer_params(jax.random.key(concept_seed(cell.seed, cid)), self.width, 1,
                                   cell.beta, cell.direction_scale)
           for cell in self.cells for cid in self.concepts.ids]
    params = jax.tree.map(lambda *xs: jnp.concatenate(xs), *per)
    params['factor'] = params['factor'] * jnp.asarray(self.factor_units(), jnp.float32)
    return params

  def factor_units(self) -> np.ndarray:
    """[S] what each slot's beta and factor LR are measured in: 1 under steer.init='width'
    (factor0 = beta * sqrt(n)), its concept's residual RMS / steer.residual_ref under
    'residual'.

    Scaling the init and the LR by the same r keeps Adam's step relative to the factor's size
    as it is under 'width' (Adam moves the factor by about one LR per step, whatever the
    gradient's scale), so 'residual' is 'width' with the factor measured in residual RMS.
    """
    if self.config.steer.get('init', 'width') == 'width':
      return np.ones(self.num_slots)
    per_concept, _ = self.residual_rms()
    ref = float(self.config.steer.get('residual_ref', 1.0))
    return np.tile(np.asarray(per_concept, np.float64) / ref, len(self.cells))

  @property
  def optimizer(self):
    """The two-partition Adam (optim.make_optimizer) with each slot's LRs: its cell's, the
    factor's in the unit of factor_units."""
    if self._optimizer is None:
      units = self.factor_units()
      row_lrs = [(cell.values['optim.factor_lr'] * units[s], cell.values['optim.direction_lr'])
                 for s, cell in enumerate(c for c in self.cells for _ in self.concepts.ids)]
      self._optimizer = optim.make_optimizer(self.config.optim, self.total_steps, self.width,
                                             row_lrs)
    return self._optimizer

  def init_state(self) -> dict:
    """params, optimizer state, step and live [S] (False once a slot's cell diverged)."""
    params = self.init_params()
    state = {'steer': params, 'opt': self.optimizer.init(params),
             'step': jnp.zeros((), jnp.int32), 'live': jnp.ones((self.num_slots,), bool)}
    return state if self.mesh is None else parallel.place_tree(state, self._state_shardings(state))

  def _state_shardings(self, state):
    if self.state_shardings is None:
      self.state_shardings = parallel.state_shardings(
          state, self.mesh, self.num_slots, bool(self.config.mesh.shard_concepts))
    return self.state_shardings

  # ------------------------------------------------------------------ data

  def slot_batch(self, step: int) -> tuple[list[int], list[int]]:
    """(rows, slots) of one step: each slot's own batch, slot by slot; rows are global example
    indices (the bank's), slots the param row each example trains.

    A slot's batch is its concept's batch in its cell's separate run (data order from
    concept_seed(cell seed, concept id)), so cells of one seed repeat the same examples.
    """
    epoch, index = divmod(step, self.steps_per_epoch)
    offsets = np.cumsum([0] + [len(x) for x in self.lengths])
    orders = {}  # (seed, concept index) -> this epoch's batches: cells often share a seed
    rows, slots_ = [], []
    for slot, (cell, k) in enumerate((c, k) for c in self.cells
                                     for k in range(self.num_concepts)):
      key = (cell.seed, k)
      if key not in orders:
        orders[key] = data.epoch_order(self.lengths[k], self.batch_size,
                                       concept_seed(cell.seed, self.concepts.ids[k]), epoch,
                                       bucket=bool(self.config.data.bucket))
      picked = orders[key][index]
      rows.extend(int(offsets[k]) + int(i) for i in picked)
      slots_.extend([slot] * len(picked))
    return rows, slots_

  def batch_rows(self, step: int) -> list[int]:
    """Global example indices of one step: each slot's own batch, slot by slot."""
    return self.slot_batch(step)[0]

  def _with_losers(self, rows: list[int]) -> list[int]:
    """The global examples a step of `rows` trains on: SimPO adds each row's loser after all
    the winners (simpo_loss reads [winners; losers])."""
    if self.concepts.losers:
      n = len(self.flat) // 2
      rows = rows + [r + n for r in rows]
    return rows

  def host_batch(self, rows: list[int], slots_: list[int] | None = None,
                 width: int | None = None) -> dict:
    """The right-padded numpy batch of global rows `rows` (every process builds the same one);
    slots_ gives each row's param row (default: its concept index, right without train.slots);
    width pads to a planned width (default: the longest row, rounded up)."""
    rows = self._with_losers(rows)
    examples = [self.flat[r] for r in rows]
    batch = data.pad_batch(examples, self.pad_id, int(self.config.data.pad_multiple), width)
    return self._add_rows(batch, rows, slots_)

  def packed_batch(self, rows: list[int], slots_: list[int] | None = None) -> dict:
    """host_batch's examples packed into rows of pack_width (data.pack_batch): the same
    losses and gradients, without the padded slots."""
    rows = self._with_losers(rows)
    examples = [self.flat[r] for r in rows]
    row, start = data.first_fit_decreasing(data.example_lengths(examples), self.pack_width)
    head = self.head_slots.get(round_up(int(row.max()) + 1, self.row_multiple))
    batch = data.packed_arrays(examples, row, start, self.pad_id, self.pack_width,
                               num_head=head or 0, row_multiple=self.row_multiple,
                               head_multiple=int(self.config.data.pad_multiple) if head else 0)
    return self._add_rows(batch, rows, slots_)

  def _add_rows(self, batch: dict, rows: list[int], slots_: list[int] | None = None) -> dict:
    if slots_ is not None:  # the examples' param rows; a packed batch's fillers keep -1
      slots_ = slots_ + slots_ if self.concepts.losers else slots_
      batch['concept'][:len(slots_)] = np.asarray(slots_, np.int32)
    batch['rows'] = np.asarray(rows, np.int32)
    if self.ref_logp is not None:
      batch['ref_logp'] = self.ref_logp[np.asarray(rows)]
    return batch

  def train_batch(self, step: int) -> dict:
    """The numpy batch training step `step` runs on: packed_batch, or host_batch at the
    step's planned width."""
    rows, slots_ = self.slot_batch(step)
    if self.packed:
      return self.packed_batch(rows, slots_)
    return self.host_batch(rows, slots_, width=self.step_shapes[step][1])

  def _plan_padded(self, step_examples: list[np.ndarray]) -> list[tuple[int, int, int]]:
    """(rows, width, response width) of every right-padded step, such that the steps after
    the first epoch reuse shapes the first epoch compiled.

    Each step needs its longest row and longest response rounded up to data.pad_multiple. Of
    the first epoch's steps with a given row count, the one needing the widest shape gets the
    widest the whole run needs of that row count; every step then takes the narrowest planned
    shape that holds it. On Concept10 2b_l10 (10 concepts x 12 epochs, batch 12) that compiles
    49 shapes instead of 79 for 1.4% more token slots.
    """
    multiple = int(self.config.data.pad_multiple)
    lengths = data.example_lengths(self.flat)
    responses = np.array([len(e.response) for e in self.flat])
    need = [(len(ex), round_up(int(lengths[ex].max()), multiple),
             max(multiple, round_up(int(responses[ex].max()), multiple)))
            for ex in step_examples]
    first = need[:self.steps_per_epoch]
    shapes = set(first)
    for count in {n for n, _, _ in need}:
      mine = [s for s in first if s[0] == count]
      if mine:
        shapes.discard(max(mine))
      shapes.add((count, max(s[1] for s in need if s[0] == count),
                  max(s[2] for s in need if s[0] == count)))
    return [min(s for s in shapes if s[0] == n and s[1] >= w and s[2] >= r)
            for n, w, r in need]

  def _plan_packing(self, step_examples: list[np.ndarray]) -> bool:
    """Lays out every step of the run once (numpy on the host, fast) and applies data.pack:
    'on', 'off', or 'auto' = packed when the run's steps cost fewer FLOPs packed than
    right-padded. The cost counts each row's token slots through the blocks' weight matmuls
    and the dense attention a row computes (every query x key of its width: a packed row's
    masked cross-example pairs are computed too), so wide packed rows pay for their attention:
    on Concept10 with SmolLM2 one or two concepts a step stay padded, eight pack.

    Each packed row count gets the head slots of its most demanding step (head_slots), so
    the run compiles one step per row count, about as many as right-padded widths, rather
    than one per (rows, head slots) pair.
    """
    mode = self.config.data.pack
    if mode == 'off':
      return False
    multiple = int(self.config.data.pad_multiple)
    lengths = data.example_lengths(self.flat)
    responses = np.array([len(e.response) for e in self.flat])
    padded = packed = 0.0
    heads = {}
    cost = functools.partial(flops.rows_cost, self.model.cfg)
    for ex in step_examples:
      row, _ = data.first_fit_decreasing(lengths[ex], self.pack_width)
      rows = round_up(int(row.max()) + 1, self.row_multiple)
      heads[rows] = max(heads.get(rows, 0), int(responses[ex].sum()))
      packed += cost(rows, self.pack_width)
      padded += cost(len(ex), round_up(int(lengths[ex].max()), multiple))
    head_multiple = int(np.lcm(multiple, self.row_multiple))
    self.head_slots = {r: round_up(h, head_multiple) for r, h in heads.items()}
    return mode == 'on' or packed < padded

  def _pass_batches(self, examples: list[data.Example], rows: int) -> list:
    """[(numpy packed batch, indices into `examples`)] covering `examples` once, all of one
    shape, each with about the token slots of `rows` right-padded rows of the longest: for
    passes over a whole set (evaluation, the bank, the SimPO reference)."""
    multiple = int(self.config.data.pad_multiple)
    width = data.pack_width(data.example_lengths(examples), multiple)
    longest = round_up(max(e.length for e in examples), multiple)
    per = max(1, rows * longest // width)
    return data.pack_batches(examples, self.pad_id, width, per, self.row_multiple)

  def make_batch(self, rows: list[int]) -> dict:
    """host_batch on the devices: rows split over the mesh's 'data' axis when there is one."""
    return parallel.place_batch(self.host_batch(rows), self.mesh)

  @property
  def slots_per_token(self) -> float | None:
    """Token slots per real token over the steps run so far (1.0: no padding at all)."""
    return self.token_slots / self.real_tokens if self.real_tokens else None

  @property
  def pad_id(self) -> int:
    pad = self.model.cfg.pad_id
    return 0 if pad is None else int(pad)

  def response_width(self, batch) -> int:
    """Response slots of a batch: from host_batch, or make_batch on one process."""
    longest = int(np.max(np.asarray(batch['length']) - np.asarray(batch['prompt_len'])))
    multiple = int(self.config.data.pad_multiple)
    return max(multiple, round_up(longest, multiple))

  # ------------------------------------------------------------------ evaluation

  def evaluate(self, params, examples: list[data.Example]) -> dict:
    """Lang loss of `examples` with and without the steering params, per concept.

    params: steering params {'factor': [K], 'direction': [K, n]} of one cell (state['steer'],
      or rows c * K .. c * K + K - 1 of it for cell c of a slot run).
    examples: Examples of any of the K concepts (Example.concept is the index), e.g. the
      training rows or held-out ones; batched by length, batch_size * K rows at a time (or
      packed into as many token slots, when the run packs).

    Returns lists [K], None for a concept without examples: loss (token-mean response
    cross-entropy, steered), unsteered_loss, and residual_rms (RMS of block-L outputs at the
    steered positions); and per example, in `examples`' order: example_loss,
    example_unsteered_loss (token-mean, each example's own) and example_tokens.
    """
    k = self.num_concepts
    total = {}
    each = {key: np.zeros(len(examples)) for key in EXAMPLE_SUMS}
    for batch, response_width, index in self._eval_batches(examples):
      sums = parallel.to_host(eval_sums(
          params, self.model.params, parallel.place_batch(batch, self.mesh), cfg=self.model.cfg,
          layer=self.layer, positions=self.positions, num_concepts=k,
          response_width=response_width))
      for key, value in sums.items():
        value = np.asarray(value, np.float64)
        if key in each:  # the batch's examples lead its arrays; fillers follow
          each[key][index] = value[:len(index)]
        else:
          total[key] = total.get(key, 0.0) + value
    present = [any(e.concept == c for e in examples) for c in range(k)]

    def ratio(num, den, root=False):
      if not total:
        return [None] * k
      x = total[num] / np.maximum(total[den], 1.0)
      x = np.sqrt(x) if root else x
      return [float(v) if ok else None for v, ok in zip(x, present)]

    tokens = np.maximum(each['example_tokens'], 1.0)
    return {'loss': ratio('steered_nll', 'tokens'),
            'unsteered_loss': ratio('unsteered_nll', 'tokens'),
            'residual_rms': ratio('residual_sq', 'residual_n', root=True),
            'example_loss': (each['example_steered_nll'] / tokens).tolist(),
            'example_unsteered_loss': (each['example_unsteered_nll'] / tokens).tolist(),
            'example_tokens': each['example_tokens'].astype(int).tolist()}

  def _eval_batches(self, examples: list[data.Example]):
    """(numpy batch, response width, indices into `examples` of the batch's leading
    examples) covering `examples`, every batch of one shape (one compile) and as many token
    slots as batch_size * K right-padded rows."""
    k = self.num_concepts
    rows = self.batch_size * k
    if not examples:
      return
    if self.packed:  # its fillers have concept -1, which the per-concept sums leave out
      for batch, index in self._pass_batches(examples, rows):
        yield batch, 0, index
      return
    multiple = int(self.config.data.pad_multiple)
    # The longest row's width, and a last batch filled up with rows of concept index k, which
    # the per-concept sums leave out.
    width = round_up(max(e.length for e in examples), multiple)
    response_width = max(multiple, round_up(max(len(e.response) for e in examples), multiple))
    order = np.argsort(data.example_lengths(examples), kind='stable')
    for start in range(0, len(order), rows):
      index = order[start:start + rows]
      picked = [examples[i] for i in index]
      picked += [dataclasses.replace(picked[0], concept=k)] * (rows - len(picked))
      yield data.pad_batch(picked, self.pad_id, width), response_width, index

  def eval_loss(self, params, examples: list[data.Example]) -> list:
    """Steered lang loss per concept [K] of `examples` (e.g. held-out positives): what a
    hyperparameter study selects by."""
    return self.evaluate(params, examples)['loss']

  def residual_rms(self) -> tuple[list[float], float]:
    """(per concept [K], pooled over all K): RMS of block-L outputs over the training
    examples' tokens, leaving out each example's first token, an attention sink in many models
    (gemma3-270m L9: RMS 3488 there against ~258 on the other tokens; SmolLM2 L10 ~6 on all).
    Read from the bank when there is one, else from blocks 0..L run once more."""
    if self._residual is None:
      self.prepare()
      k = self.num_concepts
      sq, n = np.zeros(k), np.zeros(k)
      examples = self.flat[:sum(len(per) for per in self.concepts.examples)]  # no SimPO losers
      for start in range(0, len(examples), self.batch_size):
        idx = list(range(start, min(start + self.batch_size, len(examples))))
        h = self._lower_rows(idx)
        for j, i in enumerate(idx):
          ex = examples[i]
          x = np.asarray(h[j, 1:ex.length], np.float64)
          sq[ex.concept] += np.square(x).sum()
          n[ex.concept] += x.size
      self._residual = (np.sqrt(sq / np.maximum(n, 1)).tolist(),
                        float(np.sqrt(sq.sum() / max(n.sum(), 1))))
    return self._residual

  def _lower_rows(self, idx) -> np.ndarray:
    """Block-L outputs of global examples `idx` [len(idx), W, D] on the host: bank rows, or
    a right-padded batch through blocks 0..L."""
    if self.bank is not None:
      return np.asarray(parallel.to_host(self.bank[np.asarray(idx)]))
    b = parallel.place_batch(
        {k: v for k, v in data.pad_batch([self.flat[i] for i in idx], self.pad_id,
                                         int(self.config.data.pad_multiple)).items()
         if k in ('tokens', 'length')}, self.mesh)
    return np.asarray(parallel.to_host(lower_hidden_jit(
        self.model.params, self.model.cfg, self.layer, b['tokens'], b['length'])))

  # ------------------------------------------------------------------ block-L bank

  def prepare(self) -> float:
    """Builds what every step reads: the block-L bank and, for SimPO, the reference log-probs.

    Idempotent; returns the seconds it took (the first call's, whoever made it). step() calls
    it too.
    """
    if self._prepared:
      return self._prepare_s
    start = time.perf_counter()
    self.bank = self._build_bank()
    jax.block_until_ready(self.bank)
    if self.config.train.loss == 'simpo':
      self.ref_logp = self._compute_reference()
    self._prepared = True
    self._prepare_s = time.perf_counter() - start
    return self._prepare_s

  def _build_bank(self):
    """Block-L outputs of every example, computed once (None if over the memory budget)."""
    if not self.config.train.cache_hidden:
      return None
    multiple = int(self.config.data.pad_multiple)
    width = round_up(max(e.length for e in self.flat), multiple)
    dtype = self.model.params['embed']['embedding'].dtype
    need = len(self.flat) * width * self.width * jnp.dtype(dtype).itemsize
    if need > self.config.train.cache_budget_gb * 2 ** 30:
      if parallel.is_main_process():
        print(f'block-{self.layer} cache needs {need / 2**30:.2f} GiB > train.cache_budget_gb='
              f'{self.config.train.cache_budget_gb}; recomputing blocks 0..{self.layer} every '
              f'step')
      return None
    bank = np.zeros((len(self.flat), width, self.width), dtype)
    if self.packed:
      self._fill_bank_packed(bank)
    else:
      self._fill_bank_padded(bank)
    if self.mesh is None:
      return jnp.asarray(bank)
    return parallel.place(bank, parallel.batch_sharding(self.mesh, bank.shape))

  def _fill_bank_packed(self, bank):
    """bank[i, :length_i] = block-L outputs of example i, computed from packed rows."""
    batches = tqdm(self._pass_batches(self.flat, self.batch_size),
                   desc=f'block-{self.layer} bank', unit='batch', leave=False,
                   dynamic_ncols=True, disable=not parallel.is_main_process())
    for b, idx in batches:
      placed = parallel.place_batch({k: b[k] for k in ('tokens', 'segment', 'rel')}, self.mesh)
      h = parallel.to_host(batch_lower_hidden_jit(self.model.params, self.model.cfg,
                                                  self.layer, placed))
      for j, i in enumerate(idx):
        start, length = b['seg_start'][j], b['length'][j]
        bank[i, :length] = h[b['seg_row'][j], start:start + length]

  def _fill_bank_padded(self, bank):
    """bank[i] = block-L outputs of example i's right-padded row (self.bank is still None,
    so _lower_rows runs blocks 0..L)."""
    order = np.argsort(data.example_lengths(self.flat))
    starts = tqdm(range(0, len(order), self.batch_size), desc=f'block-{self.layer} bank',
                  unit='batch', leave=False, dynamic_ncols=True,
                  disable=not parallel.is_main_process())
    for start in starts:
      rows = order[start:start + self.batch_size]
      h = self._lower_rows(rows)
      bank[rows, :h.shape[1]] = h

  def _compute_reference(self):
    """SimPO reference: summed log-probs of every response under the unsteered model."""
    ref = np.zeros(len(self.flat), np.float32)
    if self.packed:
      for b, idx in self._pass_batches(self.flat, self.batch_size):
        ref[idx] = parallel.to_host(reference_logprobs(
            self.model.params, parallel.place_batch(b, self.mesh), cfg=self.model.cfg,
            layer=self.layer, response_width=0))[:len(idx)]
      return ref
    for start in range(0, len(self.flat), self.batch_size):
      rows = list(range(start, min(start + self.batch_size, len(self.flat))))
      b = data.pad_batch([self.flat[r] for r in rows], self.pad_id,
                         int(self.config.data.pad_multiple))
      width = self.response_width(b)
      ref[rows] = parallel.to_host(reference_logprobs(
          self.model.params, parallel.place_batch(b, self.mesh), cfg=self.model.cfg,
          layer=self.layer, response_width=width))
    return ref

  def _check_memory(self, args, static, shape) -> None:
    """Before a step shape first runs: compile it (the jit call then reuses the executable,
    so this costs nothing) and refuse a step whose XLA memory analysis exceeds the device,
    which would otherwise end in the OOM killer with no word on what to change."""
    key = (tuple(shape), static['response_width'])
    if key in self._memory_checked:
      return
    self._memory_checked.add(key)
    need = memory.step_bytes(train_step.lower(*args, **static).compile())
    total, available = memory.device_bytes()
    if need is None or total is None:
      return
    if need <= memory.MAX_SHARE * total:
      if available is not None and need > available and parallel.is_main_process():
        # It fits the machine, not what others leave of it now: say so, then try.
        print(f'warning: a training step of {shape[0]} x {shape[1]} token slots needs '
              f'{memory.size(need)}, {memory.size(available)} of memory is free now; other '
              f'processes may have to give way (or set --config.train.remat=true)', flush=True)
      return
    cells = f' x {len(self.cells)} grid cells' if len(self.cells) > 1 else ''
    raise ProsvError(
        f'one training step ({shape[0]} rows x {shape[1]} token slots: {self.num_concepts} '
        f'concept(s){cells}, batch {self.batch_size}) needs {memory.size(need)} beyond its '
        f'inputs (XLA memory analysis), over {memory.MAX_SHARE:.0%} of the device\'s '
        f'{memory.size(total)}; set --config.train.remat=true (recompute the upper blocks, '
        f'~1/3 slower), or train fewer concepts or grid cells per step (sweep.py --separate), '
        f'or a smaller train.batch_size or data.max_response_tokens')

  def step(self, state, step: int):
    """(new state, metrics, real tokens in the batch) for training step `step`."""
    self.prepare()
    rows = self.batch_rows(step)
    batch = self.train_batch(step)
    self.token_slots += batch['tokens'].size
    self.real_tokens += int(batch['length'].sum())
    if self.bank is None:
      batch.pop('rows')
    tokens = sum(self.flat[r].length for r in rows)
    width = 0 if self.packed else self.step_shapes[step][2]  # packed: the head has its own
    # One jit for every mesh: the placed inputs carry the shardings, the compiler does the rest.
    args = (state, self.model.params, parallel.place_batch(batch, self.mesh), self.bank)
    static = dict(cfg=self.model.cfg, layer=self.layer, positions=self.positions,
                  loss_kind=self.config.train.loss, num_concepts=self.num_slots,
                  optimizer=self.optimizer, response_width=width,
                  remat=bool(self.config.train.remat),
                  max_param=optim.MAX_PARAM,  # read per call, so a test may lower it
                  slot_cells=self.slot_cells)
    self._check_memory(args, static, batch['tokens'].shape)
    state, metrics = train_step(*args, **static)
    if self.mesh is not None:
      # The compiler may lay the new state out otherwise (e.g. directions split over D like
      # the FSDP weights); putting it back (a few K x D floats) keeps one compiled step.
      state = parallel.place_tree(state, self._state_shardings(state))
    return state, metrics, tokens
