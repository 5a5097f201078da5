"""Launch scripts (dry runs, and their quoting run through a shell) and config variants."""

import json
import os
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from prosv_jax import study
from prosv_jax.errors import ProsvError
from prosv_jax.train import optim
from prosv_jax.train.config import VARIANTS, base_config, check_config, method_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# An override that needs quoting: a space and a single quote.
TRICKY = "--config.data.source=my data/it's.parquet"
OVERRIDES = ['--config=configs/prosv.py:gemma2_9b', TRICKY, '--config.mesh.data=4',
             '--config.mesh.model=2', '--max_steps=5']
TRAIN_ARGV = ['python', 'launch/train.py', *OVERRIDES]


def script(name, *args, env=None, check=True):
  result = subprocess.run(['bash', os.path.join('launch', name), *args], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=60)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def one_line(result) -> list[str]:
  lines = result.stdout.splitlines()
  assert len(lines) == 1, result.stdout
  return shlex.split(lines[0])


def fake_bin(tmp_path, *names):
  """Stand-ins for python/srun that print their argv and PROSV_DISTRIBUTED as JSON."""
  folder = tmp_path / 'bin'
  folder.mkdir()
  for name in names:
    path = folder / name
    path.write_text(f'#!{sys.executable}\nimport json, os, sys\n'
                    "print(json.dumps({'argv': sys.argv[1:], "
                    "'distributed': os.environ.get('PROSV_DISTRIBUTED'), "
                    "'xla': os.environ.get('XLA_FLAGS')}))\n")
    path.chmod(0o755)
  return str(folder)


def test_local_dry_run_prints_the_train_command():
  single = ['env', 'PROSV_DISTRIBUTED=0']  # one process, even inside a Slurm job
  assert one_line(script('local.sh', '--dry-run', *OVERRIDES)) == single + TRAIN_ARGV
  assert one_line(script('local.sh', *OVERRIDES, env={'DRY_RUN': '1'})) == single + TRAIN_ARGV
  assert one_line(script('local.sh', '--dry-run', env={'PYTHON': 'python3.11'})) == [
      *single, 'python3.11', 'launch/train.py']
  help_text = script('local.sh', '--help').stdout
  assert help_text.startswith('Usage: launch/local.sh') and 'set -e' not in help_text


def test_tpu_pod_dry_run_runs_the_same_command_on_every_worker(tmp_path):
  out = one_line(script('tpu_pod.sh', '--tpu=pod-1', '--zone=us-central2-b', '--project=p',
                        '--dir=repo dir', '--env=XLA_FLAGS=--xla_a=1 --xla_b', '--dry-run',
                        *OVERRIDES))
  assert out[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'pod-1']
  assert out[6:10] == ['--zone', 'us-central2-b', '--project', 'p']
  assert out[10] == '--worker=all' and out[11] == '--command'
  remote = out[12]
  assert shlex.split(remote) == ['cd', 'repo dir', '&&', 'PROSV_DISTRIBUTED=1',
                                 'XLA_FLAGS=--xla_a=1 --xla_b', *TRAIN_ARGV]
  # The remote line really sets the variables and hands every override over intact.
  (tmp_path / 'repo dir').mkdir()
  ran = subprocess.run(['bash', '-c', remote], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, 'PATH': fake_bin(tmp_path, 'python') + ':'
                            + os.environ['PATH']}, check=True)
  got = json.loads(ran.stdout)
  assert got == {'argv': TRAIN_ARGV[1:], 'distributed': '1', 'xla': '--xla_a=1 --xla_b'}


def test_tpu_pod_takes_its_settings_from_the_environment():
  out = one_line(script('tpu_pod.sh', '--config=configs/fssv.py',
                        env={'TPU': 't1', 'ZONE': 'z1', 'DRY_RUN': '1', 'PROJECT': ''}))
  assert out[5:8] == ['t1', '--zone', 'z1'] and '--worker=all' in out
  assert shlex.split(out[-1]) == ['cd', 'prosv_jax', '&&', 'PROSV_DISTRIBUTED=1', 'python',
                                  'launch/train.py', '--config=configs/fssv.py']


