"""The names of what a training job writes in its workdir (one place; readers import them).

  config.json      the resolved training config (a rerun with another config is refused)
  metrics.jsonl    one line per logged step
  checkpoints/     orbax checkpoints (params, optimizer state, step)
  vectors/         the exported SteeringVectors (prosv_jax.artifacts)
  summary.json     final figures and diagnostics, written when the run ends
  failed.json      why the run stopped (a sweep writes it, or a slot run for a diverged cell)
"""

import copy

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
CHECKPOINT_DIR = 'checkpoints'
VECTORS_DIR = 'vectors'
SUMMARY_FILE = 'summary.json'
FAILED_FILE = 'failed.json'


# Keys added to the config since some workdirs were written, at the value that means what those
# runs did: a config.json without them equals a config with them at that value.
_ADDED_KEYS = (('train', 'slots', ''), ('steer', 'init', 'width'), ('steer', 'residual_ref', 1.0))
# How to run, not what to train: the mesh (a run may resume on other devices), the attention
# kernel (the same math), the sample generations shown at the end; data.pack (the same losses,
# laid out otherwise) is dropped below.
_HOW_TO_RUN = ('workdir', 'show', 'mesh', 'attention')


def config_differences(old: dict, new: dict) -> list[str]:
  """The top-level sections in which two resolved configs (config.json dicts) differ in what
  they train; [] when a run of `old` is a run of `new`."""
  old, new = copy.deepcopy(old), copy.deepcopy(new)
  for c in (old, new):
    c.get('data', {}).pop('pack', None)
  for section, key, value in _ADDED_KEYS:
    for a, b in ((old, new), (new, old)):
      if key not in a.get(section, {}) and b.get(section, {}).get(key) == value:
        b[section].pop(key)
  return sorted(k for k in set(old) | set(new)
                if k not in _HOW_TO_RUN and old.get(k) != new.get(k))
