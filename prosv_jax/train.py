"""Joint training of steering vectors for K concepts at once: data, init, batches, the step.

The Trainer owns one job's frozen model, tokenized concepts and optimizer; its batches are a
pure function of the step, so a checkpoint's step is also its data position. The workdir job
around it (checkpoints, logs, exports) is prosv_jax.run.train_and_export.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from prosv_jax import chat, data, optim, parallel, steer
from prosv_jax.errors import ProsvError
from prosv_jax.models.load import Model
from prosv_jax.train_step import lower_hidden_jit, reference_logprobs, train_step

LOSSES = ('lang', 'simpo')


@dataclasses.dataclass
class Concepts:
  """The tokenized training set: one list of examples per concept, all the same length."""
  ids: list[int]  # AxBench concept ids
  descriptions: list[str]
  examples: list[list[data.Example]]
  losers: list[list[data.Example]] | None = None  # SimPO: neutral response per example

  @property
  def per_concept(self) -> int:
    return len(self.examples[0])


def concept_seed(seed: int, concept_id: int) -> int:
  """A concept's own seed, so its init and data order do not depend on the other concepts."""
  return int(np.random.SeedSequence([seed, concept_id + 1]).generate_state(1)[0])


def load_concepts(config, tokenizer) -> Concepts:
  """Reads, validates and tokenizes the concepts named by config.data before any compute."""
  dcfg = config.data
  if dcfg.source == 'demo':
    table, meta = data.demo_table()
  else:
    table = data.read_concept_table(dcfg.source, split='train')
    meta = data.read_concept_metadata(dcfg.metadata) if dcfg.metadata else {}
  ids = [int(c) for c in dcfg.concepts]
  if not ids:
    raise ProsvError('data.concepts is empty; name at least one concept id, e.g. '
                     '--config.data.concepts=0,1')
  rows = data.concept_rows(table, ids)
  examples = []
  for k, cid in enumerate(ids):
    picked = rows[cid]
    if dcfg.max_examples:
      picked = picked.iloc[:dcfg.max_examples]
    examples.append(data.tokenize_rows(tokenizer, picked, k, dcfg.max_prompt_tokens,
                                       dcfg.max_response_tokens))
  counts = {cid: len(ex) for cid, ex in zip(ids, examples)}
  if len(set(counts.values())) > 1:
    raise ProsvError(f'concepts have different example counts {counts}; set '
                     f'data.max_examples={min(counts.values())} or train them in separate runs')
  descriptions = []
  for cid, picked in ((cid, rows[cid]) for cid in ids):
    desc = meta.get(cid)
    if desc is None and 'output_concept' in picked.columns:
      desc = str(picked['output_concept'].iloc[0])
    descriptions.append(desc or f'concept {cid}')
  return Concepts(ids, descriptions, examples)


