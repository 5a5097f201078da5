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
