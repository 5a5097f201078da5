"""Trains steering vectors as the config says, then shows unsteered and steered answers.

  python launch/train.py --config=configs/demo.py
  python launch/train.py --config=configs/prosv.py --config.data.concepts=0,1 \
      --config.workdir=workdirs/run1 --config.train.epochs=6

Rerunning the same command resumes from the workdir's last checkpoint.

A (beta, LR) grid in one run, each cell written to <workdir>/<cell> as its own run would be
(prosv_jax.train.slots):

  python launch/train.py --config=configs/prosv.py --config.workdir=workdirs/grid \
      --config.train.slots='steer.beta=1,4,16;optim.factor_lr=1,10,40'

Several devices: --config.mesh.data=-1 (or data x model = the device count). Several hosts:
run the same command on each (see prosv_jax.parallel.maybe_initialize_distributed for the
environment it reads); only process 0 prints and writes the workdir's logs and exports.
"""

from prosv_jax import cli

cli.quiet()  # before anything imports transformers (its banner reads the environment)

from absl import app, flags

from prosv_jax import parallel
from prosv_jax.errors import ProsvError
from prosv_jax.eval.instructions import held_out_pool
from prosv_jax.sampling import show_generations
from prosv_jax.train.job import train

CONFIG = cli.define_config('config', 'configs/demo.py', 'Training config file.')
MAX_STEPS = flags.DEFINE_integer('max_steps', None, 'Stop (checkpointed) after this many steps.')


def _numbers(values, digits: int = 3) -> str:
  """One number, or one per concept, as plain text (not JSON lists)."""
  if values is None:
    return 'n/a'
  values = values if isinstance(values, (list, tuple)) else [values]
  return ', '.join(f'{float(v):.{digits}g}' for v in values)


def summary_lines(summary: dict) -> list[str]:
  """The summary as numbers with their meaning; summary.json keeps every field."""
  lines = ['', f'summary ({summary["steps"]} of {summary["total_steps"]} steps, concepts '
           f'{", ".join(map(str, summary["concept_ids"]))}):',
           # The progress bar shows the last batch's loss; this averages the whole last epoch.
           f'  final loss (mean over the last epoch): {_numbers(summary["final_loss"])}',
           f'  factor: {_numbers(summary["factor"])}',
           f'  direction norm: {_numbers(summary["direction_norm"])}',
           f'  residual RMS at layer {summary["layer"]}: {_numbers(summary["residual_rms"])}',
           f'  training time: {summary["train_s"]:.1f} s (setup {summary["setup_s"]:.1f} s)']
  if summary.get('train_loss') is not None:  # the diagnostics (prosv_jax.train.job)
    lines += [f'  loss on the training rows, trained / unsteered: '
              f'{_numbers(summary["train_loss"])} / {_numbers(summary["train_loss_unsteered"])}',
              f'  loss on held-out positives, trained / unsteered: '
              f'{_numbers(summary["heldout_loss"])} / '
              f'{_numbers(summary["heldout_loss_unsteered"])}',
              f'  direction: cosine to its init {_numbers(summary["direction_cosine_to_init"])}, '
              f'moved {_numbers(summary["direction_moved"])} x its initial norm',
              f'  edit RMS / residual RMS at the steered positions: '
              f'{_numbers(summary["edit_rms_ratio"])}']
  if summary.get('steps_per_s'):
    lines.append(f'  throughput: {summary["steps_per_s"]:.3g} steps/s, '
                 f'{summary["tokens_per_s"]:.0f} tokens/s')
  if summary.get('slots_per_token'):  # padding's share of the compute (data.pack)
    layout = 'packed rows' if summary.get('packed') else 'right-padded rows'
    lines.append(f'  token slots per real token: {summary["slots_per_token"]:.3g} ({layout})')
  return lines


def grid_lines(trained) -> list[str]:
  """A slot run's cells, each with its summary (or why it failed) and where it is."""
  lines = []
  for cell, entry in zip(trained.cells, trained.summary['cells']):
    lines += ['', f'=== cell {entry["name"]}: {entry["status"]}, in {entry["workdir"]} ===']
    if entry['status'] == 'failed':
      lines.append(f'  {entry["error"]}')
    else:
      lines += summary_lines(cell.summary)[1:]
  if trained.summary['steps'] < trained.summary['total_steps']:
    lines.append(f'\nstopped at step {trained.summary["steps"]} of '
                 f'{trained.summary["total_steps"]}; rerun the same command to resume')
  return lines


def main(argv):
  del argv
  cli.set_log_levels()  # orbax logs every save at INFO; --verbose brings it back
  config = cli.config_value(CONFIG)
  try:
    parallel.maybe_initialize_distributed()  # before anything touches a device
    say = print if parallel.is_main_process() else lambda *args, **kwargs: None
    trained = train(config, max_steps=MAX_STEPS.value)
    summary = trained.summary
    if trained.cells is not None:  # train.slots: each cell reports like a separate run
      for line in grid_lines(trained):
        say(line)
      return
    if summary['steps'] < summary['total_steps']:
      say(f'stopped at step {summary["steps"]} of {summary["total_steps"]}; rerun the same '
          'command to resume')
      return
    show = config.show
    if summary.get('already_finished'):  # no model load: see its answers with generate.py
      say(f'to see its answers: python launch/generate.py --vectors={config.workdir}/vectors')
    elif show.num_instructions:
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
  for line in summary_lines(summary):
    say(line)
  say(f'artifacts: {config.workdir}/ (config.json, metrics.jsonl, summary.json, checkpoints/, '
      f'vectors/, control_vector_*.gguf)')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
