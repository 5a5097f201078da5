"""Answers instructions with a frozen model (the embedded SmolLM2-135M-Instruct by default).

  python launch/generate.py --prompt="What is the capital of France?"
  python launch/generate.py --model=/path/to/hf_folder_or.gguf --temperature=1.0 --seed=3 \
      --prompt="Write a haiku about rain." --prompt="Name three rivers."
"""

import time

from absl import app, flags

from prosv_jax.errors import ProsvError
from prosv_jax.models.load import DEFAULT_MODEL, load_model
from prosv_jax.sampling import SamplingConfig, generate_text

FLAGS = flags.DEFINE_multi_string('prompt', ['What is the capital of France?'],
                                  'Instruction(s) to answer; repeat the flag for a batch.')
MODEL = flags.DEFINE_string('model', DEFAULT_MODEL, 'Embedded name, .gguf file, HF folder or '
                            'hf:<repo_id>.')
DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Weight dtype.')
MAX_NEW = flags.DEFINE_integer('max_new_tokens', 64, 'Tokens to generate per answer.')
TEMPERATURE = flags.DEFINE_float('temperature', 0.0, '0 is greedy.')
TOP_K = flags.DEFINE_integer('top_k', 0, '0 keeps every token.')
TOP_P = flags.DEFINE_float('top_p', 1.0, '1 keeps every token.')
SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')


def main(argv):
  del argv
  try:
    sampling = SamplingConfig(MAX_NEW.value, TEMPERATURE.value, TOP_K.value, TOP_P.value)
    start = time.time()
    model = load_model(MODEL.value, DTYPE.value)
    print(f'loaded {model.source} ({model.cfg.family}, {model.cfg.num_layers} layers, '
          f'width {model.cfg.hidden_size}) in {time.time() - start:.1f}s')
    start = time.time()
    answers = generate_text(model, FLAGS.value, sampling=sampling, seed=SEED.value)
  except ProsvError as e:
    raise SystemExit(f'error: {e}') from None
  for question, answer in zip(FLAGS.value, answers):
    print(f'\n> {question}\n{answer.strip()}')
  print(f'\n({len(answers)} answers in {time.time() - start:.1f}s, compile included)')


if __name__ == '__main__':
  app.run(main)
