"""The one training config, an ml_collections.ConfigDict, and the method presets.

configs/prosv.py and configs/fssv.py are thin: both call preset_config / preset_sweep here
with their method, so the variant table and the sweeps are declared once. Building a config
has no side effect (no file is fetched or assembled); model specs are resolved when the
model loads (prosv_jax.models.load.resolve).
"""

import dataclasses
import math

import ml_collections

from prosv_jax import parallel, steer
from prosv_jax.errors import ProsvError
from prosv_jax.train import slots

PAPER_GEMMA2_2B_L10 = dict(beta=4.0, factor_lr=10.0, direction_scale=8.0, direction_lr=0.04)
# The paper's FSSV row for gemma-2-2b L10 ('all' positions).
FSSV_GEMMA2_2B_L10 = dict(beta=2.0, factor_lr=1.0, direction_scale=1.0, direction_lr=0.04)
# gemma-2-2b's hidden width: the width the two rows above were tuned at.
GEMMA2_2B_WIDTH = 2304
METHODS = ('prosv', 'fssv')


def base_config() -> ml_collections.ConfigDict:
  """Paper defaults for PrOSV (gemma-2-2b L10 row of METHOD.md), on the embedded model.

  The LRs are the gemma-2-2b row's, stated at its width (optim.base_width = 2304), so on
  SmolLM2 (width 576) the width rule gives factor LR 10 * (576/2304)**0.5 = 5 and direction
  LR 0.04 * (576/2304)**-0.5 = 0.08. That is this project's reading of the paper's scaling
  argument; the authors set LRs per model by hand. The 'smollm2' variant keeps this model and
  layer but takes the study's rows, tuned on SmolLM2 itself (STUDY_SMOLLM2_PROSV).
  """
  c = ml_collections.ConfigDict()
  c.model = 'smollm2-135m-instruct'  # embedded name, gemma3-270m, .gguf, HF folder, hf:<repo>
  c.dtype = 'float32'  # frozen weights: float32 or bfloat16 (steering params are always fp32)
  # einsum, or dot_product: jax.nn.dot_product_attention (cuDNN's fused kernel on GPUs)
  c.attention = 'einsum'
  c.layer = 10  # steer the output of this block (0-indexed)
  c.positions = 'p2+s2'  # pN, sM, pN+sM, prompt or all (FSSV)
  c.chat_template = ''  # '' = the tokenizer's own; 'gemma' or Jinja text for a base model
  c.workdir = 'workdirs/prosv'  # config.json, metrics.jsonl, checkpoints/, vectors/, summary.json

  c.data = ml_collections.ConfigDict()
  c.data.source = 'demo'  # 'demo', an AxBench parquet/jsonl/folder, or hub:<dataset>
  c.data.metadata = ''  # metadata.jsonl with concept descriptions ('' = from the data)
  c.data.concepts = (0,)  # concept ids trained together in one compiled step
  c.data.max_examples = 0  # cap per concept (0 = all); concepts must end up equal in count
  c.data.max_prompt_tokens = 256  # longer prompts are an error, not silently cut
  # 0 = whole responses, as the paper's lang loss trains on them; N > 0 cuts each to N tokens.
  # SimPO cuts winners and its generated losers to SIMPO_MAX_RESPONSE_TOKENS when this is 0.
  c.data.max_response_tokens = 0
  c.data.bucket = True  # sort by length within windows of < half an epoch (less padding)
  c.data.pad_multiple = 16  # pad widths to a multiple of this (fewer compiled shapes)
  # Several examples per row (same losses, no compute on padding): 'on', 'off', or 'auto' =
  # on when it costs fewer FLOPs than padded rows, counting the dense attention of the wider
  # packed rows (e.g. eight concepts per step pack; one or two stay padded).
  c.data.pack = 'auto'

  c.steer = ml_collections.ConfigDict()
  c.steer.beta = PAPER_GEMMA2_2B_L10['beta']  # factor init size: factor0 = beta * sqrt(width)
  # What beta (and the factor LR) are measured in. 'width': factor0 = beta * sqrt(n), the
  # paper's rule. 'residual': factor0 = beta * sqrt(n) * r / residual_ref and the factor LR
  # times r / residual_ref, r the concept's block-L residual RMS (Trainer.residual_rms; ~6 on
  # SmolLM2 L10, ~258 on gemma3-270m L9), so one (beta, LR) gives the same edit-to-residual
  # ratio on every model: beta * s / sqrt(3) / residual_ref at init.
  c.steer.init = 'width'
  # 'residual' only: the residual RMS the numbers were tuned at (like optim.base_width for the
  # width rule): 1 = pure residual units; 6 carries a SmolLM2-tuned 'width' cell to any model.
  c.steer.residual_ref = 1.0
  c.steer.direction_scale = PAPER_GEMMA2_2B_L10['direction_scale']  # s: v ~ U(+-s/sqrt(width))

  c.optim = ml_collections.ConfigDict()
  c.optim.factor_lr = PAPER_GEMMA2_2B_L10['factor_lr']  # Adam LR of the factor (at base_width)
  c.optim.direction_lr = PAPER_GEMMA2_2B_L10['direction_lr']  # Adam LR of the direction
  c.optim.b1 = 0.9  # Adam beta1, both groups
  c.optim.b2 = 0.999  # Adam beta2, both groups
  c.optim.eps = 1e-8  # Adam epsilon, both groups
  c.optim.clip_direction = 1.0  # per-concept norm clip of the direction gradient (0 = off)
  # Width the LRs above were tuned at (gemma-2-2b's); at another width they follow the rule
  # below. 0 = use them as given at every width.
  c.optim.base_width = GEMMA2_2B_WIDTH
  c.optim.factor_lr_width_exponent = 0.5  # factor LR ~ (width / base_width) ** this
  c.optim.direction_lr_width_exponent = -0.5  # direction LR ~ (width / base_width) ** this

  c.train = ml_collections.ConfigDict()
  c.train.loss = 'lang'  # 'lang' (response cross-entropy) or 'simpo' (preference objective)
  c.train.epochs = 12  # passes over each concept's examples
  c.train.batch_size = 12  # rows per concept per step
  c.train.seed = 42  # init and data order (each concept derives its own from it)
  c.train.cache_hidden = True  # compute block-L outputs once and reuse them every epoch
  c.train.cache_budget_gb = 4.0  # ... unless they need more memory than this
  c.train.remat = False  # recompute blocks L+1.. in the backward pass: less memory, ~1/3 slower
  c.train.checkpoint_every = 20  # steps between orbax checkpoints (and at the end)
  c.train.log_every = 1  # steps between metrics.jsonl lines
  # Grid cells trained as slots of one step ('' = none: this config is the one cell), e.g.
  # 'steer.beta=1,2,4;optim.factor_lr=0.5,5,50' (a product) or a JSON list of cells; a cell
  # sets only beta, direction scale, LRs and seed, and equals its separate run
  # (prosv_jax.train.slots). Each cell writes to <workdir>/<cell name> unless it names one.
  c.train.slots = ''

  # Devices (prosv_jax.parallel): 1 x 1 is one device and no sharding; otherwise the product
  # must equal the device count of all processes. Not part of what is trained: a run may
  # resume on another mesh.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1  # batch rows + FSDP of the frozen weights over this many devices; -1 = all
  c.mesh.model = 1  # tensor parallel (heads, MLP width, vocab) over this many; -1 = all left
  c.mesh.shard_concepts = False  # split the steering params' concept axis over mesh.data too

  c.show = ml_collections.ConfigDict()
  c.show.num_instructions = 0  # after training, answer this many held-out instructions twice
  c.show.max_new_tokens = 64  # ... with this many new tokens, unsteered and steered
  c.show.temperature = 0.0  # ... greedy by default
  return c


