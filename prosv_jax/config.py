"""The one training config, an ml_collections.ConfigDict; configs/*.py start from it."""

import ml_collections

PAPER_GEMMA2_2B_L10 = dict(beta=4.0, factor_lr=10.0, direction_scale=8.0, direction_lr=0.04)
# The paper's FSSV row for gemma-2-2b L10 ('all' positions).
FSSV_GEMMA2_2B_L10 = dict(beta=2.0, factor_lr=1.0, direction_scale=1.0, direction_lr=0.04)
METHODS = ('prosv', 'fssv')


def base_config() -> ml_collections.ConfigDict:
  """Paper defaults for PrOSV (gemma-2-2b L10 row of METHOD.md), on the embedded model."""
  c = ml_collections.ConfigDict()
  c.model = 'smollm2-135m-instruct'  # embedded name, .gguf file, HF folder or hf:<repo_id>
  c.dtype = 'float32'  # frozen weights: float32 or bfloat16 (steering params are always fp32)
  c.layer = 10  # steer the output of this block (0-indexed)
  c.positions = 'p2+s2'  # pN, sM, pN+sM, prompt or all (FSSV)
  c.workdir = 'workdirs/prosv'  # config.json, metrics.jsonl, checkpoints/, vectors/, summary.json

  c.data = ml_collections.ConfigDict()
  c.data.source = 'demo'  # 'demo', an AxBench parquet/jsonl/folder, or hub:<dataset>
  c.data.metadata = ''  # metadata.jsonl with concept descriptions ('' = from the data)
  c.data.concepts = (0,)  # concept ids trained together in one compiled step
  c.data.max_examples = 0  # cap per concept (0 = all); concepts must end up equal in count
  c.data.max_prompt_tokens = 256  # longer prompts are an error, not silently cut
  c.data.max_response_tokens = 128  # responses are truncated to this many tokens
  c.data.bucket = True  # batch rows of similar length together (less padding)
  c.data.pad_multiple = 16  # pad widths to a multiple of this (fewer compiled shapes)

  c.steer = ml_collections.ConfigDict()
  c.steer.beta = PAPER_GEMMA2_2B_L10['beta']  # factor init size: factor0 = beta * sqrt(width)
  c.steer.direction_scale = PAPER_GEMMA2_2B_L10['direction_scale']  # s: v ~ U(+-s/sqrt(width))

  c.optim = ml_collections.ConfigDict()
  c.optim.factor_lr = PAPER_GEMMA2_2B_L10['factor_lr']  # Adam LR of the factor (at base_width)
  c.optim.direction_lr = PAPER_GEMMA2_2B_L10['direction_lr']  # Adam LR of the direction
  c.optim.b1 = 0.9  # Adam beta1, both groups
  c.optim.b2 = 0.999  # Adam beta2, both groups
  c.optim.eps = 1e-8  # Adam epsilon, both groups
  c.optim.clip_direction = 1.0  # per-concept norm clip of the direction gradient (0 = off)
  c.optim.base_width = 0  # width the LRs were tuned at; 0 = use them as given
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

  c.show = ml_collections.ConfigDict()
  c.show.num_instructions = 0  # after training, answer this many held-out instructions twice
  c.show.max_new_tokens = 64  # ... with this many new tokens, unsteered and steered
  c.show.temperature = 0.0  # ... greedy by default
  return c


def method_config(method: str) -> ml_collections.ConfigDict:
  """base_config() with the paper's settings of one method: 'prosv' (p2+s2) or 'fssv' (all)."""
  if method not in METHODS:
    raise ValueError(f'unknown method {method!r}; use one of {METHODS}')
  c = base_config()
  if method == 'fssv':
    p = FSSV_GEMMA2_2B_L10
    c.positions = 'all'
    c.steer.beta, c.steer.direction_scale = p['beta'], p['direction_scale']
    c.optim.factor_lr, c.optim.direction_lr = p['factor_lr'], p['direction_lr']
    c.workdir = 'workdirs/fssv'
  return c
