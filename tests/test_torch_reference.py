"""launch/torch_reference.py: the PyTorch training the benchmark compares against."""

import math
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'launch'))
import torch_reference as ref  # noqa: E402
from paths import CONCEPT10, SMOLLM  # noqa: E402

WIDTH, LAYER, VOCAB = 64, 1, 128
# Row 1's prompt (3 tokens) is shorter than N + M = 4: its first and last tokens overlap.
PROMPT_LEN = np.array([6, 3, 5], np.int32)
LENGTH = np.array([11, 9, 5], np.int32)  # row 2: prompt only, no response
T = 12


@pytest.fixture(scope='module')
def model():
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      hidden_size=WIDTH, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, initializer_range=0.1,
      tie_word_embeddings=False)
  config._attn_implementation = ref.ATTN_IMPLEMENTATION
  return transformers.LlamaForCausalLM(config).float().eval().requires_grad_(False)


def make_batch(rng, skew=False):
  tokens = rng.integers(3, VOCAB, size=(len(LENGTH), T)).astype(np.int32)
  if skew:  # responses from a few tokens: something a steering vector can learn
    response = rng.choice([7, 11, 13], size=tokens.shape)
    t = np.arange(T)[None]
    tokens = np.where(t >= PROMPT_LEN[:, None], response, tokens).astype(np.int32)
  tokens[np.arange(T)[None] >= LENGTH[:, None]] = 0  # pad id is irrelevant: masks come from lengths
  return {'tokens': tokens, 'prompt_len': PROMPT_LEN.copy(), 'length': LENGTH.copy()}


def train(model, batches, **overrides):
  kw = dict(layer=LAYER, width=WIDTH, beta=0.5, factor_lr=0.0, direction_scale=1.0, direction_lr=0.0,
            total_steps=len(batches))
  return ref.train_reference(model, batches, **{**kw, **overrides})


def steered_loss(model, batches, factor, direction, **mask_kw):
  with ref.steering(model, LAYER, torch.tensor(factor), torch.as_tensor(direction)) as hook, torch.no_grad():
    losses = []
    for b in batches:
      inputs = ref.batch_inputs(b)
      hook.mask = torch.from_numpy(ref.steer_mask(b['prompt_len'], b['length'], T, **mask_kw))
      losses.append(model(**inputs).loss.item())
  return float(np.mean(losses))


def test_steer_mask_prosv_and_full_sequence():
  got = ref.steer_mask(PROMPT_LEN, LENGTH, T, positions=(2, 2))
  want = np.zeros((3, T), bool)
  want[0, [0, 1, 4, 5]] = True
  want[1, [0, 1, 2]] = True  # min with the row's own prompt length
  want[2, [0, 1, 3, 4]] = True
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(ref.steer_mask(PROMPT_LEN, LENGTH, T, positions=(0, 1)),
                                np.arange(T)[None] == PROMPT_LEN[:, None] - 1)
  np.testing.assert_array_equal(ref.steer_mask(PROMPT_LEN, LENGTH, T, full_sequence=True),
                                np.arange(T)[None] < LENGTH[:, None])


def test_labels_are_response_tokens_only():
  batch = make_batch(np.random.default_rng(0))
  inputs = ref.batch_inputs(batch)
  t = np.arange(T)[None]
  response = (t >= PROMPT_LEN[:, None]) & (t < LENGTH[:, None])
  labels = inputs['labels'].numpy()
  np.testing.assert_array_equal(labels, np.where(response, batch['tokens'], -100))
  np.testing.assert_array_equal(inputs['attention_mask'].numpy(), t < LENGTH[:, None])
  np.testing.assert_array_equal(inputs['position_ids'].numpy(), np.broadcast_to(t, (3, T)))


@pytest.mark.parametrize('mask_kw', [dict(positions=(2, 2)), dict(full_sequence=True)])
def test_hook_edits_exactly_the_masked_positions(model, mask_kw):
  batch = make_batch(np.random.default_rng(1))
  inputs = ref.batch_inputs(batch)
  del inputs['labels']
  with torch.no_grad():
    plain = model(**inputs, output_hidden_states=True).hidden_states
  mask = ref.steer_mask(batch['prompt_len'], batch['length'], T, **mask_kw)
  factor, direction = torch.tensor(3.0), torch.randn(WIDTH)
  with ref.steering(model, LAYER, factor, direction) as hook, torch.no_grad():
    hook.mask = torch.from_numpy(mask)
    steered = model(**inputs, output_hidden_states=True).hidden_states
  # hidden_states[0] is the embedding output, so block L's output is [L + 1].
  torch.testing.assert_close(steered[LAYER], plain[LAYER], rtol=0, atol=0)
  diff = (steered[LAYER + 1] - plain[LAYER + 1]).numpy()
  np.testing.assert_array_equal(np.any(diff != 0, axis=-1), mask)
  edit = (factor * direction).numpy()
  np.testing.assert_allclose(diff[mask], np.broadcast_to(edit, (mask.sum(), WIDTH)), atol=1e-5)


