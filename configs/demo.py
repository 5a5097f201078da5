"""The main job: a PrOSV for one shipped demo concept on SmolLM2-135M, a few minutes on 2 CPUs.

  python launch/train.py --config=configs/demo.py
  python launch/train.py --config=configs/demo.py --config.data.concepts=2   # another concept

It keeps base_config's paper-faithful defaults: whole responses (the demo's are at most 88
SmolLM2 tokens, so no cut is needed for time) and the gemma-2-2b LRs moved to SmolLM2's
width by the width rule (factor LR 5, direction LR 0.08).
"""

from prosv_jax.train.config import demo_config


def get_config():
  config = demo_config()  # also prosv_jax.demo_config() in Python
  config.lock()
  return config
