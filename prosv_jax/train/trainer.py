"""The Trainer: one job's frozen model, concepts, block-L bank, optimizer and jitted step.

Its batches are a pure function of the step, so a checkpoint's step is also its data position.
The job around it (loop, checkpoints, logs, exports) is prosv_jax.train.job.
"""

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from prosv_jax import data, parallel, steer
from prosv_jax.errors import ProsvError
from prosv_jax.models.load import Model, check_spec
from prosv_jax.train import optim, slots
from prosv_jax.train.concepts import (concept_seed, load_concepts, neutral_responses,
                                     read_concepts)
from prosv_jax.train.config import check_config
from prosv_jax.train.step import eval_sums, lower_hidden_jit, reference_logprobs, train_step
from prosv_jax.padding import round_up


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
    row_lrs = [(cell.values['optim.factor_lr'], cell.values['optim.direction_lr'])
               for cell in self.cells for _ in self.concepts.ids]
    self.optimizer = optim.make_optimizer(config.optim, self.total_steps, self.width, row_lrs)
    # Global row index of every example: the bank's first axis.
    self.flat = [ex for per in self.concepts.examples for ex in per]
    if self.concepts.losers:
      self.flat += [ex for per in self.concepts.losers for ex in per]
    self.lengths = [data.example_lengths(per) for per in self.concepts.examples]
    self.bank = None  # [N, W, D] block-L outputs, or None (recomputed each step); prepare()
    self.ref_logp = None  # SimPO: unsteered summed log-probs of every response; prepare()
    self._prepared = False
    self.state_shardings = None  # of the steering state on the mesh (set on first use)

  # ------------------------------------------------------------------ state

  def init_params(self) -> dict:
    """{'factor': [S], 'direction': [S, n]}: each slot initialised as its separate run would
    (its cell's beta and direction scale, its concept's seed from the cell's seed)."""
    per = [steer.init_steer_params(jax.random.key(concept_seed(cell.seed, cid)), self.width, 1,
                                   cell.beta, cell.direction_scale)
           for cell in self.cells for cid in self.concepts.ids]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *per)

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

  def host_batch(self, rows: list[int], slots_: list[int] | None = None) -> dict:
    """The numpy batch of global rows `rows` (every process builds the same one); slots_
    gives each row's param row (default: its concept index, right without train.slots)."""
    if self.concepts.losers:  # winners then losers of the same instructions
      n = len(self.flat) // 2
      rows = rows + [r + n for r in rows]
      slots_ = None if slots_ is None else slots_ + slots_
    examples = [self.flat[r] for r in rows]
    batch = data.pad_batch(examples, self.pad_id, int(self.config.data.pad_multiple))
    if slots_ is not None:
      batch['concept'] = np.asarray(slots_, np.int32)
    batch['rows'] = np.asarray(rows, np.int32)
    if self.ref_logp is not None:
      batch['ref_logp'] = self.ref_logp[np.asarray(rows)]
    return batch

  def make_batch(self, rows: list[int]) -> dict:
    """host_batch on the devices: rows split over the mesh's 'data' axis when there is one."""
    return parallel.place_batch(self.host_batch(rows), self.mesh)

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
      training rows or held-out ones; batched by length, batch_size * K rows at a time.

    Returns lists [K], None for a concept without examples: loss (token-mean response
    cross-entropy, steered), unsteered_loss, and residual_rms (RMS of block-L outputs at the
    steered positions).
    """
    k = self.num_concepts
    total = {}
    rows = self.batch_size * k
    multiple = int(self.config.data.pad_multiple)
    # One shape for every batch (one compile): the longest row's width, and a last batch
    # filled up with rows of concept index k, which the per-concept sums leave out.
    width = -(-max((e.length for e in examples), default=1) // multiple) * multiple
    longest = max((len(e.response) for e in examples), default=1)
    response_width = max(multiple, -(-longest // multiple) * multiple)
    order = np.argsort(data.example_lengths(examples), kind='stable') if examples else []
    for start in range(0, len(order), rows):
      picked = [examples[i] for i in order[start:start + rows]]
      picked += [dataclasses.replace(picked[0], concept=k)] * (rows - len(picked))
      batch = data.pad_batch(picked, self.pad_id, width)
      sums = parallel.to_host(eval_sums(
          params, self.model.params, parallel.place_batch(batch, self.mesh), cfg=self.model.cfg,
          layer=self.layer, positions=self.positions, num_concepts=k,
          response_width=response_width))
      for key, value in sums.items():
        total[key] = total.get(key, 0.0) + np.asarray(value, np.float64)
    present = [any(e.concept == c for e in examples) for c in range(k)]

    def ratio(num, den, root=False):
      if not total:
        return [None] * k
      x = total[num] / np.maximum(total[den], 1.0)
      x = np.sqrt(x) if root else x
      return [float(v) if ok else None for v, ok in zip(x, present)]

    return {'loss': ratio('steered_nll', 'tokens'),
            'unsteered_loss': ratio('unsteered_nll', 'tokens'),
            'residual_rms': ratio('residual_sq', 'residual_n', root=True)}

  def eval_loss(self, params, examples: list[data.Example]) -> list:
    """Steered lang loss per concept [K] of `examples` (e.g. held-out positives): what a
    hyperparameter study selects by."""
    return self.evaluate(params, examples)['loss']

  # ------------------------------------------------------------------ block-L bank

  def prepare(self) -> float:
    """Builds what every step reads: the block-L bank and, for SimPO, the reference log-probs.

    Idempotent; returns the seconds it took (0 when already prepared). step() calls it too.
    """
    if self._prepared:
      return 0.0
    start = time.perf_counter()
    self.bank = self._build_bank()
    jax.block_until_ready(self.bank)
    if self.config.train.loss == 'simpo':
      self.ref_logp = self._compute_reference()
    self._prepared = True
    return time.perf_counter() - start

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
    order = np.argsort(data.example_lengths(self.flat))
    starts = tqdm(range(0, len(order), self.batch_size), desc=f'block-{self.layer} bank',
                  unit='batch', leave=False, dynamic_ncols=True,
                  disable=not parallel.is_main_process())
    for start in starts:
      rows = order[start:start + self.batch_size]
      b = data.pad_batch([self.flat[r] for r in rows], self.pad_id, multiple)
      b = parallel.place_batch({k: b[k] for k in ('tokens', 'length')}, self.mesh)
      h = lower_hidden_jit(self.model.params, self.model.cfg, self.layer, b['tokens'],
                           b['length'])
      bank[rows, :h.shape[1]] = parallel.to_host(h)
    if self.mesh is None:
      return jnp.asarray(bank)
    return parallel.place(bank, parallel.batch_sharding(self.mesh, bank.shape))

  def _compute_reference(self):
    """SimPO reference: summed log-probs of every response under the unsteered model."""
    ref = np.zeros(len(self.flat), np.float32)
    for start in range(0, len(self.flat), self.batch_size):
      rows = list(range(start, min(start + self.batch_size, len(self.flat))))
      b = data.pad_batch([self.flat[r] for r in rows], self.pad_id,
                         int(self.config.data.pad_multiple))
      width = self.response_width(b)
      ref[rows] = parallel.to_host(reference_logprobs(
          self.model.params, parallel.place_batch(b, self.mesh), cfg=self.model.cfg,
          layer=self.layer, response_width=width))
    return ref

  def step(self, state, step: int):
    """(new state, metrics, real tokens in the batch) for training step `step`."""
    self.prepare()
    rows, slots_ = self.slot_batch(step)
    batch = self.host_batch(rows, slots_)
    if self.bank is None:
      batch.pop('rows')
    tokens = sum(self.flat[r].length for r in rows)
    width = self.response_width(batch)
    # One jit for every mesh: the placed inputs carry the shardings, the compiler does the rest.
    state, metrics = train_step(
        state, self.model.params, parallel.place_batch(batch, self.mesh), self.bank,
        cfg=self.model.cfg, layer=self.layer, positions=self.positions,
        loss_kind=self.config.train.loss, num_concepts=self.num_slots,
        optimizer=self.optimizer, response_width=width, remat=bool(self.config.train.remat),
        max_param=optim.MAX_PARAM,  # read per call, so a test may lower it
        slot_cells=self.slot_cells)
    if self.mesh is not None:
      # The compiler may lay the new state out otherwise (e.g. directions split over D like
      # the FSDP weights); putting it back (a few K x D floats) keeps one compiled step.
      state = parallel.place_tree(state, self._state_shardings(state))
    return state, metrics, tokens