def method_config(method: str) -> ml_collections.ConfigDict:
  """base_config() with the paper's settings of one method: 'prosv' (p2+s2) or 'fssv' (all)."""
  if method not in METHODS:
    raise ProsvError(f'unknown method {method!r}; use one of {", ".join(METHODS)}')
  c = base_config()
  if method == 'fssv':
    _set_row(c, FSSV_GEMMA2_2B_L10)
    c.positions = 'all'
    c.workdir = 'workdirs/fssv'
  return c


def demo_config() -> ml_collections.ConfigDict:
  """The main job (configs/demo.py): a PrOSV for shipped demo concept 0 on the embedded
  SmolLM2-135M, a few minutes on 2 CPUs, then 4 held-out answers unsteered and steered."""
  c = base_config()
  c.workdir = 'workdirs/demo'
  c.data.source = 'demo'  # prosv_jax/demo_data: 3 concepts x 40 examples
  c.data.concepts = (0,)
  c.train.epochs = 12  # 60 steps; 4 epochs (20 steps) did not yet bring the concept out
  c.train.batch_size = 8
  c.train.checkpoint_every = 10
  c.show.num_instructions = 4
  c.show.max_new_tokens = 48
  return c


# --- Named variants: `--config=configs/prosv.py:gemma2_9b` ------------------------------------


