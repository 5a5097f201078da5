"""launch/bench.py: the batches the paper's code would build, and the shared FLOP count."""

import os
import sys
import types

import numpy as np

from prosv_jax import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'launch'))
import bench  # noqa: E402  (defines its absl flags; nothing here parses them)


def _trainer(n=30, batch=12, epochs=3):
  rng = np.random.default_rng(0)
  examples = [data.Example(np.arange(1, 1 + int(rng.integers(3, 9)), dtype=np.int32),
                           np.arange(1, 1 + int(rng.integers(1, 40)), dtype=np.int32), 0, str(i))
              for i in range(n)]
  config = types.SimpleNamespace(train=types.SimpleNamespace(epochs=epochs))
  return types.SimpleNamespace(concepts=types.SimpleNamespace(examples=[examples]),
                               batch_size=batch, pad_id=0, config=config), examples


def test_paper_batches_reshuffle_each_epoch_and_pad_to_the_longest_row():
  trainer, examples = _trainer()
  batches = bench.paper_batches(trainer)
  assert len(batches) == 3 * 3  # ceil(30 / 12) batches an epoch, the last one smaller
  per_epoch = [batches[i:i + 3] for i in range(0, 9, 3)]
  seen = []
  for epoch in per_epoch:
    instructions = []
    for b in epoch:
      assert b['tokens'].shape[1] == b['length'].max()  # its own longest row, not rounded
      instructions += [int(x) for x in b['length']]
    assert sorted(instructions) == sorted(e.length for e in examples)  # each once an epoch
    seen.append([tuple(b['length']) for b in epoch])
  assert seen[0] != seen[1]  # a fresh order every epoch


def test_bench_and_bench_scale_count_flops_with_one_function():
  import bench_scale  # noqa: E402
  from prosv_jax import flops
  assert bench.step_flops is flops.step_flops is bench_scale.step_flops


def test_computed_work_counts_padding_dense_attention_and_the_head_each_side_computes():
  from prosv_jax.models.config import ModelConfig
  cfg = ModelConfig('llama', 10, 4, 6, 3, 2, 1, 2)  # 3 blocks; P = 4*2*(4+2) + 3*4*6 = 120
  p, he, head = 120, 4, 40
  ex = data.Example(np.array([1, 2], np.int32), np.array([3, 4, 5], np.int32), 0, '0')  # t=5
  trainer = types.SimpleNamespace(
      model=types.SimpleNamespace(cfg=cfg), layer=0, flat=[ex], total_steps=1,
      batch_rows=lambda step: [0], step_shapes=[(1, 8, 4)])  # one row, 8 slots, 4 response
  padded = {'tokens': np.zeros((1, 8), np.int32)}
  work = bench.computed_work(trainer, paper=[{'tokens': np.zeros((1, 5), np.int32)}],
                             same=[padded])
  ours = (2 * (4 * p * 8 + 12 * he * 64)  # blocks 1-2 forward + input gradient, 8 slots, dense
          + 4 * head * 4  # head at the 4 planned response slots
          + 1 * (2 * p * 5 + 4 * he * 25))  # the bank: block 0 forward over the 5 real tokens

  def torch_batch(w):  # all 3 blocks forward, blocks 1-2 backward, the head at every slot
    return 3 * (2 * p * w + 4 * he * w * w) + 2 * (2 * p * w + 8 * he * w * w) + 4 * head * w

  assert work['speedup_at_equal_rate_paper_batches'] == round(torch_batch(5) / ours, 3)
  assert work['speedup_at_equal_rate_our_batches'] == round(torch_batch(8) / ours, 3)
  useful = bench.step_flops(cfg, 0, [ex])
  assert work['speedup_at_equal_rate_if_ours_computed_only_useful'] == round(
      torch_batch(5) / (useful + 1 * (2 * p * 5 + 4 * he * 25)), 3)