@pytest.mark.parametrize('name,args,message', [
    ('tpu_pod.sh', ['--zone=z', '--config=c.py'], 'no TPU named'),
    ('tpu_pod.sh', ['--tpu=t', '--config=c.py'], 'no zone'),
    ('tpu_pod.sh', ['--tpu=t', '--zone=z'], 'no --config='),
    ('tpu_pod.sh', ['--tpu=t', '--zone=z', '--env=1X=2', '--config=c.py'], 'NAME=VALUE'),
    ('slurm.sh', [], 'no --config='),
    ('slurm.sh', ['--nodes=0', '--config=c.py'], '--nodes=0'),
])
def test_missing_settings_are_one_line_errors(name, args, message):
  result = script(name, '--dry-run', *args, check=False, env={'TPU': '', 'ZONE': ''})
  assert result.returncode == 2 and not result.stdout
  assert message in result.stderr and len(result.stderr.splitlines()) == 1


def test_slurm_dry_run_submits_one_task_per_gpu(tmp_path):
  out = one_line(script('slurm.sh', '--nodes=2', '--gpus-per-node=4', '--partition=gpu',
                        '--time=02:00:00', '--sbatch-arg=--exclusive', '--dry-run', *OVERRIDES))
  assert out[0] == 'sbatch'
  for option in ('--job-name=prosv', f'--chdir={ROOT}', '--nodes=2', '--ntasks-per-node=4',
                 '--gpus-per-node=4', '--partition=gpu', '--time=02:00:00', '--exclusive',
                 '--export=ALL,PROSV_DISTRIBUTED=1', '--output=slurm-%x-%j.out'):
    assert option in out
  assert not any(a.startswith('--gpus-per-task') for a in out)  # would hide the other GPUs
  wrap = [a for a in out if a.startswith('--wrap=')]
  assert len(wrap) == 1
  assert shlex.split(wrap[0][len('--wrap='):]) == ['srun', '--kill-on-bad-exit=1', *TRAIN_ARGV]
  # The job's shell hands the overrides to srun intact.
  ran = subprocess.run(['sh', '-c', wrap[0][len('--wrap='):]], capture_output=True, text=True,
                       env={**os.environ, 'PROSV_DISTRIBUTED': '1',
                            'PATH': fake_bin(tmp_path, 'srun') + ':' + os.environ['PATH']},
                       check=True)
  assert json.loads(ran.stdout)['argv'] == ['--kill-on-bad-exit=1', *TRAIN_ARGV]


def test_slurm_srun_mode_inside_an_allocation():
  out = one_line(script('slurm.sh', '--srun', *OVERRIDES, env={'DRY_RUN': '1', 'NODES': '3'}))
  assert out[:4] == ['env', 'PROSV_DISTRIBUTED=1', 'srun', f'--chdir={ROOT}']
  assert out[4:8] == ['--nodes=3', '--ntasks-per-node=8', '--gpus-per-node=8',
                      '--kill-on-bad-exit=1']
  assert out[8:] == TRAIN_ARGV


def parse_config(argv):
  """The config launch/train.py would get from `argv` (its flag definition, fresh flags)."""
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', 'configs/demo.py', 'Training config file.',
                                           flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return holder.value


def test_train_resolves_a_variant():
  c = parse_config(['train.py', '--config=configs/prosv.py:gemma2_9b',
                    '--config.train.epochs=3'])
  assert (c.model, c.layer, c.positions) == ('hf:google/gemma-2-9b-it', 20, 'p2+s2')
  assert (c.steer.beta, c.steer.direction_scale) == (2.0, 8.0)
  assert (c.optim.factor_lr, c.optim.direction_lr) == (0.1, 0.04)
  assert (c.train.batch_size, c.train.epochs) == (12, 3)  # the override wins
  assert c.optim.base_width == 3584
  # LRs stated at the model's own width are used as they are on it.
  assert optim.scaled_lrs(c.optim, 3584) == (0.1, 0.04)
  assert optim.scaled_lrs(c.optim, 4 * 3584) == pytest.approx((0.2, 0.02))
  f = parse_config(['train.py', '--config=configs/fssv.py:gemma2_9b'])
  assert (f.positions, f.train.epochs, f.steer.beta, f.optim.factor_lr) == ('all', 18, 2.0, 0.1)


