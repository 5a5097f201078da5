"""Training steering vectors, one module per role.

  config.py    the config (every key commented), method presets and named variants
  concepts.py  the concepts of a job: read, validated, tokenized (and SimPO's losers)
  optim.py     the factor/direction optimizer partitions (an LR per param row) and the width rule
  slots.py     grid cells (beta, direction scale, LRs, seed) as param rows of one step
  step.py      the jitted step: block-L bank in, losses over response tokens, update out
  trainer.py   the Trainer: model, concepts, bank, optimizer; batches as a function of the step
  job.py       the loop in a workdir: checkpoints, resume, metrics, summary, export

"""