@dataclasses.dataclass(frozen=True)
class Variant:
  """A named setting: a model, its steered layer, and each method's hyperparameters.

  Attributes:
    model: a model spec load_model accepts (e.g. 'gemma3-270m', resolved when it loads).
    layer: the steered block (0-indexed).
    width: the model's hidden width n.
    prosv: beta, factor_lr, direction_scale, direction_lr, epochs, batch_size (and
      positions where it is not p2+s2).
    fssv: the same for 'all' positions.
    chat_template: for base models without one (prosv_jax.chat.TEMPLATES).
    lr_width: the width the rows' LRs are stated at (optim.base_width); 0 = `width`, i.e. a
      row tuned on this very model. The LRs follow the width rule (optim.*_width_exponent)
      on any model of another width.
  """
  model: str
  layer: int
  width: int
  prosv: dict
  fssv: dict
  chat_template: str = ''
  lr_width: int = 0

  @property
  def base_width(self) -> int:
    return self.lr_width or self.width


def _row(beta, factor_lr, direction_scale, direction_lr, epochs, batch_size,
         positions='') -> dict:
  row = dict(beta=float(beta), factor_lr=float(factor_lr),
             direction_scale=float(direction_scale), direction_lr=float(direction_lr),
             epochs=epochs, batch_size=batch_size)
  if positions:
    row['positions'] = positions
  return row


_SMALL_PROSV = _row(**PAPER_GEMMA2_2B_L10, epochs=12, batch_size=12)
_SMALL_FSSV = _row(**FSSV_GEMMA2_2B_L10, epochs=12, batch_size=12)
# SmolLM2-135M-Instruct L10's own rows, chosen by the study (docs/STUDY.md, launch/study.sh)
# on the held-out positives of Concept10 2b_l10 concepts 0 and 1 at the full budget, LRs
# stated at 2304 like the grids': PrOSV's (beta, factor LR) pick sits at beta 1/16 (the paper's
# beta 4 makes an edit 6-8x the residual that overwrites the instruction), its direction
# grid's at s 1 / direction LR 0.08 (all four (s, LR) cells within 0.01 of each other), at
# p2+s2 (its positions grid); FSSV's (beta, factor LR) pick is beta 1 / factor LR 1, at the
# paper's s 1 / direction LR 0.04, which FSSV's direction grid keeps (0.02 level, 0.08 worse).
STUDY_SMOLLM2_PROSV = _row(1 / 16, 10, 1, 0.08, 12, 12)
STUDY_SMOLLM2_FSSV = _row(1, 1, 1, 0.04, 12, 12)
# METHOD.md section 2 (the authors' final settings). gemma3-270m has no tuned row of its own:
# it takes gemma-2-2b's row stated at gemma-2-2b's width, so the width rule derives its LRs
# (the study's transfer check: on gemma3 concepts 0 and 1 it fits the held-out positives
# 0.005 nats better than SmolLM2's row carried over, an interval clear of zero).
# configs/{prosv,fssv}.py without a variant run those paper rows on SmolLM2 too (factor LR 5,
# direction LR 0.08 for PrOSV); the 'smollm2' variant runs the study's rows.
VARIANTS = {
    'smollm2': Variant('smollm2-135m-instruct', 10, 576, STUDY_SMOLLM2_PROSV,
                       STUDY_SMOLLM2_FSSV, lr_width=GEMMA2_2B_WIDTH),
    # 18 blocks; 9 is the middle, like the paper's L10 of 26 (2b) and L20 of 42 (9b).
    'gemma3_270m': Variant('gemma3-270m', 9, 640, _SMALL_PROSV, _SMALL_FSSV, 'gemma',
                           lr_width=GEMMA2_2B_WIDTH),
    'gemma2_2b': Variant('hf:google/gemma-2-2b-it', 10, GEMMA2_2B_WIDTH,
                         _row(4, 10, 8, 0.04, 12, 12), _row(2, 1, 1, 0.04, 12, 12)),
    'gemma2_9b': Variant('hf:google/gemma-2-9b-it', 20, 3584,
                         _row(2, 0.1, 8, 0.04, 12, 12), _row(2, 0.1, 8, 0.04, 18, 12)),
    'qwen25_32b': Variant('hf:Qwen/Qwen2.5-32B-Instruct', 32, 5120,
                          _row(2, 10, 8, 0.04, 12, 6), _row(1, 0.1, 1, 0.04, 12, 6)),
}


