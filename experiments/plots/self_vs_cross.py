"""Self- vs cross-attention (paper Fig. 3, Thm 3.4) from the self_vs_cross CSVs only."""
from __future__ import annotations

import numpy as np

from ccmc_jax import io
from ccmc_jax.trials import self_vs_cross as trials
from experiments.plots import style

ERROR = r'$\|\hat P - P^*\|_F^2$'


def draw_graph(ax, g):
  """Panel (a): G_k with nodes on a circle, edges (width ~ count), components coloured."""
  nodes = g[g['kind'] == 'node'].sort_values('i')
  edges = g[g['kind'] == 'edge']
  K, query = int(nodes['K'].iloc[0]), int(nodes['query'].iloc[0])
  angle = np.pi / 2 - 2 * np.pi * np.arange(K) / K
  xy = np.stack([np.cos(angle), np.sin(angle)], 1)
  colors = style.pyplot().rcParams['axes.prop_cycle'].by_key()['color']
  for _, e in edges.iterrows():
    (x0, y0), (x1, y1) = xy[int(e['i'])], xy[int(e['j'])]
    ax.plot([x0, x1], [y0, y1], '-', color=colors[int(e['component']) % len(colors)],
            lw=1.5 + 1.5 * (e['count'] - 1), alpha=0.7, zorder=1)
  for _, v in nodes.iterrows():
    t, c = int(v['i']), int(v['component'])
    face = colors[c % len(colors)] if c >= 0 else 'white'
    ax.scatter(*xy[t], s=900, color=face, edgecolors='k', zorder=2,
               linestyle='-' if c >= 0 else '--', linewidths=3 if t == query else 1)
    ax.text(*xy[t], str(t), ha='center', va='center', fontsize=13, zorder=3,
            color='k' if c < 0 else 'white', weight='bold')
  n_comp = int(nodes['component'].max()) + 1
  uncovered = nodes[nodes['component'] < 0]['i'].astype(int).tolist()
  ident = bool(g['identifiable'].iloc[0])
  attention = g['attention'].iloc[0]
  what = f'{n_comp} component{"s" if n_comp != 1 else ""}'
  if uncovered:
    what += f', token{"s" if len(uncovered) > 1 else ""} {",".join(map(str, uncovered))} never a key'
  ax.set_title(f'{attention}-attention, query {query}: $G_{{{query}}}$\n{what}\n'
               f'row {query} of P identifiable: {"yes" if ident else "NO"}',
               color='k' if ident else 'firebrick', fontsize=10)
  prompts = g[g['kind'] == 'prompt'].sort_values('i')
  lines = ['prompt X      key set']
  for tok in prompts['tokens']:
    t = [int(v) for v in tok.split()]
    keys = sorted(set(t[:-1] if attention == 'cross' else t))
    line = f'[{" ".join(map(str, t))}]'.ljust(14) + '{' + ','.join(map(str, keys)) + '}'
    lines.append(line + ('' if t[-1] == query else f'  query {t[-1]}: not in $G_{{{query}}}$'))
  ax.text(-1.3, -1.3, '\n'.join(lines), ha='left', va='top', fontsize=8, family='monospace')
  ax.set(xlim=(-1.4, 1.4), ylim=(-1.35 - 0.2 * len(lines), 1.3), aspect='equal')
  ax.axis('off')


def plot(csv_path, graph_path):
  """The two graphs of panel (a) and error vs n (panel b). Returns the Figure."""
  df = io.read_csv(csv_path, required=['attention'], positive_int=['K', 'L', 'n'],
                   nonnegative_int=['trial', 'identifiable_rows'],
                   nonnegative=['error', 'predicted_floor'], nonempty=True)
  graph = io.read_csv(graph_path, required=['attention', 'kind', 'tokens'], positive_int=['K'],
                      nonnegative_int=['i', 'query', 'count'], finite=['j', 'component'],
                      probability=['identifiable'], nonempty=True)
  graph['tokens'] = graph['tokens'].fillna('').astype(str)
  fig, axes = style.subplots(1, 3, figsize=(16, 5.8), gridspec_kw={'width_ratios': [1, 1, 1.5]})
  for ax, attention in zip(axes[:2], trials.ATTENTIONS):
    draw_graph(ax, graph[graph['attention'] == attention])
  ax = axes[2]
  stats = trials.summary(df)
  K, L = int(df['K'].iloc[0]), int(df['L'].iloc[0])
  for attention, color in zip(trials.ATTENTIONS, ('tab:blue', 'tab:red')):
    d = df[df['attention'] == attention]
    if d.empty:
      continue
    g = d.groupby('n')
    lo, hi = int(g['identifiable_rows'].min().min()), int(g['identifiable_rows'].max().max())
    ident = f'{lo}' if lo == hi else f'{lo}–{hi}'
    slope = stats.get(f'{attention}_slope', np.nan)
    label = (style.slope_label(attention, slope) if attention == 'self' else
             f'{attention}: floor {g["error"].mean().iloc[-1]:.2g} (slope {slope:.2f})')
    n, _ = style.mean_band(ax, d, 'n', 'error', color, log=True,
                           label=f'{label}; identifiable rows {ident}/{K}')
    floor = g['predicted_floor'].mean()
    if attention == 'cross' and (floor > 0).all():
      ax.plot(n, floor, '--', color=color, lw=1.2,
              label=f'cross: predicted plateau {floor.iloc[-1]:.2g} (min-norm limit)')
  self_mean = df[df['attention'] == 'self'].groupby('n')['error'].mean()
  if len(self_mean):
    n = self_mean.index.values
    ax.plot(n, self_mean.iloc[-1] * n[-1] / n, ':', color='gray', lw=1, label='∝ 1/n')
  ratio = stats.get('cross_self_ratio_at_max_n')
  title = (f'(b) two-group prompts, K={K}, L={L}: {style.BAND} '
           f'({df["trial"].nunique()} trials)')
  if ratio is not None:
    title += f'\ncross/self error at n={int(df["n"].max()):,}: {ratio:.0f}x'
  ax.set(xscale='log', yscale='log', xlabel='n (IID prompts)', ylabel=ERROR, title=title)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=8, loc='lower left', title='identifiable rows: cooccurrence_graph of each '
            "trial's first n prompts", title_fontsize=7)
  L_graph = len(graph[graph['kind'] == 'prompt']['tokens'].iloc[0].split())
  fig.suptitle(f'Self- vs cross-attention (paper Fig. 3, Thm 3.4). (a) co-occurrence graphs of '
               f'{(graph["kind"] == "prompt").sum() // 2} hand-written prompts of length '
               f'L = {L_graph}\n(tokens 0-indexed; thick ring = query; dashed = never a key): an '
               f'illustration, apart from (b), the MLE on random prompts of length L = {L}',
               fontsize=11)
  fig.tight_layout()
  return fig
