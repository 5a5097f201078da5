"""Training on real AxBench Concept10 data with the real SmolLM2 weights."""

import pytest

from paths import CONCEPT10
from prosv_jax.train.config import method_config
from prosv_jax.train.job import train_and_export

pytestmark = pytest.mark.real_model


@pytest.fixture(scope='module')
def model(smollm):
  return smollm


@pytest.mark.skipif(not CONCEPT10.exists(), reason='AxBench Concept10 data not beside the repo')
@pytest.mark.parametrize('method', ['prosv', pytest.param('fssv', marks=pytest.mark.slow)])
def test_trained_vector_beats_unsteered_on_heldout_positives(tmp_path, model, method):
  # The paper's presets (PrOSV beta 4, s 8; FSSV beta 2) start with an edit far larger than the
  # residual stream and need their full 72 x 12 epochs: after 8 steps both were still worse
  # than the unsteered model on held-out positives (PrOSV 1.44, FSSV 3.01 against 1.17). A
  # small init (beta 0.5, s 1; the presets' LRs) trained on 32 distinct rows for one epoch
  # (8 steps) beats it. Responses cut to 32 tokens only to keep this test short.
  c = method_config(method)
  c.workdir = str(tmp_path / method)
  c.data.source = str(CONCEPT10)
  c.data.metadata = str(CONCEPT10 / 'metadata.jsonl')
  c.data.concepts = (4,)
  c.data.max_examples = 32
  c.data.max_response_tokens = 32
  c.steer.beta, c.steer.direction_scale = 0.5, 1.0
  c.train.batch_size = 4
  c.train.epochs = 1
  summary = train_and_export(c, model)
  assert summary['concepts'] == ['programming constructs related to data management and '
                                 'processing']  # from metadata.jsonl
  # Measured: PrOSV held-out 1.126, FSSV 1.142, unsteered 1.175 (concept 4's 36 positives).
  held, plain = summary['heldout_loss'][0], summary['heldout_loss_unsteered'][0]
  assert held < plain - 0.01, (held, plain)
  assert summary['train_loss'][0] < summary['train_loss_unsteered'][0] - 0.05, summary
