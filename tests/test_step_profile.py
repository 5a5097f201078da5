"""prosv_jax.step_profile: classing a step's HLO instructions and a profiler trace's events."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from prosv_jax import step_profile

HLO = textwrap.dedent('''\
    HloModule jit_step, entry_computation_layout={()->f32[4,8]{1,0}}

    %fused_computation (param_0: f32[4,6], param_1: f32[6,8]) -> f32[4,8] {
      %param_0 = f32[4,6]{1,0} parameter(0)
      %param_1 = f32[6,8]{1,0} parameter(1)
      ROOT %dot.1 = f32[4,8]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(step)/Block/mlp/up/dot_general"}
    }

    %wrapped_broadcast_computation (param_0.2: f32[]) -> f32[3,4,8] {
      %param_0.2 = f32[] parameter(0)
      ROOT %broadcast.3 = f32[3,4,8]{2,1,0} broadcast(%param_0.2), dimensions={}
    }

    %fused_exp (param_0.3: f32[4,8]) -> f32[4,8] {
      %param_0.3 = f32[4,8]{1,0} parameter(0)
      ROOT %exponential.1 = f32[4,8]{1,0} exponential(%param_0.3), metadata={op_name="jit(step)/Block/attn/softmax/exp"}
    }

    ENTRY %main.9 () -> f32[4,8] {
      %constant.1 = f32[] constant(0)
      %a = f32[4,6]{1,0} parameter(0)
      %w = f32[6,8]{1,0} parameter(1)
      %ynn_fusion = f32[4,8]{1,0} fusion(%a, %w), kind=kCustom, calls=%fused_computation, metadata={op_name="jit(step)/Block/mlp/up/dot_general"}
      %wrapped_broadcast = f32[3,4,8]{2,1,0} fusion(%constant.1), kind=kLoop, calls=%wrapped_broadcast_computation
      %exp_fusion = f32[4,8]{1,0} fusion(%ynn_fusion), kind=kLoop, calls=%fused_exp
      %q = f32[4,8]{1,0} dot(%a, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(step)/Block/attn/q/dot_general"}
      %s = f32[4,8]{1,0} dot(%a, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(step)/Block/attn/dot_general"}
      %copy.2 = f32[8,4]{0,1} copy(%q)
      %dus = f32[3,4,8]{2,1,0} dynamic-update-slice(%wrapped_broadcast, %s, %constant.1, %constant.1, %constant.1)
      ROOT %t = (f32[4,8]{1,0}, f32[3,4,8]{2,1,0}) tuple(%exp_fusion, %dus)
    }
    ''')


def test_parse_hlo_classes_each_instruction_by_kind_and_where():
  ins = step_profile.parse_hlo(HLO)
  assert ins['ynn_fusion'] == ('matmul', 'mlp')
  assert ins['wrapped_broadcast'][0] == 'zero-fill'
  assert ins['exp_fusion'] == ('elementwise', 'attention core')
  assert ins['q'] == ('matmul', 'attention projections')  # attn/q before the core's attn
  assert ins['s'] == ('matmul', 'attention core')
  assert ins['copy.2'][0] == 'copy'
  assert ins['dus'][0] == 'scan stack'


def test_covered_is_the_union_of_intervals():
  assert step_profile.covered([]) == 0
  assert step_profile.covered([(0, 2), (1, 3), (5, 6)]) == 4
  assert step_profile.covered([(5, 6), (0, 10)]) == 10


def test_breakdown_counts_overlap_once_and_leaves_out_runtime_spans():
  ins = {'a': ('matmul', 'mlp'), 'b': ('matmul', 'mlp'), 'c': ('copy', 'other')}
  events = [{'name': 'a', 'ts': 0, 'dur': 4e6}, {'name': 'b', 'ts': 1e6, 'dur': 4e6},
            {'name': 'c', 'ts': 6e6, 'dur': 2e6},
            {'name': 'ThunkExecutor::Execute', 'ts': 0, 'dur': 9e6},
            {'name': '$python frame', 'ts': 0, 'dur': 9e6}]
  out = step_profile.breakdown(events, ins, steps=2)
  parts = {(r['kind'], r['where']): r for r in out['parts']}
  assert parts['matmul', 'mlp']['wall_s'] == 2.5  # (0..5 s) / 2 steps: overlap counted once
  assert parts['matmul', 'mlp']['summed_s'] == 4.0
  assert parts['copy', 'other']['wall_s'] == 1.0
  assert out['covered_s'] == 3.5
  assert list(out['by_kind_wall_s']) == ['matmul', 'copy']  # largest first


SCRIPT = textwrap.dedent('''\
    import json, sys, tempfile
    import jax, jax.numpy as jnp
    from prosv_jax import step_profile

    def f(w, x):
      def body(h, wi):
        return jnp.tanh(h @ wi), h
      return jax.lax.scan(body, x, w)

    w, x = jnp.ones((4, 256, 256)) / 256, jnp.ones((64, 256))
    compiled = jax.jit(f).lower(w, x).compile()
    ins = step_profile.parse_hlo(compiled.as_text())
    jax.block_until_ready(compiled(w, x))
    with tempfile.TemporaryDirectory() as folder:
      with jax.profiler.trace(folder, create_perfetto_trace=True):
        for _ in range(2):
          jax.block_until_ready(compiled(w, x))
      events = step_profile.trace_events(folder)
    print(json.dumps(step_profile.breakdown(events, ins, 2)))
    ''')


def test_a_real_trace_of_a_compiled_scan_finds_its_matmuls():
  """A real CPU trace (a subprocess: the flag is read when the backend starts)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') +
                        ' --xla_cpu_enable_xprof_traceme=true').strip())
  proc = subprocess.run([sys.executable, '-c', SCRIPT], env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  if proc.returncode != 0:
    pytest.fail(proc.stderr[-2000:])
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  kinds = out['by_kind_wall_s']
  assert 'matmul' in kinds and kinds['matmul'] > 0
  matmul = [p for p in out['parts'] if p['kind'] == 'matmul']
  assert sum(p['events'] for p in matmul) >= 4  # one dot per scanned layer and step
  assert out['covered_s'] >= kinds['matmul']
