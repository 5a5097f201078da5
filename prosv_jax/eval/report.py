"""results.json -> results.md (tables) and plots (score per method; score against factor)."""

from __future__ import annotations

import json
import os

import numpy as np

LABELS = {
    'unsteered': 'unsteered',
    'prompting': 'prompting baseline',
    'fssv': 'FSSV, trained factor',
    'fssv_grid': 'FSSV, factor grid (selected)',
    'prosv': 'PrOSV, trained factor',
}


def _cell(stats: dict, key: str) -> str:
  return f'{stats[key]:.3f} ± {stats[key + "_std"]:.3f}'


def markdown(results: dict) -> str:
  lines = [f'Judge: `{results["judge"]}`; concepts: {results["concepts"]}; '
           f'{results["instructions"]["count"]} instructions per concept '
           f'({results["instructions"]["source"]}), {results["instructions"]["samples"]} '
           'generation(s) each. Values: mean over concepts ± spread (std) over concepts.',
           '',
           '| method | concept | instruction | fluency | harmonic mean | harmonic, 2nd half |',
           '|---|---|---|---|---|---|']
  for method, r in results['methods'].items():
    m = r['mean']
    lines.append(f'| {LABELS.get(method, method)} | {_cell(m, "concept")} | '
                 f'{_cell(m, "instruction")} | {_cell(m, "fluency")} | '
                 f'**{m["harmonic"]:.3f}** ± {m["harmonic_std"]:.3f} | '
                 f'{r["second_half"]["harmonic"]:.3f} |')
  lines.append('')
  lines.append('"2nd half": the instructions the factor grid reports on (it selects on the '
               'first half); the grid row uses only those.')
  if results.get('grid'):
    lines += ['', '**Factor grid (FSSV)**: multiplier of the trained factor selected per '
              'concept on the first half:', '',
              '| concept | selected multiplier | trained factor |', '|---|---|---|']
    for cid, g in results['grid'].items():
      factor = results['vectors']['fssv']['factor'][cid]
      lines.append(f'| {cid} | {g["multiplier"]:g} | {factor:.2f} |')
  if results.get('robustness'):
    lines += ['', '**Robustness** (instructions ask to avoid the concept):', '',
              '| method | concept | harmonic mean | harmonic without attack |', '|---|---|---|---|']
    for method, r in results['robustness'].items():
      base = results['methods'][method]['mean']['harmonic']
      lines.append(f'| {LABELS.get(method, method)} | {_cell(r["mean"], "concept")} | '
                   f'{_cell(r["mean"], "harmonic")} | {base:.3f} |')
  if results.get('utility'):
    keys = sorted({k for r in results['utility'].values() for k in r if not k.endswith('_std')})
    names = {'loglik_loss': 'log-lik loss on own answers (nats/token)',
             'multiple_choice': 'multiple-choice accuracy', 'gsm8k': 'GSM8K accuracy'}
    lines += ['', '**Utility**:', '', '| method | ' + ' | '.join(names.get(k, k) for k in keys)
              + ' |', '|---|' + '---|' * len(keys)]
    for method, r in results['utility'].items():
      lines.append(f'| {LABELS.get(method, method)} | '
                   + ' | '.join(f'{r[k]:.3f}' if k in r else '-' for k in keys) + ' |')
  return '\n'.join(lines) + '\n'


def plot(results: dict, folder: str) -> list[str]:
  """scores.png (harmonic mean per method, with the spread) and grid.png (score vs factor)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  paths = []
  methods = list(results['methods'])
  fig, ax = plt.subplots(figsize=(7, 3.5))
  means = [results['methods'][m]['mean']['harmonic'] for m in methods]
  stds = [results['methods'][m]['mean']['harmonic_std'] for m in methods]
  ax.bar(range(len(methods)), means, yerr=stds, capsize=4, color='#4c72b0')
  if results.get('robustness'):
    rob = [results['robustness'][m]['mean']['harmonic'] for m in methods]
    ax.scatter(range(len(methods)), rob, color='#c44e52', zorder=3,
               label='under avoid-the-concept attack')
    ax.legend(loc='upper left', fontsize=8)
  ax.set_xticks(range(len(methods)), [LABELS.get(m, m) for m in methods], rotation=20,
                ha='right', fontsize=8)
  ax.set_ylabel('harmonic mean (0-2)')
  ax.set_title(f'steering score, judge {results["judge"]}', fontsize=9)
  fig.tight_layout()
  paths.append(os.path.join(folder, 'scores.png'))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  if results.get('grid'):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    grid = results['grid']
    mults = sorted({float(m) for g in grid.values() for m in g['select']})
    for half, style in (('select', 'o-'), ('report', 's--')):
      ys = [np.mean([g[half][f'{m:g}'] for g in grid.values()]) for m in mults]
      ax.plot(mults, ys, style, label={'select': 'first half (selection)',
                                       'report': 'second half (reported)'}[half])
    ax.axvline(1.0, color='gray', lw=0.8, ls=':')
    ax.set_xlabel('factor / trained FSSV factor')
    ax.set_ylabel('harmonic mean (0-2)')
    ax.set_title('FSSV factor grid, mean over concepts', fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(folder, 'grid.png'))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
  return paths


def write_all(results: dict, folder: str) -> dict:
  os.makedirs(folder, exist_ok=True)
  out = {'results': os.path.join(folder, 'results.json'),
         'table': os.path.join(folder, 'results.md')}
  with open(out['results'], 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=1)
  with open(out['table'], 'w', encoding='utf-8') as f:
    f.write(markdown(results))
  out['plots'] = plot(results, folder)
  return out
