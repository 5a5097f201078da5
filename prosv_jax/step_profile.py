"""Where a compiled step's time goes, op by op, from a jax.profiler trace and the step's HLO.

XLA's CPU runtime records one trace event per executed thunk (with
XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true), named after the HLO instruction it runs. Each
instruction is classed by what it does (a matmul, a zero-fill of a buffer, the scan's stacking
of per-layer values, a copy, elementwise work) and by where in the model it comes from (its
op_name metadata: MLP, attention projections, the attention core, the LM head). Independent
thunks run side by side on the CPU's threads, so a class's time is the wall time during which
at least one of its events ran, not the sum of their durations (both are reported).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*)$')
_COMPUTATION = re.compile(r'^\s*(?:ENTRY\s+)?%?([\w.\-]+) \(.*\{\s*$')
# op_name fragment -> where (first match wins: 'attn/q' before the attention core's 'attn').
WHERE = (('/mlp/', 'mlp'), ('/attn/q/', 'attention projections'),
         ('/attn/k/', 'attention projections'), ('/attn/v/', 'attention projections'),
         ('/attn/o/', 'attention projections'), ('/attn', 'attention core'),
         ('d,dv->', 'LM head'), ('log_softmax', 'LM head'), ('logsumexp', 'LM head'))
# A while loop's own event spans the thunks of its body, which are counted themselves.
SKIP = ('while',)


def parse_hlo(text: str) -> dict[str, tuple[str, str]]:
  """Instruction name -> (kind, where) for every instruction of an HLO module's text.

  kind: matmul (the instruction or the computation it calls holds a dot or convolution),
  zero-fill (a broadcast of a constant), scan stack (dynamic slices and updates: a scan's
  per-layer values), weight slice (a slice of frozen weights), copy (copy/transpose), or
  elementwise (the rest: norms, softmax, activations, reductions).
  """
  bodies: dict[str, list[str]] = {}
  lines: dict[str, str] = {}
  current = None
  for line in text.splitlines():
    head = _COMPUTATION.match(line)
    if head:
      current = head.group(1)
      bodies[current] = []
      continue
    m = _INSTRUCTION.match(line)
    if m:
      lines[m.group(1)] = m.group(2)
      if current is not None:
        bodies[current].append(m.group(2))
  out = {}
  for name, rest in lines.items():
    called = re.findall(r'calls=%?([\w.\-]+)', rest)
    body = ' '.join(rest2 for c in called for rest2 in bodies.get(c, ())) + ' ' + rest
    out[name] = (_kind(name, rest, body), _where(rest, body))
  return out


def _kind(name: str, rest: str, body: str) -> str:
  op = re.search(r'\s([a-z][\w\-]*)\(', ' ' + rest)
  op = op.group(1) if op else ''
  if re.search(r'\b(dot|convolution)\(', body) or 'ynn_fusion' in name or 'xnn_fusion' in name:
    return 'matmul'
  if re.search(r'\bdynamic-(update-)?slice\(', body):
    return 'scan stack'
  if re.search(r'\bbroadcast\(', body) and re.search(r'\bconstant\b|f32\[\] parameter', body) \
     and not re.search(r'\b(add|multiply|exponential|divide)\(', body):
    return 'zero-fill'
  if re.search(r'\bslice\(', body) and 'frozen' in rest:
    return 'weight slice'
  if op in ('copy', 'transpose') or re.fullmatch(r'(copy|transpose)\S*', name.split('.')[0]):
    return 'copy'
  if re.search(r'\b(copy|transpose)\(', body) and not re.search(
      r'\b(add|multiply|exponential|divide|subtract|maximum|reduce)\(', body):
    return 'copy'
  return 'elementwise'


def _where(rest: str, body: str) -> str:
  names = re.findall(r'op_name="([^"]*)"', rest) or re.findall(r'op_name="([^"]*)"', body)
  for op_name in names:
    for key, label in WHERE:
      if key in op_name:
        return label
  return 'other'


def trace_events(folder: str) -> list[dict]:
  """The complete ('X') events of the newest perfetto trace jax.profiler wrote under folder."""
  paths = sorted(glob.glob(os.path.join(folder, '**', '*perfetto_trace.json.gz'),
                           recursive=True), key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f'no perfetto_trace.json.gz under {folder}')
  with gzip.open(paths[-1], 'rt', encoding='utf-8') as f:
    raw = json.load(f)
  events = raw['traceEvents'] if isinstance(raw, dict) else raw
  return [e for e in events if e.get('ph') == 'X' and 'dur' in e]


def covered(intervals) -> float:
  """Length of the union of [start, end) intervals."""
  total, end_seen = 0.0, None
  start_run = None
  for a, b in sorted(intervals):
    if end_seen is None or a > end_seen:
      if end_seen is not None:
        total += end_seen - start_run
      start_run, end_seen = a, b
    else:
      end_seen = max(end_seen, b)
  return total + (end_seen - start_run if end_seen is not None else 0.0)


def breakdown(events: list[dict], instructions: dict[str, tuple[str, str]],
              steps: int) -> dict:
  """Seconds per step by (kind, where): wall time covered and summed thunk time.

  Events whose name is not an instruction of the step (the runtime's own spans, Python
  frames) are left out; 'covered_s' is the wall time covered by any classed event.
  """
  groups = collections.defaultdict(list)
  every = []
  for e in events:
    name = e['name']
    if name not in instructions or name.startswith(SKIP):
      continue
    span = (float(e['ts']), float(e['ts']) + float(e['dur']))
    groups[instructions[name]].append(span)
    every.append(span)
  per = 1e6 * steps  # trace times are microseconds
  rows = [{'kind': kind, 'where': where, 'wall_s': round(covered(spans) / per, 4),
           'summed_s': round(sum(b - a for a, b in spans) / per, 4), 'events': len(spans) // steps}
          for (kind, where), spans in groups.items()]
  rows.sort(key=lambda r: -r['wall_s'])
  by_kind = collections.defaultdict(list)
  for (kind, _), spans in groups.items():
    by_kind[kind] += spans
  return {'covered_s': round(covered(every) / per, 4),
          'by_kind_wall_s': {k: round(covered(v) / per, 4) for k, v in
                             sorted(by_kind.items(), key=lambda kv: -covered(kv[1]))},
          'parts': rows}