def _set_row(c, row: dict):
  c.steer.beta, c.steer.direction_scale = row['beta'], row['direction_scale']
  c.optim.factor_lr, c.optim.direction_lr = row['factor_lr'], row['direction_lr']
  if 'epochs' in row:
    c.train.epochs, c.train.batch_size = row['epochs'], row['batch_size']
  if 'positions' in row:
    c.positions = row['positions']


def variant_config(method: str, variant: str = '') -> ml_collections.ConfigDict:
  """method_config(method) set up for a named variant ('' = the default, method_config).

  Args:
    method: 'prosv' or 'fssv'.
    variant: a key of VARIANTS, or '' for method_config(method) unchanged (the paper's row on
      SmolLM2; 'smollm2' is the same model with the study's row).

  Returns:
    An unlocked config with the variant's model, layer, hyperparameters (positions too, where
    its row names them) and base width.
  """
  c = method_config(method)
  if not variant:
    return c
  if variant not in VARIANTS:
    raise ProsvError(f'unknown config variant {variant!r}; use one of: {", ".join(VARIANTS)} '
                     f'(e.g. --config=configs/{method}.py:gemma2_2b) or none for the default')
  v = VARIANTS[variant]
  c.model = v.model  # a spec; load_model resolves it (no download or assembly here)
  c.layer = v.layer
  c.chat_template = v.chat_template
  _set_row(c, getattr(v, method))
  c.optim.base_width = v.base_width
  c.workdir = f'workdirs/{method}_{variant}'
  return c


def preset_config(method: str, variant: str = '') -> ml_collections.ConfigDict:
  """configs/{method}.py's get_config: variant_config, locked so a misspelt override fails."""
  config = variant_config(method, variant)
  config.lock()
  return config


# Two factor LRs around each method's preset (PrOSV 10, FSSV 1), for the width sweeps.
_WIDTH_FACTOR_LRS = {'prosv': (1.0, 10.0), 'fssv': (0.1, 1.0)}
ALL_VARIANTS = ('smollm2', 'gemma3_270m', 'gemma2_2b', 'gemma2_9b', 'qwen25_32b')
SMALL_VARIANTS = ('smollm2', 'gemma3_270m')


