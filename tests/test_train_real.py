"""Training on real AxBench Concept10 data with the real SmolLM2 weights."""

import os

import pytest

from paths import CONCEPT10
from prosv_jax.train import step as train_step
from prosv_jax.train.config import base_config
from prosv_jax.train.job import train_and_export
from prosv_jax.artifacts import load_vectors
from prosv_jax.train.trainer import Trainer

pytestmark = pytest.mark.real_model


@pytest.fixture(scope='module')
def model(smollm):
  return smollm


@pytest.mark.skipif(not CONCEPT10.exists(), reason='AxBench Concept10 data not beside the repo')
@pytest.mark.parametrize('positions', ['p2+s2', 'all'])
def test_loss_falls_on_axbench_concept10(tmp_path, model, positions):
  c = base_config()
  c.workdir = str(tmp_path / positions)
  c.positions = positions
  c.data.source = str(CONCEPT10)
  c.data.metadata = str(CONCEPT10 / 'metadata.jsonl')
  c.data.concepts = (4,)
  c.data.max_examples = 8
  c.data.max_response_tokens = 32
  c.train.batch_size = 4
  c.train.epochs = 4
  trainer = Trainer(c, model)
  batch = trainer.make_batch(list(range(8)))
  batch.pop('rows')

  def loss(params):
    return float(train_step.loss_fn(params, model.params, model.cfg, c.layer, trainer.positions,
                                    'lang', 1, batch, None, trainer.response_width(batch))[0])

  before = loss(trainer.init_state()['steer'])
  summary = train_and_export(c, model)
  after = loss(load_vectors(os.path.join(c.workdir, 'vectors')).params())
  assert summary['concepts'] == ['programming constructs related to data management and '
                                 'processing']  # from metadata.jsonl
  assert after < before - 0.1, (before, after)
