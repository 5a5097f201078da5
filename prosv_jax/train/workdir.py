"""The names of what a training job writes in its workdir (one place; readers import them).

  config.json      the resolved training config (a rerun with another config is refused)
  metrics.jsonl    one line per logged step
  checkpoints/     orbax checkpoints (params, optimizer state, step)
  vectors/         the exported SteeringVectors (prosv_jax.artifacts)
  summary.json     final figures and diagnostics, written when the run ends
  failed.json      why the run stopped (a sweep writes it, or a slot run for a diverged cell)
"""

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
CHECKPOINT_DIR = 'checkpoints'
VECTORS_DIR = 'vectors'
SUMMARY_FILE = 'summary.json'
FAILED_FILE = 'failed.json'