def method_sweeps(method: str) -> dict:
  """The sweeps of configs/{method}.py, by name; each value builds its list of points."""
  from prosv_jax import sweep  # pylint: disable=import-outside-toplevel
  if method not in METHODS:
    raise ValueError(f'unknown method {method!r}; use one of {METHODS}')
  lrs = _WIDTH_FACTOR_LRS[method]
  return {
      # The paper's (beta, factor LR) grid, 30 runs: the heatmap of launch/plot_study.py.
      'beta_lr': sweep.paper_grid,
      # A CPU-sized corner of that grid: 3 betas x 5 factor LRs, 15 runs.
      'beta_lr_small': sweep.small_grid,
      # Width transfer: the config's LRs (stated at its optim.base_width) on every model, with
      # and without the width rule, at two factor LRs: curves of final loss over width.
      'width': lambda: sweep.product(sweep.models(*ALL_VARIANTS), sweep.transfer(),
                                     sweep.axis('optim.factor_lr', lrs)),
      # The same on the two packaged models only (runs on a CPU).
      'width_small': lambda: sweep.product(sweep.models(*SMALL_VARIANTS), sweep.transfer(),
                                           sweep.axis('optim.factor_lr', lrs)),
      # Does the best factor LR move with width? Both packaged models, the rule on, 4 LRs.
      'width_lr': lambda: sweep.product(sweep.models(*SMALL_VARIANTS), sweep.transfer('mup'),
                                        sweep.axis('optim.factor_lr', (0.1, 1.0, 10.0, 40.0))),
      # The direction's init scale and LR (METHOD.md: s in {1, 8}, direction LR {0.04, 0.08}).
      'direction': lambda: sweep.grid({'steer.direction_scale': sweep.PAPER_DIRECTION_SCALES,
                                       'optim.direction_lr': sweep.PAPER_DIRECTION_LRS}),
      # docs/STUDY.md, at the full budget, selected by held-out loss (launch/study.sh):
      # (beta, factor LR) wide enough to hold the optimum, 3 x 3, one beta row per --part=i/3;
      'study_beta_lr': lambda: sweep.grid({'steer.beta': STUDY_BETAS,
                                           'optim.factor_lr': STUDY_FACTOR_LRS}),
      # the row below it (beta 1/16 x the same factor LRs), run when a method's pick sits at
      # the grid's smallest beta, so the chosen cell is not just the grid's edge;
      'study_beta_lr_low': lambda: sweep.grid({'steer.beta': (STUDY_BETAS[0] / 4,),
                                               'optim.factor_lr': STUDY_FACTOR_LRS}),
      # (s, direction LR) at a method's chosen (beta, factor LR), given as --config overrides;
      'study_direction': lambda: sweep.grid({'steer.direction_scale': (1.0, 8.0),
                                             'optim.direction_lr': STUDY_DIRECTION_LRS}),
      # the column below it (direction LR halved), run when a method's pick sits at the
      # grid's smallest direction LR;
      'study_direction_low': lambda: sweep.grid({'steer.direction_scale': (1.0, 8.0),
                                                 'optim.direction_lr':
                                                 (STUDY_DIRECTION_LRS[0] / 2,)}),
      # beta alone at a chosen factor LR (a model's own optimum near a transferred cell):
      # SmolLM2's pick (1/16) and the two rows above it, x4 apart as in the grid.
      'study_beta': lambda: sweep.axis('steer.beta', (STUDY_BETAS[0] / 4,) + STUDY_BETAS[:2]),
      # prompt-only positions at a chosen cell (for FSSV: its cell applied prompt-only).
      'study_positions': lambda: sweep.axis('positions', STUDY_POSITIONS, alias=''),
  }


# The study's grids (issue: PrOSV without sacrifice): the ranges its authors suggest, wider
# than the paper's presets on both sides (PrOSV beta 4 / factor LR 10, FSSV 2 / 1).
STUDY_BETAS = (0.25, 1.0, 4.0)
STUDY_FACTOR_LRS = (0.1, 1.0, 10.0)
STUDY_DIRECTION_LRS = (0.04, 0.08, 0.16)
STUDY_POSITIONS = ('p2+s2', 's4', 'p4+s4', 'prompt')
# SmolLM2-135M-Instruct's block-10 residual RMS on Concept10 2b_l10's training rows (pooled
# over the 10 concepts, Trainer.residual_rms; docs/STUDY.md): the residual_ref that carries a
# cell tuned there under the width rule to another model under the residual rule.
SMOLLM2_L10_RMS = 6.0


def preset_sweep(method: str, name: str) -> list[dict]:
  """configs/{method}.py's get_sweep: the named sweep's points (dicts of config overrides)."""
  from prosv_jax import sweep  # pylint: disable=import-outside-toplevel
  return sweep.pick(method_sweeps(method), name)


LOSSES = ('lang', 'simpo')
INIT_RULES = ('width', 'residual')
PACK_MODES = ('auto', 'on', 'off')
# Adam moves every coordinate by about one LR per step, so an LR far above the factor's init
# scale (beta * sqrt(n), ~200 at the paper's width) throws the factor away on the first step.
# The paper's grids go up to 40; 1000 is 25x that and still refuses typos such as 1e30.
MAX_LR = 1000.0


