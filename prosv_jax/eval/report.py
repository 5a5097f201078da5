"""results.json -> results.md (tables) and plots (score per method; score against factor)."""

from __future__ import annotations

import json
import os

import numpy as np

from prosv_jax.eval.steering import grid_of, split_method

LABELS = {
    'unsteered': 'unsteered',
    'prompting': 'prompting baseline',
    'fssv': 'FSSV, trained factor',
    'fssv_grid': 'FSSV, factor grid (selected)',
    'prosv': 'PrOSV, trained factor',
    'prosv_grid': 'PrOSV, factor grid (selected)',
}
GRID_NAMES = {'fssv_grid': 'FSSV', 'prosv_grid': 'PrOSV'}


def label(method: str, names: dict = LABELS) -> str:
  """'prosv' -> 'PrOSV, trained factor'; 'prosv:smollm2' -> 'PrOSV, trained factor
  (preset smollm2)': a method with the training preset of its vectors (names: base -> text)."""
  base, variant = split_method(method)
  text = names.get(base, base)
  return f'{text} (preset {variant})' if variant else text


def _cell(stats: dict, key: str) -> str:
  return f'{stats[key]:.3f} ± {stats[key + "_std"]:.3f}'


def _ci(value: float, ci) -> str:
  """`0.431 [0.380, 0.492]`; the bare value when there is no interval."""
  return f'{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]' if ci else f'{value:.3f}'


def _diff(d: dict | None) -> str:
  """`+0.120 [+0.010, +0.230]`, naming the reference when it is not the default PrOSV."""
  if not d:
    return '-'
  ref = d.get('reference', 'prosv')
  return (f'{d["diff"]:+.3f} [{d["ci"][0]:+.3f}, {d["ci"][1]:+.3f}]'
          + ('' if ref == 'prosv' else f' (vs {ref})'))


def _main_table(results: dict) -> list[str]:
  lines = ['| method | instructions | concept | instruction | fluency | harmonic mean [95% CI] '
           '| − PrOSV [95% CI] | harmonic, 2nd half [95% CI] | − PrOSV, 2nd half |',
           '|---|---|---|---|---|---|---|---|---|']
  for method, r in results['methods'].items():
    m, late = r['mean'], r.get('second_half')
    lines.append(f'| {label(method)} | {r.get("instructions", "all")} | '
                 f'{_cell(m, "concept")} | {_cell(m, "instruction")} | {_cell(m, "fluency")} | '
                 f'**{_ci(m["harmonic"], m.get("harmonic_ci"))}** | {_diff(r.get("vs_prosv"))} | '
                 + (f'{_ci(late["harmonic"], late.get("harmonic_ci"))} | '
                    f'{_diff(late.get("vs_prosv"))} |' if late else '- | - |'))
  return lines


def _bootstrap_note(results: dict) -> list[str]:
  b = results.get('bootstrap')
  if not b:
    return []
  return ['', f'Intervals: paired bootstrap, {b["draws"]} draws (seed {b["seed"]}), '
          f'{b["level"]:.0%} percentile; resampled: {b["resample"]}; the statistic is the '
          'same mean per concept, then over concepts. "− PrOSV": the method minus PrOSV on the '
          'same units. "2nd half": the instructions a factor grid reports on (it selects on '
          'the first half); grid rows use only those, and are compared with PrOSV on them.']


def _halves_table(results: dict) -> list[str]:
  rows = [(m, r) for m, r in results['methods'].items() if r.get('response_halves')]
  if not rows:
    return []
  lines = ['', '**Response halves** (each response split at its token midpoint, both halves '
           'rated by the same judge; does the edit fade?):', '',
           '| method | concept: whole / 1st half / 2nd half | concept, 2nd − 1st half [95% CI] '
           '| harmonic: whole / 1st / 2nd |', '|---|---|---|---|']
  for method, r in rows:
    h = r['response_halves']
    parts = (r['mean'], h['first'], h['second'])
    lines.append(f'| {label(method)} | '
                 + ' / '.join(f'{p["concept"]:.3f}' for p in parts) + ' | '
                 + _diff(h.get('concept_change')) + ' | '
                 + ' / '.join(f'{p["harmonic"]:.3f}' for p in parts) + ' |')
  return lines


