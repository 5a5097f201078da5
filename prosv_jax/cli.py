"""What every launch script does first: third-party output stays quiet unless --verbose.

transformers prints its "PyTorch was not found" advice when it is imported, and reads its
verbosity from the environment then: that is before absl parses flags, so quiet() looks at
sys.argv itself and must run before anything imports transformers.
"""

import os
import sys

from absl import flags

VERBOSE = flags.DEFINE_bool('verbose', False, 'Show third-party logs (transformers, jax, '
                            'orbax) as well.')


def huge_pages() -> None:
  """Restarts this process once with glibc's malloc on transparent huge pages (Linux).

  XLA on CPU allocates its large buffers afresh at every step, so a SmolLM2 training step
  touched ~750,000 new 4 KiB pages (page faults: ~3 GB of zeroed memory a step); with
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 it touches ~2,000 (docs/PERFORMANCE.md). glibc reads
  the tunable at startup only, hence the re-exec, before anything heavy is imported. Set
  PROSV_HUGE_PAGES=0 to keep the process as it started; older glibc ignores the tunable.
  """
  if not sys.platform.startswith('linux') or os.environ.get('PROSV_HUGE_PAGES') == '0':
    return
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables:
    return
  os.environ['GLIBC_TUNABLES'] = ':'.join(filter(None, [tunables, 'glibc.malloc.hugetlb=1']))
  os.execv(sys.executable, sys.orig_argv)


def quiet() -> None:
  """Sets the environment that silences import-time banners, unless --verbose is in argv;
  first, when called by the script being run (not by a module that imports a launcher, as
  tests do), restarts the process on huge pages (huge_pages)."""
  if sys._getframe(1).f_globals.get('__name__') == '__main__':  # pylint: disable=protected-access
    huge_pages()
  if any(arg in ('--verbose', '--verbose=true', '--verbose=True', '--verbose=1')
         for arg in sys.argv[1:]):
    return
  os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
  os.environ.setdefault('TRANSFORMERS_NO_ADVISORY_WARNINGS', '1')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def set_log_levels() -> None:
  """After flag parsing (in main): absl/jax (the libtpu INFO line) and orbax (every save at
  INFO) log warnings only, and transformers errors only, unless --verbose."""
  from absl import logging  # pylint: disable=import-outside-toplevel
  if VERBOSE.value:
    logging.set_verbosity(logging.INFO)
    return
  logging.set_verbosity(logging.WARNING)
  try:
    from transformers.utils import logging as hf_logging  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  hf_logging.set_verbosity_error()


def _unknown_key(e: Exception, argv) -> SystemExit:
  key = str(e).strip('"\'')
  given = [a for a in argv[1:] if a.startswith('--config.') and key in a.split('=')[0]]
  where = f' in {given[0].split("=")[0]}' if given else ''
  return SystemExit(f'error: unknown config key {key!r}{where}; see --helpfull for the keys of '
                    f'--config')


def _load_error(e: OSError) -> SystemExit:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return SystemExit(f'error: cannot load the config file ({lines[-1]}); pass an existing '
                    f'--config=configs/<name>.py')


def define_config(name: str, default: str, help_text: str):
  """config_flags.DEFINE_config_file (locked); an override of a key the config lacks is one
  `error:` line. config_flags reads the overrides from sys.argv right here, at import."""
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  try:
    return config_flags.DEFINE_config_file(name, default, help_text, lock_config=True)
  except (AttributeError, KeyError) as e:
    raise _unknown_key(e, sys.argv) from None
  except OSError as e:  # the file did not load and an override asked for its keys
    raise _load_error(e) from None


def parse_flags(argv):
  """absl's parser with a bad flag or config override as one `error:` line (exit code 1)
  instead of absl's two lines or a traceback (pass it to app.run as flags_parser)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if 'Traceback' in text:  # get_config raised: config_flags quotes its whole traceback
      last = [line.strip() for line in text.splitlines() if line.strip()][-1]
      if last.startswith('prosv_jax.errors.ProsvError: '):  # already names the fix
        raise SystemExit(f'error: {last.split(": ", 1)[1]}') from None
      raise SystemExit(f'error: the config file failed: {last}; fix it or pick another '
                       f'--config') from None
    detail = ' '.join(text.split())  # config_flags' messages may span lines
    raise SystemExit(f'error: {detail}; see --helpshort') from None
  except (AttributeError, KeyError) as e:  # an override names no config key
    raise _unknown_key(e, argv) from None
  except OSError as e:  # the file did not load and an override asked for its keys
    raise _load_error(e) from None


def config_value(holder):
  """holder.value, or one `error:` line when the config file itself did not load."""
  config = holder.value
  try:
    config.keys()
  except OSError as e:  # config_flags defers a failed load to the first access
    raise _load_error(e) from None
  return config