def test_hook_handles_tuple_outputs():
  h = torch.zeros(1, 2, 4)
  hook = ref._SteerHook(torch.tensor(2.0), torch.ones(4))
  hook.mask = torch.tensor([[False, True]])
  out = hook(None, (), (h, 'extra'))
  assert isinstance(out, tuple) and out[1] == 'extra'
  np.testing.assert_array_equal(out[0].numpy(), [[[0] * 4, [2] * 4]])


def test_factor_zero_gives_the_unsteered_loss(model):
  batch = make_batch(np.random.default_rng(2))
  inputs = ref.batch_inputs(batch)
  with torch.no_grad():
    out = model(**inputs)
  result = train(model, [batch], beta=0.0, direction_scale=5.0)
  assert result['losses'][0] == pytest.approx(out.loss.item(), abs=0, rel=0)
  # and that loss is the token mean over response tokens, computed by hand
  logp = torch.log_softmax(out.logits, -1).numpy()
  nll = [-logp[b, t - 1, batch['tokens'][b, t]]
         for b in range(3) for t in range(PROMPT_LEN[b], LENGTH[b])]
  assert result['losses'][0] == pytest.approx(float(np.mean(nll)), rel=1e-5)
  assert result['tokens'] == int(LENGTH.sum())


def test_init_and_zero_lr_keep_params(model):
  a = train(model, [make_batch(np.random.default_rng(3))], beta=0.25, direction_scale=2.0, seed=7)
  b = train(model, [make_batch(np.random.default_rng(3))], beta=0.25, direction_scale=2.0, seed=7)
  assert a['factor'] == pytest.approx(0.25 * math.sqrt(WIDTH))
  bound = 2.0 / math.sqrt(WIDTH)
  assert a['direction'].shape == (WIDTH,) and np.all(np.abs(a['direction']) <= bound)
  assert np.abs(a['direction']).max() > bound / 2  # uniform over the range, not a tiny init
  np.testing.assert_array_equal(a['direction'], b['direction'])  # seeded


@pytest.mark.parametrize('mask_kw', [dict(positions=(2, 2)), dict(full_sequence=True)])
def test_training_lowers_the_loss(model, mask_kw):
  rng = np.random.default_rng(4)
  batches = [make_batch(rng, skew=True) for _ in range(3)] * 4
  init = train(model, batches[:1], beta=0.1, seed=0, **mask_kw)
  before = steered_loss(model, batches[:3], init['factor'], init['direction'], **mask_kw)
  result = train(model, batches, beta=0.1, seed=0, factor_lr=0.05, direction_lr=0.05, **mask_kw)
  after = steered_loss(model, batches[:3], result['factor'], result['direction'], **mask_kw)
  assert result['steps'] == 12 and len(result['losses']) == 12 and result['wall_s'] > 0
  first = steered_loss(model, batches[:1], init['factor'], init['direction'], **mask_kw)
  assert result['losses'][0] == pytest.approx(first, rel=1e-5)
  assert after < before - 0.05, (before, after)


def test_clipping_applies_to_the_direction_only(model):
  # beta 5 with a small direction: the direction's gradient norm is ~20, the factor's ~3e-4.
  batch = make_batch(np.random.default_rng(5))
  kw = dict(beta=5.0, direction_scale=0.01, full_sequence=True)
  init = train(model, [batch], **kw)
  factor = torch.tensor(init['factor'], requires_grad=True)
  direction = torch.tensor(init['direction'], requires_grad=True)
  with ref.steering(model, LAYER, factor, direction) as hook:
    hook.mask = torch.from_numpy(ref.steer_mask(PROMPT_LEN, LENGTH, T, full_sequence=True))
    model(**ref.batch_inputs(batch)).loss.backward()
  assert direction.grad.norm() > 5  # far above the clip norm
  from torch.optim.optimizer import register_optimizer_step_pre_hook
  seen = []

  def record(optimizer, args, kwargs):
    del args, kwargs
    seen.append([p.grad.clone() for group in optimizer.param_groups for p in group['params']])

  handle = register_optimizer_step_pre_hook(record)
  try:
    train(model, [batch, batch], factor_lr=1e-3, direction_lr=1e-3, **kw)
  finally:
    handle.remove()
  assert len(seen) == 2
  factor_grad, direction_grad = seen[0]
  torch.testing.assert_close(direction_grad, direction.grad / direction.grad.norm(), rtol=1e-4, atol=1e-7)
  torch.testing.assert_close(factor_grad, factor.grad, rtol=1e-4, atol=0)  # not scaled down with it