def _float_leaves(config, prefix=''):
  """(dotted key, value) of every float in the config, nested dicts included."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _float_leaves(value, f'{prefix}{key}.')
    elif isinstance(value, float):
      yield f'{prefix}{key}', value
    elif isinstance(value, (tuple, list)):
      for item in value:
        if isinstance(item, float):
          yield f'{prefix}{key}', item


def _at_least(config, key: str, low: int, hint: str):
  value = config
  for part in key.split('.'):
    value = value[part]
  if isinstance(value, bool) or int(value) != value or int(value) < low:
    raise ProsvError(f'{key}={value!r}; {hint}')


def _check_numbers(config) -> None:
  for key, value in _float_leaves(config):
    if not math.isfinite(value):
      raise ProsvError(f'{key}={value}; give a finite number')
  for key in ('train.epochs', 'train.batch_size', 'train.log_every', 'train.checkpoint_every',
              'data.max_prompt_tokens', 'data.pad_multiple'):
    _at_least(config, key, 1, 'use a positive integer')
  _at_least(config, 'data.max_response_tokens', 0, 'use 0 (whole responses) or a positive cut')
  _at_least(config, 'data.max_examples', 0, 'use 0 (all) or a positive cap per concept')
  _at_least(config, 'train.seed', 0, 'use a seed >= 0')
  _at_least(config, 'layer', 0, 'use a block index >= 0 (0-indexed)')
  _at_least(config, 'show.num_instructions', 0, 'use 0 (no generations) or a count')
  _at_least(config, 'show.max_new_tokens', 1, 'use a positive token count')
  _at_least(config, 'optim.base_width', 0, 'use 0 (LRs as given) or the width they were tuned at')
  o = config.optim
  if not config.steer.beta > 0:
    raise ProsvError(f'steer.beta={config.steer.beta}; use beta > 0 (factor0 = beta * sqrt(width))')
  for name in ('factor_lr', 'direction_lr'):
    if not 0 < o[name] <= MAX_LR:
      raise ProsvError(f'optim.{name}={o[name]}; use a positive learning rate up to '
                       f'{MAX_LR:g} (the paper\'s grids go up to 40)')
  for name in ('b1', 'b2'):
    if not 0 <= o[name] < 1:
      raise ProsvError(f'optim.{name}={o[name]}; use an Adam beta in [0, 1), e.g. 0.9')
  if not o.eps > 0:
    raise ProsvError(f'optim.eps={o.eps}; use a small positive epsilon, e.g. 1e-8')
  if not o.clip_direction >= 0:
    raise ProsvError(f'optim.clip_direction={o.clip_direction}; use 0 (off) or a positive norm')
  if config.get('attention', 'einsum') not in ('einsum', 'dot_product'):
    raise ProsvError(f'attention={config.attention!r}; use einsum or dot_product '
                     '(jax.nn.dot_product_attention, fused on GPUs)')
  if not config.train.cache_budget_gb >= 0:
    raise ProsvError(f'train.cache_budget_gb={config.train.cache_budget_gb}; use 0 or more GiB')
  if not config.show.temperature >= 0:
    raise ProsvError(f'show.temperature={config.show.temperature}; use 0 (greedy) or more')


def check_config(config) -> None:
  """Value checks that ml_collections' type checks cannot do; one line each, before loading."""
  if config.train.loss not in LOSSES:
    raise ProsvError(f'train.loss={config.train.loss!r}; use one of {", ".join(LOSSES)}')
  if config.data.pack not in PACK_MODES:
    raise ProsvError(f'data.pack={config.data.pack!r}; use one of {", ".join(PACK_MODES)}')
  if config.steer.get('init', 'width') not in INIT_RULES:
    raise ProsvError(f'steer.init={config.steer.init!r}; use width (factor0 = beta * sqrt(n)) or '
                     f'residual (the same times the block-L residual RMS)')
  if not config.steer.get('residual_ref', 1.0) > 0:
    raise ProsvError(f'steer.residual_ref={config.steer.residual_ref}; use the positive '
                     f'residual RMS the numbers were tuned at (1 = pure residual units)')
  if config.dtype not in ('float32', 'bfloat16'):
    raise ProsvError(f'dtype={config.dtype!r}; use float32 or bfloat16')
  _check_numbers(config)
  steer.parse_positions(config.positions)
  if config.steer.direction_scale <= 0:
    raise ProsvError(f'steer.direction_scale={config.steer.direction_scale}; use s > 0')
  parallel.check_mesh_sizes(config.mesh.data, config.mesh.model)
  _check_cells(config)


def _check_cells(config) -> None:
  """Every cell of train.slots passes the checks its separate run would."""
  for cell in slots.cells(config):
    if cell.config is config:
      continue
    try:
      _check_numbers(cell.config)
      if cell.direction_scale <= 0:
        raise ProsvError(f'steer.direction_scale={cell.direction_scale}; use s > 0')
    except ProsvError as e:
      raise ProsvError(f'train.slots cell {cell.name}: {e}') from None
