"""Trains steering vectors as the config says, then shows unsteered and steered answers.

  python launch/train.py --config=configs/demo.py
  python launch/train.py --config=configs/prosv.py --config.data.concepts=0,1 \
      --config.workdir=workdirs/run1 --config.train.epochs=6

Rerunning the same command resumes from the workdir's last checkpoint.

Several devices: --config.mesh.data=-1 (or data x model = the device count). Several hosts:
run the same command on each (see prosv_jax.parallel.maybe_initialize_distributed for the
environment it reads); only process 0 prints and writes the workdir's logs and exports.
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

from prosv_jax import parallel
from prosv_jax.errors import ProsvError
from prosv_jax.eval.instructions import held_out_pool
from prosv_jax.sampling import show_generations
from prosv_jax.train.job import train

CONFIG = config_flags.DEFINE_config_file('config', 'configs/demo.py', 'Training config file.',
                                         lock_config=True)
MAX_STEPS = flags.DEFINE_integer('max_steps', None, 'Stop (checkpointed) after this many steps.')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = CONFIG.value
  try:
    parallel.maybe_initialize_distributed()  # before anything touches a device
    say = print if parallel.is_main_process() else lambda *args, **kwargs: None
    trained = train(config, max_steps=MAX_STEPS.value)
    summary = trained.summary
    if summary['steps'] < summary['total_steps']:
      say(f'stopped at step {summary["steps"]} of {summary["total_steps"]}; rerun the same '
          'command to resume')
      return
    show = config.show
    if show.num_instructions:
      # The model and vectors the job just used: no second load, no re-read of what it wrote.
      vectors = trained.vectors
      instructions = held_out_pool(config.data.source)[:show.num_instructions]
      for k, entry in enumerate(vectors.concepts):
        say(f'\n=== concept {entry["concept_id"]}: {entry["description"]} (factor '
            f'{vectors.factor[k]:.2f}, {vectors.positions} at layer {vectors.layer}) ===')
        for q, plain, steered in show_generations(
            trained.model, vectors, k, instructions, show.max_new_tokens,
            temperature=show.temperature):
          say(f'\n> {q}\n  unsteered: {plain.strip()}\n  steered:   {steered.strip()}')
  except ProsvError as e:
    raise SystemExit(f'error: {e}') from None
  say('\nsummary:', json.dumps({k: summary[k] for k in (
      'steps', 'final_loss', 'factor', 'direction_norm', 'residual_rms', 'train_s',
      'steps_per_s', 'tokens_per_s')}))
  say(f'artifacts: {config.workdir}/ (config.json, metrics.jsonl, summary.json, checkpoints/, '
      f'vectors/, control_vector_*.gguf)')


if __name__ == '__main__':
  app.run(main)
