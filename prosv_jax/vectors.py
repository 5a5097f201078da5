"""SteeringVectors: the one type for "steering vectors and where they act".

It holds float32 `factor` [C] and `direction` [C, n] (one row per concept) and the parsed
steering_config.json: model, layer, positions, concepts ({index, concept_id, description} per
row), chat_template and the training metadata. Training exports one, prosv_jax.artifacts saves
and loads it, and generation, evaluation and the utility metrics take it (with a concept).

The raw {'factor', 'direction'} dict of prosv_jax.steer stays the jitted internal form; params()
and generation_kwargs() turn a SteeringVectors into it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from prosv_jax import steer
from prosv_jax.errors import ProsvError

_MAX_LISTED = 10  # concepts named in an index_of error before "... N more"


@dataclasses.dataclass(eq=False)  # arrays: == would be ambiguous
class SteeringVectors:
  """Float32 tensors plus the steering config (the parsed steering_config.json).

  Build one with SteeringVectors.create (checked) or prosv_jax.artifacts.load_vectors.
  """
  factor: np.ndarray  # [C]
  direction: np.ndarray  # [C, n]
  config: dict

  @classmethod
  def create(cls, factor, direction, *, layer: int, positions: str, concepts=None,
             model: str | None = None, chat_template: str = '', **extra) -> SteeringVectors:
    """A checked set. concepts: one {concept_id, description} (or a description str) per row;
    extra keys (e.g. training, metrics) are kept in the config."""
    factor, direction = checked_tensors({'factor': factor, 'direction': direction})
    config = dict(extra, model=model, layer=layer, positions=positions, concepts=concepts,
                  chat_template=chat_template)
    return cls(factor, direction, checked_config(config, *direction.shape))

  @classmethod
  def stack(cls, sets: Sequence[SteeringVectors]) -> SteeringVectors:
    """One set holding the concepts of several (e.g. one training run per concept), which must
    agree on model, layer, positions, chat template and width; each set's training config is
    kept under 'training_runs'."""
    if not sets:
      raise ProsvError('stack needs at least one SteeringVectors')
    first = sets[0]
    for other in sets[1:]:
      for key in ('model', 'layer', 'positions', 'chat_template', 'width'):
        if getattr(other, key) != getattr(first, key):
          raise ProsvError(f'cannot stack vectors with different {key} ({getattr(first, key)!r} '
                           f'vs {getattr(other, key)!r}); stack sets trained alike')
    concepts = [{k: v for k, v in c.items() if k != 'index'} for s in sets for c in s.concepts]
    return cls.create(np.concatenate([s.factor for s in sets]),
                      np.concatenate([s.direction for s in sets]), layer=first.layer,
                      positions=first.positions, concepts=concepts, model=first.model,
                      chat_template=first.chat_template,
                      training_runs=[s.config.get('training') for s in sets])

  # --- what the config says -----------------------------------------------------

  @property
  def layer(self) -> int | None:
    return self.config.get('layer')

  @property
  def positions(self) -> str | None:
    """The position spec string ('p2+s2', 'all', ...); parsed_positions is its parsed form."""
    return self.config.get('positions')

  @property
  def parsed_positions(self) -> steer.Positions:
    if self.positions is None:
      raise ProsvError('the steering config names no positions; set positions (e.g. p2+s2 or '
                       'all) in its steering_config.json or re-save the vectors with them')
    return steer.parse_positions(self.positions)

  @property
  def width(self) -> int:
    return int(self.direction.shape[1])

  @property
  def model(self):
    return self.config.get('model')

  @property
  def chat_template(self) -> str:
    """The template prompts were rendered with in training ('' = the tokenizer's own), so
    generation and evaluation template them the same way. Older files keep it only in the
    training config."""
    if self.config.get('chat_template'):
      return self.config['chat_template']
    return (self.config.get('training') or {}).get('chat_template', '') or ''

  @property
  def concepts(self) -> list[dict]:
    return self.config['concepts']

  def __len__(self) -> int:
    return len(self.factor)

  # --- operations ---------------------------------------------------------------

  def params(self) -> dict:
    """{'factor', 'direction'} as jax arrays, ready for prosv_jax.steer."""
    return {'factor': jnp.asarray(self.factor), 'direction': jnp.asarray(self.direction)}

  def pick(self, concept: int | str) -> SteeringVectors:
    """A one-concept set of the row index_of(concept) names (config and metadata kept)."""
    k = self.index_of(concept)
    entry = dict(self.concepts[k], index=0)
    config = dict(self.config, concepts=[entry])
    if isinstance(config.get('factor'), list):
      config['factor'] = [config['factor'][k]]
    return SteeringVectors(self.factor[k:k + 1].copy(), self.direction[k:k + 1].copy(), config)

  def scaled(self, multiplier: float) -> SteeringVectors:
    """Every factor times `multiplier` (a factor grid: multiples of the trained factor)."""
    factor = (self.factor * np.float32(multiplier)).astype(np.float32)
    config = dict(self.config, factor=[float(x) for x in factor])
    return SteeringVectors(factor, self.direction, config)

  def check_model(self, cfg) -> None:
    """A one-line error unless these vectors fit the model (a ModelConfig): width and layer."""
    if self.width != cfg.hidden_size:
      raise ProsvError(f'the vectors have width {self.width} but the model has width '
                       f'{cfg.hidden_size}; use the model they were trained on'
                       + (f' ({self.model})' if self.model else ''))
    cfg.check_layer(self.steer_layer())

  def steer_layer(self) -> int:
    if self.layer is None:
      raise ProsvError('the steering config names no layer; set layer in its '
                       'steering_config.json or re-save the vectors with it')
    return int(self.layer)

  def generation_kwargs(self, concepts: Sequence[int | str],
                        multipliers: float | Sequence[float] = 1.0) -> dict:
    """Keyword arguments for sampling.generate_ids: row b is steered with concepts[b] (an index,
    concept_id or description) at multipliers[b] times its factor (one float: every row)."""
    rows = [self.index_of(c) for c in concepts]
    if isinstance(multipliers, (int, float, np.number)):
      multipliers = [float(multipliers)] * len(rows)
    if len(multipliers) != len(rows):
      raise ProsvError(f'{len(rows)} concepts but {len(multipliers)} multipliers; pass one '
                       'multiplier per row or a single number')
    # One (factor x multiplier, direction) pair per row, so one batch can mix concepts and grid
    # factors; row b then uses pair b.
    params = {'factor': jnp.asarray(self.factor[rows] * np.asarray(multipliers, np.float32)),
              'direction': jnp.asarray(self.direction[rows])}
    return steer.generation_kwargs(params, list(range(len(rows))), self.steer_layer(),
                                   self.parsed_positions, len(rows))

  def save(self, folder) -> str:
    """Writes the set with prosv_jax.artifacts.save_vectors; returns the folder."""
    from prosv_jax import artifacts  # pylint: disable=import-outside-toplevel (it imports us)
    return artifacts.save_vectors(os.fspath(folder), self)

  def index_of(self, concept: int | str) -> int:
    """Row index of a concept.

    An int is the row index itself. A str matches a concept_id (compared as text, so AxBench's
    integer ids are passed as e.g. '12'), then a description exactly, then ignoring case.
    """
    count = len(self.factor)
    if isinstance(concept, (int, np.integer)) and not isinstance(concept, bool):
      if 0 <= concept < count:
        return int(concept)
      raise ProsvError(f'concept index {concept} is out of range; this set has {count} '
                       f'concepts: {self._listing()}')
    if not isinstance(concept, str):
      raise ProsvError(f'concept must be an int index or a str concept_id/description, '
                       f'got {type(concept).__name__}; available: {self._listing()}')
    entries = self.concepts
    by_id = [i for i, c in enumerate(entries)
             if c.get('concept_id') is not None and str(c['concept_id']) == concept]
    by_text = [i for i, c in enumerate(entries) if c.get('description') == concept]
    folded = concept.strip().casefold()
    by_folded = [i for i, c in enumerate(entries)
                 if str(c.get('description') or '').strip().casefold() == folded]
    for matches in (by_id, by_text, by_folded):
      if len(matches) == 1:
        return matches[0]
      if len(matches) > 1:
        raise ProsvError(f'concept {concept!r} matches rows {matches}; pass the row index '
                         f'instead; available: {self._listing()}')
    raise ProsvError(f'no concept {concept!r} in this set; pass a row index, concept_id or '
                     f'description; available: {self._listing()}')

  def _listing(self) -> str:
    parts = []
    for i, c in enumerate(self.concepts[:_MAX_LISTED]):
      label = f'{i}'
      if c.get('concept_id') is not None:
        label += f' (id {c["concept_id"]})'
      if c.get('description'):
        label += f' {c["description"]!r}'
      parts.append(label)
    more = len(self.concepts) - _MAX_LISTED
    return ', '.join(parts) + (f', ... {more} more' if more > 0 else '')


def checked_tensors(steer_params) -> tuple[np.ndarray, np.ndarray]:
  """float32 numpy factor [C], direction [C, n], or a ProsvError naming the bad shape."""
  if not isinstance(steer_params, dict) or not {'factor', 'direction'} <= steer_params.keys():
    raise ProsvError("steering params must be a dict with 'factor' [C] and 'direction' [C, n]")
  factor = np.asarray(steer_params['factor']).astype(np.float32)
  direction = np.asarray(steer_params['direction']).astype(np.float32)
  if factor.ndim != 1 or direction.ndim != 2:
    raise ProsvError(f'steering params need factor [C] and direction [C, n], got factor '
                     f'{list(factor.shape)} and direction {list(direction.shape)}')
  if factor.shape[0] != direction.shape[0] or factor.shape[0] == 0 or direction.shape[1] == 0:
    raise ProsvError(f'factor {list(factor.shape)} and direction {list(direction.shape)} '
                     f'must share a concept count C >= 1 and have width n >= 1')
  if not (np.isfinite(factor).all() and np.isfinite(direction).all()):
    raise ProsvError('steering params hold NaN or inf (training diverged); lower the learning '
                     'rate or save an earlier checkpoint')
  return factor, direction


def checked_config(config: dict, count: int, width: int) -> dict:
  """A copy of `config` with width and concepts filled in and checked against the tensors."""
  if not isinstance(config, dict):
    raise ProsvError(f'steering config must be a dict, got {type(config).__name__}')
  cfg = dict(config)
  if cfg.get('width') is not None and cfg['width'] != width:
    raise ProsvError(f"config width {cfg['width']} does not match direction width {width}; "
                     f'save the vectors trained for this model')
  cfg['width'] = width
  layer = cfg.get('layer')
  if layer is not None and (isinstance(layer, bool) or not isinstance(layer, (int, np.integer))
                            or layer < 0):
    raise ProsvError(f'config layer must be a 0-indexed block number, got {layer!r}')
  if layer is not None:
    cfg['layer'] = int(layer)
  if cfg.get('positions') is not None:
    if not isinstance(cfg['positions'], str):
      raise ProsvError(f"config positions must be a spec string like 'p2+s2' or 'all', "
                       f"got {cfg['positions']!r}")
    steer.parse_positions(cfg['positions'])  # fails naming the valid forms
  cfg['concepts'] = _checked_concepts(cfg.get('concepts'), count)
  return cfg


def _checked_concepts(concepts, count: int) -> list[dict]:
  if concepts is None:
    return [{'index': i, 'concept_id': None, 'description': ''} for i in range(count)]
  if not isinstance(concepts, (list, tuple)) or len(concepts) != count:
    got = len(concepts) if isinstance(concepts, (list, tuple)) else type(concepts).__name__
    raise ProsvError(f'config concepts has {got} entries but the tensors hold {count} '
                     f'concepts; pass one {{index, concept_id, description}} per row')
  out = []
  for i, c in enumerate(concepts):
    if isinstance(c, str):
      c = {'description': c}
    if not isinstance(c, dict):
      raise ProsvError(f'config concepts[{i}] is {c!r}; pass a dict with index, concept_id '
                       f'and description')
    if c.get('index', i) != i:
      raise ProsvError(f"config concepts[{i}] has index {c['index']}; list concepts in row "
                       f'order')
    out.append({'index': i, 'concept_id': c.get('concept_id'),
                'description': c.get('description', ''),
                **{k: v for k, v in c.items() if k not in ('index', 'concept_id', 'description')}})
  return out