def _grid_tables(results: dict) -> list[str]:
  lines = []
  for method, g in (results.get('grid') or {}).items():
    kind = grid_of(method) or method
    gain = g.get('gain_over_trained')
    name = label(method, GRID_NAMES)
    lines += ['', f'**Factor grid, {name}**: multiplier of the trained '
              f'factor selected per concept on the first half. The trained factor (1x) was '
              f'picked for {g["trained_selected"]} of {g["concepts"]} concepts and was the best '
              f'on the reported half for {g["trained_best_on_report"]}'
              + (f'; the pick minus 1x on the reported half: {gain:+.3f}' if gain is not None
                 else '') + '.', '',
              '| concept | selected multiplier | trained factor | 1x picked '
              '| 1x best on 2nd half |',
              '|---|---|---|---|---|']
    for cid, c in g['per_concept'].items():
      factor = results['vectors'][kind]['factor'][cid]
      lines.append(f'| {cid} | {c["multiplier"]:g} | {factor:.2f} | '
                   f'{_yes(c["trained_selected"])} | {_yes(c["trained_best_on_report"])} |')
  return lines


def _yes(flag) -> str:
  return '-' if flag is None else ('yes' if flag else 'no')


def _verdict(results: dict) -> list[str]:
  """The claim's two questions in words, each with its interval (evaluate.verdict), for the
  default presets and for each training preset evaluated for both methods."""
  v = results.get('verdict') or {}
  lines = _verdict_lines(v, '')
  for preset, answers in (v.get('presets') or {}).items():
    lines += _verdict_lines(answers, f' (preset {preset})')
  for pair, answers in (v.get('across') or {}).items():
    lines += _verdict_lines(answers, f' ({pair.replace(" vs ", " against ")})')
  return ['**Verdict**:', '', *lines, ''] if lines else []


def _verdict_lines(v: dict, preset: str) -> list[str]:
  lines = []
  h = v.get('harmonic')
  if h:
    answer = {'above 0': 'yes, PrOSV is higher', 'below 0': 'no, PrOSV is lower',
              'spans 0': 'not separated (the interval spans 0)'}[h['side']]
    lines.append(f'- Is PrOSV\'s harmonic mean at least FSSV\'s{preset}? **{answer}**: PrOSV '
                 f'{h["prosv"]:.3f}, FSSV {h["fssv"]:.3f}, PrOSV − FSSV '
                 f'{_diff({"diff": h["prosv_minus_fssv"], "ci": h["ci"]})}.')
  u = v.get('utility')
  if u:
    answer = {'below 0': 'yes', 'above 0': 'no',
              'spans 0': 'not separated (the interval spans 0)'}[u['side']]
    lines.append(f'- Is PrOSV\'s utility loss at most half of FSSV\'s{preset}? **{answer}**: '
                 f'log-lik loss on own answers PrOSV {u["prosv"]:+.3f}, FSSV {u["fssv"]:+.3f} '
                 f'nats/token; PrOSV − FSSV/2 '
                 f'{_diff({"diff": u["prosv_minus_half_fssv"], "ci": u["ci"]})} (paired '
                 f'over {u["concepts"]} concepts).')
  return lines


