"""Training steering vectors, one module per role.

  config.py    the config (every key commented), method presets and named variants
  concepts.py  the concepts of a job: read, validated, tokenized (and SimPO's losers)
  optim.py     the factor/direction optimizer partitions and the width rule
  step.py      the jitted step: block-L bank in, losses over response tokens, update out
  trainer.py   the Trainer: model, concepts, bank, optimizer; batches as a function of the step
  job.py       the loop in a workdir: checkpoints, resume, metrics, summary, export

Calling the package runs a job: prosv_jax.train(config) is prosv_jax.train.job.train.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
  """Why a callable package: importing any prosv_jax.train.* binds this package to the name
  `train` on prosv_jax, which would hide a public function of that name; so the package itself
  is the function."""

  def __call__(self, config, model=None, max_steps=None):
    """Runs (or resumes) a training job; returns job.Trained (summary, vectors, model)."""
    from prosv_jax.train.job import train  # pylint: disable=import-outside-toplevel
    return train(config, model, max_steps)


sys.modules[__name__].__class__ = _CallablePackage
