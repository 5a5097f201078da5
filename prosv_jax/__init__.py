"""prosv_jax: steering vectors (PrOSV prompt-only, FSSV full-sequence) on frozen LMs in JAX.

The public API, in the order of a session:

  load_model(spec='smollm2-135m-instruct', dtype='float32')  a frozen Model
  train_config(method='prosv', variant='')   the training config of a method (and named
                                             variant, e.g. 'gemma2_2b'); unlocked, to edit
  demo_config()                              the main job's config (configs/demo.py)
  train_vectors(config, model=None, max_steps=None)  runs (or resumes) the job; returns Trained:
                                             .summary, .vectors (SteeringVectors), .model
  load_vectors(folder)                       a SteeringVectors saved by training or .save()
  generate(model, instructions, vectors=None, concept=0, *, multiplier=1.0,
           sampling=SamplingConfig(), seed=0, chat_template=None)   answers, steered or not
  SteeringVectors, SamplingConfig, ProsvError

Names load on first use (PEP 562 __getattr__), so `import prosv_jax` imports no jax.
"""

import importlib

# public name -> (module, attribute in it)
_API = {
    'load_model': ('prosv_jax.models.load', 'load_model'),
    'train_config': ('prosv_jax.train.config', 'variant_config'),
    'demo_config': ('prosv_jax.train.config', 'demo_config'),
    # Not `train`: that name is the subpackage prosv_jax.train, bound on first import.
    'train_vectors': ('prosv_jax.train.job', 'train'),
    'load_vectors': ('prosv_jax.artifacts', 'load_vectors'),
    'generate': ('prosv_jax.sampling', 'generate'),
    'SteeringVectors': ('prosv_jax.vectors', 'SteeringVectors'),
    'SamplingConfig': ('prosv_jax.sampling', 'SamplingConfig'),
    'ProsvError': ('prosv_jax.errors', 'ProsvError'),
}

__all__ = list(_API)


def __getattr__(name):
  if name not in _API:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  module, attribute = _API[name]
  return getattr(importlib.import_module(module), attribute)


def __dir__():
  return sorted(set(globals()) | set(__all__))
