"""The main job: a PrOSV for one shipped demo concept on SmolLM2-135M, a few minutes on 2 CPUs.

  python launch/train.py --config=configs/demo.py
  python launch/train.py --config=configs/demo.py --config.data.concepts=2   # another concept

It keeps base_config's paper-faithful defaults: whole responses (the demo's are at most 88
SmolLM2 tokens, so no cut is needed for time) and the gemma-2-2b LRs moved to SmolLM2's
width by the width rule (factor LR 5, direction LR 0.08).
"""

from prosv_jax.train.config import base_config


def get_config():
  config = base_config()
  config.workdir = 'workdirs/demo'
  config.data.source = 'demo'  # prosv_jax/demo_data: 3 concepts x 40 examples
  config.data.concepts = (0,)
  config.train.epochs = 12  # 60 steps; 4 epochs (20 steps) did not yet bring the concept out
  config.train.batch_size = 8
  config.train.checkpoint_every = 10
  config.show.num_instructions = 4
  config.show.max_new_tokens = 48
  config.lock()
  return config