def markdown(results: dict) -> str:
  lines = [f'Judge: `{results["judge"]}`; concepts: {results["concepts"]}; '
           f'{results["instructions"]["count"]} instructions per concept '
           f'({results["instructions"]["source"]}), {results["instructions"]["samples"]} '
           'generation(s) each. Values: mean over concepts ± spread (std) over concepts, or '
           'mean [95% bootstrap interval].', '']
  lines += _verdict(results)
  lines += _main_table(results)
  lines += _bootstrap_note(results)
  lines += _halves_table(results)
  lines += _grid_tables(results)
  if results.get('robustness'):
    lines += ['', '**Robustness** (instructions ask to avoid the concept):', '',
              '| method | concept | harmonic mean [95% CI] | − PrOSV [95% CI] | '
              'harmonic without attack |', '|---|---|---|---|---|']
    for method, r in results['robustness'].items():
      base = results['methods'][method]['mean']['harmonic']
      m = r['mean']
      lines.append(f'| {label(method)} | {_cell(m, "concept")} | '
                   f'{_ci(m["harmonic"], m.get("harmonic_ci"))} | {_diff(r.get("vs_prosv"))} | '
                   f'{base:.3f} |')
  if results.get('utility'):
    keys = sorted({k for r in results['utility'].values() for k in r
                   if not k.endswith(('_std', '_per_concept'))})
    names = {'loglik_loss': 'log-lik loss on own answers (nats/token)',
             'multiple_choice': 'multiple-choice accuracy', 'gsm8k': 'GSM8K accuracy'}
    lines += ['', '**Utility**:', '', '| method | ' + ' | '.join(names.get(k, k) for k in keys)
              + ' |', '|---|' + '---|' * len(keys)]
    for method, r in results['utility'].items():
      lines.append(f'| {label(method)} | '
                   + ' | '.join(f'{r[k]:.3f}' if k in r else '-' for k in keys) + ' |')
  return '\n'.join(lines) + '\n'


def plot(results: dict, folder: str, prefix: str = '') -> list[str]:
  """scores.png (harmonic mean per method, with the spread) and grid.png (score vs factor),
  named after `prefix` when given."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  paths = []
  methods = list(results['methods'])
  fig, ax = plt.subplots(figsize=(7, 3.5))
  means = np.array([results['methods'][m]['mean']['harmonic'] for m in methods])
  cis = [results['methods'][m]['mean'].get('harmonic_ci') for m in methods]
  if all(cis):  # the bootstrap interval; older results only have the spread over concepts
    err = np.abs(np.array(cis).T - means)
  else:
    err = [results['methods'][m]['mean']['harmonic_std'] for m in methods]
  ax.bar(range(len(methods)), means, yerr=err, capsize=4, color='#4c72b0')
  if results.get('robustness'):
    rob = [results['robustness'][m]['mean']['harmonic'] for m in methods]
    ax.scatter(range(len(methods)), rob, color='#c44e52', zorder=3,
               label='under avoid-the-concept attack')
    ax.legend(loc='upper left', fontsize=8)
  ax.set_xticks(range(len(methods)), [label(m) for m in methods], rotation=20,
                ha='right', fontsize=8)
  ax.set_ylabel('harmonic mean (0-2)')
  ax.set_title(f'steering score, judge {results["judge"]}', fontsize=9)
  fig.tight_layout()
  paths.append(os.path.join(folder, f'{prefix}scores.png'))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  if results.get('grid'):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, color in zip(results['grid'], ('#4c72b0', '#c44e52', '#55a868', '#8172b2',
                                               '#ccb974', '#64b5cd')):
      grid = results['grid'][method]['per_concept']
      mults = sorted({float(m) for g in grid.values() for m in g['select']})
      name = label(method, GRID_NAMES)
      for half, style in (('select', 'o-'), ('report', 's--')):
        ys = [np.mean([g[half][f'{m:g}'] for g in grid.values()]) for m in mults]
        ax.plot(mults, ys, style, color=color,
                label=f'{name}, ' + {'select': 'first half (selection)',
                                     'report': 'second half (reported)'}[half])
    ax.axvline(1.0, color='gray', lw=0.8, ls=':')
    ax.set_xscale('log', base=2)
    ax.set_xlabel('factor / trained factor')
    ax.set_ylabel('harmonic mean (0-2)')
    ax.set_title('factor grids, mean over concepts', fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(folder, f'{prefix}grid.png'))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
  return paths


def write_all(results: dict, folder: str, name: str = 'results') -> dict:
  """<name>.json, <name>.md and the plots (scores.png and grid.png for the default name,
  <name>_scores.png and <name>_grid.png for another) in folder."""
  os.makedirs(folder, exist_ok=True)
  out = {'results': os.path.join(folder, f'{name}.json'),
         'table': os.path.join(folder, f'{name}.md')}
  with open(out['results'], 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=1)
  with open(out['table'], 'w', encoding='utf-8') as f:
    f.write(markdown(results))
  out['plots'] = plot(results, folder, '' if name == 'results' else f'{name}_')
  return out
