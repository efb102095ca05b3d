"""Shared figure style: the matplotlib set-up (once), the one error-band convention, slopes in
legends, annotated heat maps and atomic saving. Every figure module draws through these.

Band convention (every figure with trials): the line is the MEAN over trials and the shaded
band is mean ± 1 standard deviation over trials, clipped to the quantity's range (``lo``/``hi``:
e.g. [0, 1] for a frequency; on a log axis the lower edge is clipped at mean / 10 where
mean − sd <= 0). The mean always lies inside its own band. ``BAND`` is the text each figure
states in its title or caption.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from ccmc_jax import io

BAND = 'mean ± 1 sd over trials'
LOG_FLOOR = 0.1  # on a log axis the band's lower edge is at least mean * LOG_FLOOR
RC = {'savefig.dpi': 150, 'legend.fontsize': 8, 'legend.framealpha': 0.85}


@functools.lru_cache(maxsize=None)
def pyplot():
  """``matplotlib.pyplot`` with the Agg backend (no display) and the project's rcParams."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  plt.rcParams.update(RC)
  return plt


def subplots(*args, **kw):
  """``plt.subplots`` after the style set-up."""
  return pyplot().subplots(*args, **kw)


def band_edges(mean, sd, lo=None, hi=None, log=False):
  """(lower, upper) of the band mean ± sd, clipped to [lo, hi]; with ``log`` the lower edge is
  at least mean * LOG_FLOOR (a log axis cannot show <= 0)."""
  mean, sd = np.asarray(mean, np.float64), np.nan_to_num(np.asarray(sd, np.float64))
  lower, upper = mean - sd, mean + sd
  if log:
    lower = np.maximum(lower, mean * LOG_FLOOR)
  if lo is not None:
    lower = np.maximum(lower, lo)
  if hi is not None:
    upper = np.minimum(upper, hi)
  return lower, upper


def mean_band(ax, frame, x, y, color, label=None, lo=None, hi=None, log=False, fmt='o-',
              **line_kw):
  """Plot the mean of ``y`` over the rows (trials) at each ``x`` of ``frame`` as a line and
  mean ± 1 sd as a band (see the module doc). Returns (x values, means) as arrays."""
  g = frame.groupby(x)[y]
  mean, sd = g.mean(), g.std().fillna(0.0)
  xs = mean.index.to_numpy()
  lower, upper = band_edges(mean.to_numpy(), sd.to_numpy(), lo, hi, log)
  ax.plot(xs, mean.to_numpy(), fmt, color=color, label=label, **line_kw)
  ax.fill_between(xs, lower, upper, color=color, alpha=0.2, lw=0)
  return xs, mean.to_numpy()


def slope_label(name, slope):
  """Legend text ``'<name>: slope -1.00'`` (the fitted log-log slope; 'n/a' if undefined)."""
  if slope is None or not np.isfinite(slope):
    return f'{name}: slope n/a'
  return f'{name}: slope {slope:.2f}'


def text_color(rgba):
  """Black or white, whichever reads better on a cell of colour ``rgba``."""
  r, g, b = rgba[:3]
  return 'white' if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else 'black'


def annotated_heatmap(ax, M, title, highlight_row=None, cmap='Blues', fmt='.2f',
                      symmetric=False, one_indexed=True):
  """K x K heat map with every entry written in its cell (token labels 1-indexed by default);
  ``highlight_row`` is boxed in red; ``symmetric`` centres the colour map on 0."""
  import matplotlib.patches as mpatches  # pylint: disable=import-outside-toplevel
  M = np.asarray(M)
  K = M.shape[0]
  vmax = np.nanmax(np.abs(M)) if symmetric else None
  im = ax.imshow(M, cmap=cmap, vmin=-vmax if symmetric else None, vmax=vmax)
  for (i, j), v in np.ndenumerate(M):
    ax.text(j, i, format(v, fmt), ha='center', va='center', fontsize=max(6, 11 - K // 2),
            color=text_color(im.cmap(im.norm(v))))
  ticks = range(K)
  labels = [str(k + int(one_indexed)) for k in ticks]
  ax.set(xticks=ticks, yticks=ticks, xticklabels=labels, yticklabels=labels, title=title)
  if highlight_row is not None:
    ax.add_patch(mpatches.Rectangle((-0.5, highlight_row - 0.5), K, 1, fill=False,
                                    edgecolor='tab:red', lw=2.5, clip_on=False))
  return im


def save(fig, folder, name, close=True):
  """Write ``folder/name.png`` and ``.pdf`` atomically (a uniquely named temporary file in the
  same folder, then a rename; an interrupted or failed save leaves no temporary file and the
  previous figure intact) with reproducible metadata. Returns the two paths."""
  paths = []
  for ext in ('png', 'pdf'):
    path = os.path.join(folder, f'{name}.{ext}')
    io.atomic_write(path, lambda f, ext=ext: fig.savefig(
        f, format=ext, dpi=150, bbox_inches='tight',
        metadata={'CreationDate': None} if ext == 'pdf' else {'Software': None}), 'wb')
    paths.append(path)
  if close:
    pyplot().close(fig)
  return paths
