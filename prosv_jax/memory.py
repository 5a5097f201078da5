"""Will a compiled step fit? XLA's memory analysis of the step against the device's memory.

A step too large for the machine otherwise ends in the kernel's OOM killer (CPU) or an
allocator error (GPU/TPU) with nothing said about which setting to change; checked before
the step first runs, it becomes a one-line error that names the fix.
"""

from __future__ import annotations

import os

import jax


def device_bytes(device=None) -> tuple[int | None, int | None]:
  """(total, available) bytes of memory for one device's buffers; None where not known.

  Accelerators report their allocator's limit (memory_stats()['bytes_limit'], available =
  limit - bytes_in_use); the CPU backend uses the host's RAM (/proc/meminfo MemTotal and
  MemAvailable) divided among this process's CPU devices.
  """
  device = device or jax.devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  (backends without stats raise variously)
    stats = None
  if stats and stats.get('bytes_limit'):
    limit = int(stats['bytes_limit'])
    return limit, limit - int(stats.get('bytes_in_use', 0))
  # Host RAM, shared by this process's devices of the platform (several with
  # --xla_force_host_platform_device_count), each running its share of a step.
  share = max(1, len([d for d in jax.local_devices() if d.platform == device.platform]))
  total, available = _meminfo('MemTotal'), _meminfo('MemAvailable')
  return (None if total is None else total // share,
          None if available is None else available // share)


def _meminfo(key: str) -> int | None:
  try:
    with open('/proc/meminfo', encoding='ascii') as f:
      for line in f:
        if line.startswith(key + ':'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def step_bytes(compiled) -> int | None:
  """Bytes a compiled call allocates beyond its inputs: temporaries and outputs (less what
  aliases a donated input); None when the backend gives no analysis."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  return int(m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes)


def size(n: int) -> str:
  """'24.6 GB', '350 MB'."""
  return f'{n / 1e9:.1f} GB' if n >= 1e9 else f'{n / 1e6:.0f} MB'


# The share of a device's total memory one step may claim: the inputs (weights, bank,
# optimizer state) and the runtime live there too.
MAX_SHARE = float(os.environ.get('PROSV_MAX_STEP_MEMORY_SHARE', 0.9))
