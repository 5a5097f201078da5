"""The main job: a PrOSV for one shipped demo concept on SmolLM2-135M, a few minutes on 2 CPUs.

  python launch/train.py --config=configs/demo.py
  python launch/train.py --config=configs/demo.py --config.data.concepts=2   # another concept
"""

from prosv_jax.train.config import demo_config


def get_config():
  config = demo_config()  # also prosv_jax.demo_config() in Python
  config.lock()
  return config