def test_bad_arguments_raise(model):
  batch = make_batch(np.random.default_rng(6))
  with pytest.raises(ValueError, match='total_steps'):
    train(model, [batch], total_steps=2)
  with pytest.raises(ValueError, match='width'):
    train(model, [batch], width=WIDTH + 1)
  with pytest.raises(ValueError, match='out of range'):
    train(model, [batch], layer=3)


# --- the real SmolLM2 GGUF against our JAX model ------------------------------


@pytest.mark.real_model
def test_gguf_model_matches_jax_logits_plain_and_steered(smollm):
  path = SMOLLM
  jax = pytest.importorskip('jax')
  import jax.numpy as jnp
  from prosv_jax.models import transformer

  torch_model = ref.torch_model_from_gguf(path)
  assert not torch_model.training and torch_model.config._attn_implementation == ref.ATTN_IMPLEMENTATION
  assert all(not p.requires_grad and p.dtype == torch.float32 for p in torch_model.parameters())
  assert torch_model.lm_head.weight.data_ptr() == torch_model.model.embed_tokens.weight.data_ptr()
  m = smollm

  ids = m.tokenizer.encode('The capital of France is Paris, and the capital of Italy is',
                           add_special_tokens=False)
  t = len(ids)
  lengths = np.array([t, t - 5], np.int32)
  tokens = np.full((2, t), 2, np.int32)
  tokens[0], tokens[1, :t - 5] = ids, ids[5:]
  batch = {'tokens': tokens, 'prompt_len': np.array([6, 4], np.int32), 'length': lengths}
  valid_np = np.arange(t)[None] < lengths[:, None]
  pos, valid = transformer.positions_from_lengths(jnp.asarray(lengths), t, left_padded=False)

  inputs = ref.batch_inputs(batch)
  del inputs['labels']
  with torch.no_grad():
    torch_logits = torch_model(**inputs).logits.numpy()
  jax_logits = np.asarray(transformer.forward(m.params, m.cfg, jnp.asarray(tokens), pos, valid).logits)
  np.testing.assert_allclose(torch_logits[valid_np], jax_logits[valid_np], atol=1e-3, rtol=0)

  # The same edit through the torch hook and through our model's steer seam.
  layer, factor = 10, 4.0
  direction = np.random.default_rng(0).uniform(-1, 1, 576).astype(np.float32) / math.sqrt(576)
  mask = ref.steer_mask(batch['prompt_len'], lengths, t, positions=(2, 2))
  with ref.steering(torch_model, layer, torch.tensor(factor), torch.from_numpy(direction)) as hook:
    hook.mask = torch.from_numpy(mask)
    with torch.no_grad():
      torch_steered = torch_model(**inputs).logits.numpy()
  steer = lambda h: h + factor * jnp.asarray(direction)
  jax_steered = np.asarray(transformer.forward(m.params, m.cfg, jnp.asarray(tokens), pos, valid, steer=steer,
                                               steer_mask=jnp.asarray(mask), steer_layer=layer).logits)
  assert np.abs(torch_steered - torch_logits)[valid_np].max() > 0.1  # the edit matters
  np.testing.assert_allclose(torch_steered[valid_np], jax_steered[valid_np], atol=1e-3, rtol=0)


# --- step-by-step equivalence: our Trainer against the PyTorch recipe -------------------------


