"""Answers instructions with a frozen model, optionally steered by exported vectors.

  python launch/generate.py --prompt="What is the capital of France?"
  python launch/generate.py --vectors=workdirs/demo/vectors --prompt="How do I stay focused?"
  python launch/generate.py --vectors=workdirs/run1/vectors --concept=2 --temperature=1.0 \
      --seed=3 --prompt="Write a haiku about rain." --prompt="Name three rivers."

With --vectors it prints the unsteered and the steered answer to each instruction; the model,
layer and positions come from the vectors' steering_config.json unless --model overrides it.
"""

import time

from prosv_jax import cli

cli.quiet()  # before anything imports transformers (its banner reads the environment)

from absl import app, flags
from tqdm import tqdm

from prosv_jax.errors import ProsvError
from prosv_jax.models.load import DEFAULT_MODEL, check_spec, load_model
from prosv_jax.sampling import SamplingConfig, generate

PROMPTS = flags.DEFINE_multi_string('prompt', ['What is the capital of France?'],
                                    'Instruction(s) to answer; repeat the flag for a batch.')
MODEL = flags.DEFINE_string('model', None, 'Embedded name, .gguf file, HF folder or '
                            f'hf:<repo_id> (default: the vectors\' model, else {DEFAULT_MODEL}).')
VECTORS = flags.DEFINE_string('vectors', None, 'Folder of steering_vectors.safetensors.')
CONCEPT = flags.DEFINE_string('concept', None, 'Concept to steer with: its AxBench id or its '
                              'description (default: the first in the file).')
DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Weight dtype.')
MAX_NEW = flags.DEFINE_integer('max_new_tokens', 64, 'Tokens to generate per answer.')
TEMPERATURE = flags.DEFINE_float('temperature', 0.0, '0 is greedy.')
TOP_K = flags.DEFINE_integer('top_k', 0, '0 keeps every token.')
TOP_P = flags.DEFINE_float('top_p', 1.0, '1 keeps every token.')
SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')


def main(argv):
  del argv
  cli.set_log_levels()  # jax's INFO line about libtpu; --verbose brings it back
  try:
    sampling = SamplingConfig(MAX_NEW.value, TEMPERATURE.value, TOP_K.value, TOP_P.value)
    vectors = None
    if VECTORS.value:
      from prosv_jax.artifacts import load_vectors
      vectors = load_vectors(VECTORS.value)
    spec = MODEL.value or (vectors.model if vectors and vectors.model else DEFAULT_MODEL)
    check_spec(spec)  # a missing or broken file fails before the slow load
    start = time.time()
    print(f'loading {spec} ...', flush=True)
    model = load_model(spec, DTYPE.value)
    print(f'loaded {model.source} ({model.cfg.family}, {model.cfg.num_layers} layers, '
          f'width {model.cfg.hidden_size}) in {time.time() - start:.1f}s')
    start = time.time()
    if vectors is None:
      with tqdm(total=1, desc='generating', unit='batch', leave=False) as bar:
        answers = generate(model, PROMPTS.value, sampling=sampling, seed=SEED.value)
        bar.update()
      for question, answer in zip(PROMPTS.value, answers):
        print(f'\n> {question}\n{answer.strip()}')
    else:
      from prosv_jax.sampling import show_generations
      vectors.check_model(model.cfg)
      k = vectors.index_of(0 if CONCEPT.value is None else CONCEPT.value)
      print(f'steering with concept {k} ({vectors.concepts[k].get("description", "")}), '
            f'factor {vectors.factor[k]:.2f}, {vectors.positions} at layer {vectors.layer}')
      # The vectors carry their training chat template; show_generations applies it.
      for q, plain, steered in show_generations(model, vectors, k, PROMPTS.value, MAX_NEW.value,
                                                SEED.value, TEMPERATURE.value):
        print(f'\n> {q}\n  unsteered: {plain.strip()}\n  steered:   {steered.strip()}')
  except ProsvError as e:
    raise SystemExit(f'error: {e}') from None
  print(f'\n({time.time() - start:.1f}s, compile included)')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