class Trainer:
  """Holds the frozen model, the data and the jitted step for one training job."""

  def __init__(self, config, model: Model | None = None):
    check_config(config)
    self.config = config
    # None on one device: then nothing below is placed and everything runs as it always has.
    self.mesh = parallel.mesh_from_config(config)
    if model is None:
      model = parallel.load_on_mesh(config.model, config.dtype, self.mesh)
    elif self.mesh is not None:  # frozen weights: FSDP over 'data', tensor parallel over 'model'
      model = dataclasses.replace(model, params=parallel.shard_params(model.params, self.mesh))
    chat.set_chat_template(model.tokenizer, config.chat_template)
    self.model = model
    cfg = self.model.cfg
    self.layer = cfg.check_layer(int(config.layer))
    self.positions = steer.parse_positions(config.positions)
    self.concepts = load_concepts(config, self.model.tokenizer)
    if config.train.loss == 'simpo':
      self.concepts.losers = neutral_responses(self.model, self.concepts, config)
    self.num_concepts = len(self.concepts.ids)
    self.batch_size = int(config.train.batch_size)
    self.steps_per_epoch = math.ceil(self.concepts.per_concept / self.batch_size)
    self.total_steps = self.steps_per_epoch * int(config.train.epochs)
    self.width = cfg.hidden_size
    self.optimizer = optim.make_optimizer(config.optim, self.total_steps, self.width)
    # Global row index of every example: the bank's first axis.
    self.flat = [ex for per in self.concepts.examples for ex in per]
    if self.concepts.losers:
      self.flat += [ex for per in self.concepts.losers for ex in per]
    self.lengths = [data.example_lengths(per) for per in self.concepts.examples]
    self.bank = None
    self.ref_logp = None
    self.state_shardings = None  # of the steering state on the mesh (set on first use)

  # ------------------------------------------------------------------ state

  def init_state(self) -> dict:
    seed = int(self.config.train.seed)
    per = [steer.init_steer_params(jax.random.key(concept_seed(seed, cid)), self.width, 1,
                                   self.config.steer.beta, self.config.steer.direction_scale)
           for cid in self.concepts.ids]
    params = jax.tree.map(lambda *xs: jnp.concatenate(xs), *per)
    state = {'steer': params, 'opt': self.optimizer.init(params),
             'step': jnp.zeros((), jnp.int32)}
    return state if self.mesh is None else parallel.place_tree(state, self._state_shardings(state))

  def _state_shardings(self, state):
    if self.state_shardings is None:
      self.state_shardings = parallel.state_shardings(
          state, self.mesh, self.num_concepts, bool(self.config.mesh.shard_concepts))
    return self.state_shardings

  # ------------------------------------------------------------------ data

  def batch_rows(self, step: int) -> list[int]:
    """Global example indices of one step: each concept's own batch, concept by concept."""
    epoch, index = divmod(step, self.steps_per_epoch)
    rows, offset = [], 0
    for cid, lengths in zip(self.concepts.ids, self.lengths):
      order = data.epoch_order(lengths, self.batch_size,
                               concept_seed(int(self.config.train.seed), cid), epoch,
                               bucket=bool(self.config.data.bucket))
      rows.extend(offset + int(i) for i in order[index])
      offset += len(lengths)
    return rows

  def host_batch(self, rows: list[int]) -> dict:
    """The numpy batch of global rows `rows` (every process builds the same one)."""
    if self.concepts.losers:  # winners then losers of the same instructions
      n = len(self.flat) // 2
      rows = rows + [r + n for r in rows]
    examples = [self.flat[r] for r in rows]
    batch = data.pad_batch(examples, self.pad_id, int(self.config.data.pad_multiple))
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
    return max(multiple, -(-longest // multiple) * multiple)

  # ------------------------------------------------------------------ block-L bank

  def build_bank(self):
    """Block-L outputs of every example, computed once (None if over the memory budget)."""
    if not self.config.train.cache_hidden:
      return None
    multiple = int(self.config.data.pad_multiple)
    width = -(-max(e.length for e in self.flat) // multiple) * multiple
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
    for start in range(0, len(order), self.batch_size):
      rows = order[start:start + self.batch_size]
      b = data.pad_batch([self.flat[r] for r in rows], self.pad_id, multiple)
      b = parallel.place_batch({k: b[k] for k in ('tokens', 'length')}, self.mesh)
      h = lower_hidden_jit(self.model.params, self.model.cfg, self.layer, b['tokens'],
                           b['length'])
      bank[rows, :h.shape[1]] = parallel.to_host(h)
    if self.mesh is None:
      return jnp.asarray(bank)
    return parallel.place(bank, parallel.batch_sharding(self.mesh, bank.shape))

  def compute_reference(self):
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
    rows = self.batch_rows(step)
    batch = self.host_batch(rows)
    if self.bank is None:
      batch.pop('rows')
    tokens = sum(self.flat[r].length for r in rows)
    width = self.response_width(batch)
    # One jit for every mesh: the placed inputs carry the shardings, the compiler does the rest.
    state, metrics = train_step(
        state, self.model.params, parallel.place_batch(batch, self.mesh), self.bank,
        cfg=self.model.cfg, layer=self.layer, positions=self.positions,
        loss_kind=self.config.train.loss, num_concepts=self.num_concepts,
        optimizer=self.optimizer, response_width=width, remat=bool(self.config.train.remat))
    if self.mesh is not None:
      # The compiler may lay the new state out otherwise (e.g. directions split over D like
      # the FSDP weights); putting it back (a few K x D floats) keeps one compiled step.
      state = parallel.place_tree(state, self._state_shardings(state))
    return state, metrics, tokens


def neutral_responses(model: Model, concepts: Concepts, config) -> list[list[data.Example]]:
  """SimPO's y_l: the unsteered model's own greedy answer to each training instruction."""
  from prosv_jax.sampling import SamplingConfig, generate_ids
  sampling = SamplingConfig(max_new_tokens=int(config.data.max_response_tokens))
  losers = []
  for per in concepts.examples:
    prompts = [list(map(int, e.prompt)) for e in per]
    new = []
    for start in range(0, len(prompts), 16):
      new += generate_ids(model.params, model.cfg, prompts[start:start + 16], sampling=sampling)
    losers.append([dataclasses.replace(e, response=np.asarray(r or [model.cfg.eos_ids[0]],
                                                              np.int32))
                   for e, r in zip(per, new)])
  return losers


def check_config(config) -> None:
  """Value checks that ml_collections' type checks cannot do; one line each."""
  if config.train.loss not in LOSSES:
    raise ProsvError(f'train.loss={config.train.loss!r}; use one of {", ".join(LOSSES)}')
  for key in ('epochs', 'batch_size'):
    if int(config.train[key]) < 1:
      raise ProsvError(f'train.{key}={config.train[key]}; use a positive integer')
  if config.dtype not in ('float32', 'bfloat16'):
    raise ProsvError(f'dtype={config.dtype!r}; use float32 or bfloat16')
  steer.parse_positions(config.positions)
  if config.steer.direction_scale <= 0:
    raise ProsvError(f'steer.direction_scale={config.steer.direction_scale}; use s > 0')
  parallel.check_mesh_sizes(config.mesh.data, config.mesh.model)