def _traces(jax_model, torch_model, config, steps):
  """(ours, theirs): factors [steps] and directions [steps, n] after every step, same init and
  batches; theirs from train_reference with the LRs our optimizer uses after the width rule."""
  from prosv_jax import steer
  from prosv_jax.train import optim
  from prosv_jax.train.trainer import Trainer
  trainer = Trainer(config, jax_model)
  assert trainer.total_steps == steps
  state = trainer.init_state()
  # Copies: the jitted step donates the state.
  init = (float(state['steer']['factor'][0]), np.array(state['steer']['direction'][0]))
  batches = [trainer.host_batch(trainer.batch_rows(s)) for s in range(steps)]
  factors, directions = [], []
  for s in range(steps):
    state, _, _ = trainer.step(state, s)
    factors.append(float(state['steer']['factor'][0]))
    directions.append(np.array(state['steer']['direction'][0]))
  factor_lr, direction_lr = optim.scaled_lrs(config.optim, trainer.width)
  p = steer.parse_positions(config.positions)
  full = config.positions == 'all'
  theirs = ref.train_reference(
      torch_model, batches, layer=trainer.layer, width=trainer.width, beta=config.steer.beta,
      factor_lr=factor_lr, direction_scale=config.steer.direction_scale,
      direction_lr=direction_lr, total_steps=steps, positions=(p.first, p.last),
      full_sequence=full, init=init)
  return (np.array(factors), np.stack(directions)), (theirs['factors'], theirs['directions'])


def _relative_errors(ours, theirs):
  """Per step: |f - f'| / |f'| and ||v - v'|| / ||v'||."""
  (f, v), (tf, tv) = ours, theirs
  return (np.abs(f - tf) / np.abs(tf),
          np.linalg.norm(v - tv, axis=-1) / np.linalg.norm(tv, axis=-1))


def _assert_equivalent(ours, theirs, first_tol=2e-5, tol=5e-4):
  # float32 rounding differences compound through Adam's normalised steps, so the bound is tight
  # on step 1 and looser over 10 steps. Measured (direction, relative): step 1 2.7e-6; step 10
  # 6.6e-5 on the dev machine and 1.3e-4 on CI's CPU (SmolLM2 p2+s2). A wrong LR, position or
  # gradient errs by 1e-2 or more from step 1.
  factor_err, direction_err = _relative_errors(ours, theirs)
  assert factor_err[0] < first_tol and direction_err[0] < first_tol, (factor_err, direction_err)
  assert factor_err.max() < tol and direction_err.max() < tol, (factor_err, direction_err)
  # and the params did move: the comparison is not of two frozen copies
  assert abs(ours[0][-1] - ours[0][0]) > 1e-3


@pytest.fixture(scope='module')
def tiny_pair(tmp_path_factory):
  """A tiny random Llama saved with transformers: (our JAX Model, the torch model)."""
  from hf_fixtures import save_tiny_hf_model, save_tiny_tokenizer
  from prosv_jax.models.load import load_model
  path, _ = save_tiny_hf_model(tmp_path_factory.mktemp('tiny_eq'), 'llama', num_hidden_layers=3,
                               initializer_range=0.1)
  save_tiny_tokenizer(path)
  torch_model = transformers.AutoModelForCausalLM.from_pretrained(
      path, dtype=torch.float32, attn_implementation=ref.ATTN_IMPLEMENTATION)
  return load_model(path), torch_model.float().eval().requires_grad_(False), path


def _equivalence_config(model, positions, **data):
  from prosv_jax.train.config import base_config
  c = base_config()  # the paper's preset; LRs by the width rule
  c.model, c.positions = model, positions
  c.data.max_examples, c.data.max_response_tokens = 6, 12
  c.data.update(data)
  c.train.batch_size, c.train.epochs = 3, 5  # 2 steps an epoch, 10 steps
  return c


@pytest.mark.parametrize('positions', ['p2+s2', 'all'])
def test_every_step_matches_torch_on_a_tiny_llama(tiny_pair, positions):
  model, torch_model, path = tiny_pair
  c = _equivalence_config(path, positions)
  c.layer = 1
  ours, theirs = _traces(model, torch_model, c, steps=10)
  _assert_equivalent(ours, theirs)


@pytest.mark.real_model
@pytest.mark.skipif(not CONCEPT10.exists(), reason='AxBench Concept10 data not beside the repo')
# Every position rule is checked on the tiny Llama; on SmolLM2 'all' joins the slow tier.
@pytest.mark.parametrize('positions', ['p2+s2', pytest.param('all', marks=pytest.mark.slow)])
def test_every_step_matches_torch_on_smollm2(smollm, positions):
  torch_model = _smollm_torch()
  c = _equivalence_config('smollm2-135m-instruct', positions, source=str(CONCEPT10),
                          concepts=(0,))
  ours, theirs = _traces(smollm, torch_model, c, steps=10)
  _assert_equivalent(ours, theirs)


_TORCH_SMOLLM = []


def _smollm_torch():
  if not _TORCH_SMOLLM:  # built once for both parametrizations
    _TORCH_SMOLLM.append(ref.torch_model_from_gguf(SMOLLM))
  return _TORCH_SMOLLM[0]
