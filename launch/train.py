"""Trains steering vectors as the config says, then shows unsteered and steered answers.

  python launch/train.py --config=configs/demo.py
  python launch/train.py --config=configs/prosv.py --config.data.concepts=0,1 \
      --config.workdir=workdirs/run1 --config.train.epochs=6

Rerunning the same command resumes from the workdir's last checkpoint.
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

from prosv_jax.errors import ProsvError
from prosv_jax.run import held_out_instructions, show_generations, train_and_export

CONFIG = config_flags.DEFINE_config_file('config', 'configs/demo.py', 'Training config file.',
                                         lock_config=True)
MAX_STEPS = flags.DEFINE_integer('max_steps', None, 'Stop (checkpointed) after this many steps.')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = CONFIG.value
  try:
    summary = train_and_export(config, max_steps=MAX_STEPS.value)
    if summary['steps'] < summary['total_steps']:
      print(f'stopped at step {summary["steps"]} of {summary["total_steps"]}; rerun the same '
            'command to resume')
      return
    show = config.show
    if show.num_instructions:
      from prosv_jax.artifacts import load_vectors
      from prosv_jax.models.load import load_model
      vectors = load_vectors(summary['artifacts']['vectors'])
      model = load_model(config.model, config.dtype)
      instructions = held_out_instructions(config, show.num_instructions)
      for k, (cid, desc) in enumerate(zip(summary['concept_ids'], summary['concepts'])):
        print(f'\n=== concept {cid}: {desc} (factor {vectors.factor[k]:.2f}, '
              f'{config.positions} at layer {config.layer}) ===')
        for q, plain, steered in show_generations(
            model, vectors.params(), k, config.layer, config.positions, instructions,
            show.max_new_tokens, temperature=show.temperature):
          print(f'\n> {q}\n  unsteered: {plain.strip()}\n  steered:   {steered.strip()}')
  except ProsvError as e:
    raise SystemExit(f'error: {e}') from None
  print('\nsummary:', json.dumps({k: summary[k] for k in (
      'steps', 'final_loss', 'factor', 'direction_norm', 'residual_rms', 'train_s',
      'steps_per_s', 'tokens_per_s')}))
  print(f'artifacts: {config.workdir}/ (config.json, metrics.jsonl, summary.json, checkpoints/, '
        f'vectors/, control_vector_*.gguf)')


if __name__ == '__main__':
  app.run(main)
