"""The evaluation config, an ml_collections.ConfigDict; configs/eval.py starts from it."""

import ml_collections

from prosv_jax.errors import ProsvError
from prosv_jax.eval.steering import METHODS

CONCEPT10_2B_L10 = '../shared/data/axbench/concept10/prod_2b_l10_v1'


def eval_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = 'smollm2-135m-instruct'  # the frozen model the vectors were trained on
  c.dtype = 'float32'
  c.layer = 10  # used only when vectors are trained here
  c.workdir = 'workdirs/eval'  # generations.jsonl, ratings.jsonl, results.{json,md}, plots
  # The stem of the results files: another name (e.g. concepts2-9 with data.concepts=2,...,9)
  # reports a subset from the same stores without regenerating and keeps results.* as they are.
  c.results_name = 'results'

  c.data = ml_collections.ConfigDict()
  c.data.source = 'demo'  # AxBench folder/file (its held-out split feeds the instructions)
  c.data.metadata = ''  # metadata.jsonl with concept descriptions ('' = from the data)
  c.data.concepts = (0,)  # AxBench concept ids to evaluate

  # Any of: unsteered,prompting,fssv,fssv_grid,prosv,prosv_grid. A vector method may name the
  # training preset of its vectors: prosv:smollm2 is PrOSV trained with configs/prosv.py:smollm2
  # (in workdir/train_prosv-smollm2), evaluated beside the default presets' prosv; FSSV of a
  # preset is compared with PrOSV of that preset (else the default PrOSV, else the one PrOSV
  # evaluated), and the verdict answers for each such pair.
  c.methods = ','.join(METHODS)
  # The unsteered and prompting baselines' chat template (vector methods always use the one
  # their vectors were trained with): 'vectors' = that same one (the vector sets must agree),
  # '' = the tokenizer's own, a name from prosv_jax.chat.TEMPLATES, or Jinja text.
  c.chat_template = 'vectors'

  c.vectors = ml_collections.ConfigDict()
  c.vectors.prosv = ''  # folder of trained PrOSV vectors ('' = train them into workdir/train_prosv)
  c.vectors.fssv = ''  # folder of trained FSSV vectors ('' = train them into workdir/train_fssv)

  c.train = ml_collections.ConfigDict()  # only when vectors are trained here (paper presets)
  c.train.epochs = 12
  c.train.max_examples = 0  # per concept (0 = all 72 AxBench positives)

  c.instructions = ml_collections.ConfigDict()
  c.instructions.alpaca_eval = ''  # AlpacaEval JSON; '' = the dataset's held-out instructions
  c.instructions.count = 10  # per concept, drawn by AxBench's RandomState(concept_id) rule
  c.instructions.samples = 1  # generations per instruction

  c.generation = ml_collections.ConfigDict()
  c.generation.max_new_tokens = 128
  # As the paper's generate() calls ran (HF defaults there): temperature 1, top-k 50, top-p 1.
  c.generation.temperature = 1.0
  c.generation.top_k = 50  # 0 = no top-k cut
  c.generation.top_p = 1.0  # 1 = no nucleus cut
  c.generation.batch_size = 32
  c.generation.seed = 0

  c.grid = ml_collections.ConfigDict()
  c.grid.multipliers = (0.25, 0.5, 1.0, 2.0, 4.0)  # grid factor = this x trained factor

  c.judge = ml_collections.ConfigDict()
  c.judge.kind = 'offline'  # offline | api | lm
  c.judge.calibration = ''  # offline: thresholds JSON ('' = the packaged one for the fluency model)
  # offline: the model whose likelihood rates fluency ('' = c.model). A base model has no chat
  # template to score answers under, so judge its generations with an instruct model's
  # calibration, e.g. 'smollm2-135m-instruct' (the same judge then rates every model).
  c.judge.fluency_model = ''
  c.judge.batch_size = 16
  c.judge.api = ml_collections.ConfigDict()
  c.judge.api.base_url = 'https://api.openai.com/v1'
  c.judge.api.model = 'gpt-4o-mini'
  c.judge.api.api_key_env = 'OPENAI_API_KEY'
  c.judge.api.max_concurrency = 8
  c.judge.api.cache_path = ''  # '' = workdir/judge_cache.sqlite
  c.judge.lm = ml_collections.ConfigDict()
  c.judge.lm.model = ''  # any model spec prosv_jax loads ('' = c.model)
  # Also rate the first and the second half of each reported response's tokens (does the
  # edit fade?): twice more judge calls on the reported generations.
  c.judge.halves = True

  # Paired bootstrap intervals (scores.paired_bootstrap): concepts, then instructions.
  c.bootstrap = ml_collections.ConfigDict()
  c.bootstrap.draws = 2000
  c.bootstrap.seed = 0
  c.bootstrap.level = 0.95

  c.robustness = True  # also generate with instructions that ask to avoid the concept

  c.utility = ml_collections.ConfigDict()
  c.utility.negatives = 32  # instructions of AxBench negatives for the log-lik loss (0 = off)
  c.utility.own_answers = True  # score the model's own greedy answers (else the rows' outputs)
  c.utility.multiple_choice = ''  # tinyMMLU-style file (question, choices, answer)
  c.utility.gsm8k = ''  # GSM8K-style file (question, answer)
  c.utility.max_questions = 0  # cap per file (0 = all)
  return c


def concept10(c: ml_collections.ConfigDict) -> None:
  """The documented comparison: all 10 concepts of Concept10 2b_l10, 20 held-out instructions
  per concept, 2 generations each, every method with both factor grids."""
  c.data.source = CONCEPT10_2B_L10
  c.data.metadata = CONCEPT10_2B_L10 + '/metadata.jsonl'
  c.data.concepts = tuple(range(10))
  c.instructions.count = 20
  c.instructions.samples = 2
  c.methods = 'unsteered,prompting,fssv,fssv_grid,prosv,prosv_grid'
  c.workdir = 'workdirs/eval_concept10'


PRESETS = {'concept10': concept10}


def preset_config(name: str = '') -> ml_collections.ConfigDict:
  """eval_config() with a preset applied ('' = none); configs/eval.py:NAME selects one."""
  c = eval_config()
  if name:
    if name not in PRESETS:
      raise ProsvError(f'unknown eval preset {name!r}; use configs/eval.py:'
                       f'{" or :".join(PRESETS)}, or no suffix for the defaults')
    PRESETS[name](c)
  return c