@pytest.mark.parametrize('method', ['prosv', 'fssv'])
def test_every_variant_matches_the_paper_table(method, monkeypatch):
  monkeypatch.delenv('PROSV_GEMMA3_270M', raising=False)
  table = {  # METHOD.md section 2: beta, factor LR, s, direction LR, epochs, batch
      ('gemma2_2b', 'prosv'): (4, 10, 8, 0.04, 12, 12),
      ('gemma2_2b', 'fssv'): (2, 1, 1, 0.04, 12, 12),
      ('gemma2_9b', 'prosv'): (2, 0.1, 8, 0.04, 12, 12),
      ('gemma2_9b', 'fssv'): (2, 0.1, 8, 0.04, 18, 12),
      ('qwen25_32b', 'prosv'): (2, 10, 8, 0.04, 12, 6),
      ('qwen25_32b', 'fssv'): (1, 0.1, 1, 0.04, 12, 6),
  }
  for name, variant in VARIANTS.items():
    c = parse_config(['train.py', f'--config=configs/{method}.py:{name}'])
    got = (c.steer.beta, c.optim.factor_lr, c.steer.direction_scale, c.optim.direction_lr,
           c.train.epochs, c.train.batch_size)
    if (name, method) in table:
      assert got == table[name, method], name
      assert c.optim.base_width == variant.width  # tuned on this model: used as given
      assert optim.scaled_lrs(c.optim, variant.width) == (c.optim.factor_lr,
                                                          c.optim.direction_lr)
    elif name == 'smollm2':  # the study's own rows (docs/STUDY.md), stated at 2304 like its grids
      assert got == {'prosv': (1 / 16, 10, 1, 0.08, 12, 12),
                     'fssv': (1, 1, 1, 0.04, 12, 12)}[method]
      assert c.optim.base_width == 2304
    else:  # gemma3-270m takes gemma-2-2b's row, stated at gemma-2-2b's width
      assert got == table['gemma2_2b', method], name
      assert c.optim.base_width == 2304
    assert c.layer == variant.layer
    assert c.positions == ('all' if method == 'fssv' else 'p2+s2')
  assert parse_config(['t', '--config=configs/prosv.py:smollm2']).model == base_config().model
  # A spec, resolved when the model loads: building the config touches no file.
  assert parse_config(['t', '--config=configs/prosv.py:gemma3_270m']).model == 'gemma3-270m'
  assert parse_config(['t', '--config=configs/prosv.py:qwen25_32b']).model == \
      'hf:Qwen/Qwen2.5-32B-Instruct'


def test_small_models_derive_their_lrs_by_the_width_rule():
  # gemma-2-2b's row at width 2304 -> SmolLM2 at 576: factor LR 10 * (1/4)**0.5 = 5 and
  # direction LR 0.04 * (1/4)**-0.5 = 0.08 (the default config: the paper's row on SmolLM2).
  c = parse_config(['t', '--config=configs/prosv.py'])
  assert optim.scaled_lrs(c.optim, 576) == pytest.approx((5.0, 0.08))
  # The smollm2 variant's study row is stated at 2304 too: factor LR 10 -> 5, 0.08 -> 0.16.
  s = parse_config(['t', '--config=configs/prosv.py:smollm2'])
  assert optim.scaled_lrs(s.optim, 576) == pytest.approx((5.0, 0.16))
  assert (s.steer.beta, s.steer.direction_scale, s.positions) == (1 / 16, 1.0, 'p2+s2')
  f = parse_config(['t', '--config=configs/fssv.py'])
  assert optim.scaled_lrs(f.optim, 576) == pytest.approx((0.5, 0.08))
  g = parse_config(['t', '--config=configs/prosv.py:gemma3_270m'])
  assert optim.scaled_lrs(g.optim, 640) == pytest.approx((10 * (640 / 2304) ** 0.5,
                                                          0.04 * (640 / 2304) ** -0.5))
  # The variant differs from the default in its row alone.
  default = study.flatten(base_config().to_dict())
  variant = study.flatten(s.to_dict())
  assert {k for k in default if default[k] != variant[k]} == {
      'workdir', 'steer.beta', 'steer.direction_scale', 'optim.direction_lr'}


