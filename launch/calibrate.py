"""Calibrates the offline judge's thresholds and reports them on held-out concepts.

  python launch/calibrate.py                      # SmolLM2; writes the packaged calibration

By default it fits on AxBench Concept10's 2b_l20 and 9b_l20 held-out splits (20 concepts) and
reports on 2b_l10 (10 other concepts, the ones the steering evaluation uses). The fluency
thresholds depend on the base model, so each model needs its own calibration:

  python launch/calibrate.py --model=path/to/model.gguf --out=workdirs/calib/model.json
"""

import json
import platform
import sys
import time

from absl import app, flags

from prosv_jax.errors import ProsvError

CONCEPT10 = '../shared/data/axbench/concept10/prod_{}_v1'
MODEL = flags.DEFINE_string('model', 'smollm2-135m-instruct', 'Base model that scores fluency.')
DTYPE = flags.DEFINE_string('dtype', 'float32', 'float32 or bfloat16')
CALIBRATE = flags.DEFINE_list('calibrate', [CONCEPT10.format('2b_l20'), CONCEPT10.format('9b_l20')],
                              'AxBench folders to fit on.')
HELDOUT = flags.DEFINE_list('heldout', [CONCEPT10.format('2b_l10')],
                            'AxBench folders (other concepts) to report on.')
PER_CLASS = flags.DEFINE_integer('per_class', 0, 'Cap of pairs per concept and class (0 = all).')
FLUENCY = flags.DEFINE_integer('fluency_per_concept', 12, 'Real texts per concept for fluency '
                               '(each with a corrupted copy).')
SCORES = flags.DEFINE_string('scores', 'workdirs/calibration_scores.npz',
                             'Raw scores cache: reused when it was computed for the same '
                             "model and data, so refitting is instant ('' = no cache).")
OUT = flags.DEFINE_string('out', '', "Where to write the JSON ('' = the packaged default path "
                          'for --model).')


def main(argv):
  del argv
  from prosv_jax.eval.calibrate import calibrate
  from prosv_jax.eval.embed import SentenceEncoder
  from prosv_jax.eval.offline_judge import check_fluency_model, default_calibration_path
  from prosv_jax.models.load import load_model
  t0 = time.time()
  try:
    encoder = SentenceEncoder.load()
    model = load_model(MODEL.value, DTYPE.value)
    check_fluency_model(model, MODEL.value)
    cal = calibrate(encoder, model, MODEL.value, CALIBRATE.value, HELDOUT.value,
                    per_class=PER_CLASS.value, fluency_per_concept=FLUENCY.value,
                    log=lambda m: print(m, file=sys.stderr), scores_path=SCORES.value)
  except ProsvError as e:
    raise SystemExit(f'error: {e}') from None
  out = OUT.value or default_calibration_path(MODEL.value)
  cal.save(out)
  print(json.dumps(dict(command=' '.join(sys.argv), machine=platform.processor() or
                        platform.machine(), wall_s=round(time.time() - t0, 1), written=out,
                        thresholds={k: getattr(cal, k).__dict__ for k in
                                    ('concept', 'instruction', 'fluency')},
                        repeat_weight=cal.repeat_weight, report=cal.report), indent=1))


if __name__ == '__main__':
  app.run(main)