def test_paper_faithful_data_defaults():
  c = base_config()
  assert c.data.max_response_tokens == 0  # whole responses for the lang loss
  assert c.data.bucket  # bucketing within windows of at most half an epoch (tests/test_data.py)
  from prosv_jax.train.concepts import response_cut
  assert response_cut(c) == 0
  c.train.loss = 'simpo'
  assert response_cut(c) == 128  # the paper truncates SimPO responses (and losers) to 128
  c.data.max_response_tokens = 64
  assert response_cut(c) == 64  # an explicit cut wins
  c.data.max_response_tokens = -1
  with pytest.raises(ProsvError, match='max_response_tokens=-1'):
    check_config(c)


def test_building_configs_has_no_side_effect(monkeypatch, tmp_path):
  monkeypatch.setenv('HOME', str(tmp_path))
  monkeypatch.delenv('PROSV_GEMMA3_270M', raising=False)
  for method in ('prosv', 'fssv'):
    for name in VARIANTS:
      parse_config(['t', f'--config=configs/{method}.py:{name}'])
  assert not any(tmp_path.iterdir())  # nothing assembled under ~/.cache


def test_prosv_and_fssv_share_one_preset_table():
  from prosv_jax.train.config import method_sweeps
  assert set(method_sweeps('prosv')) == set(method_sweeps('fssv'))
  lrs = lambda method: sorted({p['optim.factor_lr'] for p in
                               method_sweeps(method)['width_small']()})
  assert lrs('prosv') == [1.0, 10.0] and lrs('fssv') == [0.1, 1.0]


def test_no_variant_is_the_default_config():
  assert parse_config(['t', '--config=configs/prosv.py']).to_dict() == base_config().to_dict()
  assert parse_config(['t', '--config=configs/fssv.py']).to_dict() == \
      method_config('fssv').to_dict()


def test_unknown_variant_lists_the_valid_names():
  with pytest.raises(flags.IllegalFlagValueError, match='unknown config variant .nope.; use '
                     'one of: smollm2, gemma3_270m, gemma2_2b, gemma2_9b, qwen25_32b'):
    parse_config(['t', '--config=configs/prosv.py:nope'])
  result = subprocess.run([sys.executable, 'launch/train.py', '--config=configs/fssv.py:nope'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "unknown config variant 'nope'" in result.stderr and 'gemma2_9b' in result.stderr


def test_launchers_restart_once_on_huge_pages(tmp_path):
  """cli.quiet() re-executes the script with glibc.malloc.hugetlb=1 (fewer page faults per
  step), keeps other tunables and arguments, and leaves the process alone when asked."""
  script = tmp_path / 'probe.py'
  script.write_text('import os, sys\nfrom prosv_jax import cli\ncli.quiet()\n'
                    'print(os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])\n')
  env = dict(os.environ, GLIBC_TUNABLES='glibc.malloc.arena_max=4')
  env.pop('PROSV_HUGE_PAGES', None)
  out = subprocess.run([sys.executable, str(script), '--a=1'], env=env, capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1 ['--a=1']"
  env['PROSV_HUGE_PAGES'] = '0'
  out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                       check=True).stdout
  assert out.strip() == 'glibc.malloc.arena_max=4 []'
  # Imported as a module (tests import launchers and call their main): no restart.
  module = tmp_path / 'imports_probe.py'
  module.write_text('import sys\nsys.path.insert(0, %r)\nimport probe\n' % str(tmp_path))
  env.pop('PROSV_HUGE_PAGES')
  out = subprocess.run([sys.executable, str(module)], env=env, capture_output=True, text=True,
                       check=True).stdout
  assert out.strip() == 'glibc.malloc.arena_max=4 []'
