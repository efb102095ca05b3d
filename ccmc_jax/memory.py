"""Peak-memory estimates of the experiments, as formulas of their flags.

Each function returns the :class:`Term` s that dominate one experiment's peak resident memory
(the arrays that are alive together at its largest stage, with XLA's temporaries), so a script
can refuse a setting before any work and name the flag behind it
(``ccmc_jax.io.check_memory``). Every coefficient was set from measured peak RSS (a fresh
process per setting: ``python -m benchmarks.memory``), rounded up: the estimate errs high
(within ~2x of the measured peak at those settings), never low. Pure: no absl, no files.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence, Tuple

GiB = 2 ** 30
F32 = 4
BASE = 0.5 * GiB  # Python, JAX, pandas and matplotlib loaded: 0.42-0.45 GiB measured


class Term(NamedTuple):
  """One part of a peak: ``bytes``, what it is, and the flags it grows with.

  ``flags`` holds ``(name, value, power)``: the term grows as ``value ** power``; the flag
  with the largest factor is the one an error names first.
  """
  bytes: float
  what: str
  flags: Tuple[Tuple[str, object, float], ...]


def peak(terms: Sequence[Term]) -> float:
  """Estimated peak resident bytes: :data:`BASE` plus every term (they are alive together)."""
  return BASE + sum(t.bytes for t in terms)


def factor(flag) -> float:
  """How much a ``(name, value, power)`` entry multiplies its term (0 if not a number)."""
  _, value, power = flag
  try:
    return abs(float(value)) ** power
  except (TypeError, ValueError, OverflowError):
    return 0.0


def driving_flags(term: Term):
  """The term's flags, largest factor first (ties keep the declared order)."""
  return sorted(term.flags, key=factor, reverse=True)


def _capacity(n, K, multiple=1024):
  """A per-row capacity of the grouped fit layout: n/K plus 8 standard deviations, rounded up
  to ``multiple`` (``fit.round_capacity``; the real one is the largest row of the data)."""
  c = n / K + 8 * math.sqrt(n / K) + 8
  return multiple * math.ceil(c / multiple)


def collapse(K, T, seeds, variants=2, window=0):
  """``experiments.collapse``: the seed sweep (``seeds`` scores and log-chains of K x K, vmapped,
  with their temporaries; the T uniforms; with a context ``window`` each seed's ring buffer of
  ``window`` tokens and its (window, K) one-hot start counts, ``trajectory.generate``) and the
  example trajectories (the (T, K) frequency trace of each variant and its ``T * K``-row CSV:
  ~300 bytes a row in pandas, as text and drawn). Window term measured (peak RSS over
  ``--window=0``): 0.50 GB at K=6, seeds=20, window=10^6; 0.42 GB at K=30, seeds=20,
  window=2 x 10^5, i.e. ~F32 * seeds * window * (K + 1); the term doubles that."""
  return [
      Term(2 * F32 * seeds * window * (K + 1),
           'the context windows (ring buffers and one-hot counts) of the vmapped seed sweep',
           (('window', window, 1), ('seeds', seeds, 1), ('K', K, 1))),
      Term(5 * F32 * seeds * K * K, 'the K x K chains of the vmapped seed sweep',
           (('seeds', seeds, 1), ('K', K, 2))),
      Term(2 * F32 * seeds * T, 'the uniforms of the seed sweep',
           (('seeds', seeds, 1), ('T', T, 1))),
      Term(300 * variants * T * K, 'the T x K rows of the example trajectories (collapse.csv)',
           (('T', T, 1), ('K', K, 1))),
  ]


def sample_complexity(K, L, n, trials, mc_samples):
  """``experiments.sample_complexity``, one (K, L) setting: the two data sets of every trial
  ((n, K) count vectors; Monte-Carlo (mc_samples, K)), the grouped (K, C, K) layouts of the fit
  and of the Fisher information with their temporaries (C ~ n/K rounded up to 1024), and the
  K rows' K x K Newton Hessians of every trial."""
  C, C_mc = _capacity(n, K), _capacity(mc_samples, K)
  # The Fisher information's layout (C_mc) is freed before the data's (C) is built.
  size = ('n', n, 1) if C >= C_mc else ('mc_samples', mc_samples, 1)
  return [
      Term(1.3 * F32 * trials * (n + mc_samples) * (K + L + 4),
           'the count vectors of the data and Monte-Carlo sets',
           (('trials', trials, 1), ('n', n, 1), ('mc_samples', mc_samples, 1), ('K', K, 1),
            ('L', L, 1))),
      Term(4 * F32 * trials * K * K * max(C, C_mc), 'the grouped (K, n/K, K) fit layouts',
           (('K', K, 2), size, ('trials', trials, 1))),
      Term(10 * F32 * trials * K ** 3, 'the K x K x K Hessians, Jacobians and Fisher matrices',
           (('K', K, 3), ('trials', trials, 1))),
  ]


def attention_equivalence(K, L, trials, prompts):
  """``experiments.attention_equivalence``, one (K, L) cell: the one-hot prompts, embedded keys
  and scores of every (trial, prompt) pair, vmapped over trials."""
  return [Term(3 * F32 * trials * prompts * L * K, 'the one-hot prompts of a cell, vmapped',
               (('prompts', prompts, 1), ('trials', trials, 1), ('L', L, 1), ('K', K, 1)))]


def positional_encoding(K, L, n, trials, eq_K, eq_L, eq_trials, eq_prompts, d_pos):
  """``experiments.positional_encoding``: the fit's prompts and answers of every trial (the
  chunked pass is small) and the largest equivalence cell's embedded prompts."""
  return [
      Term(3 * F32 * trials * n * (L + 2) + F32 * trials * K * K * L,
           'the prompts and answers of the positional fit',
           (('n', n, 1), ('trials', trials, 1), ('L', L, 1), ('K', K, 1))),
      Term(4 * F32 * eq_trials * eq_prompts * eq_L * (eq_K + d_pos),
           'the embedded prompts of an equivalence cell',
           (('eq_prompts', eq_prompts, 1), ('eq_trials', eq_trials, 1), ('eq_L', eq_L, 1),
            ('eq_K', eq_K, 1), ('d_pos', d_pos, 1))),
  ]


def self_vs_cross(K, L, n, trials):
  """``experiments.self_vs_cross``: the prompts and two data sets' (n, K) counts of every trial,
  and the grouped (K, C, K) layouts of both fits (self, cross) with their temporaries."""
  C = _capacity(n, K)
  return [
      Term(2 * F32 * trials * n * (L + 2 * K + 4), 'the prompts and counts of both data sets',
           (('n', n, 1), ('trials', trials, 1), ('K', K, 1), ('L', L, 1))),
      Term(2 * 5 * F32 * trials * K * K * C, 'the grouped (K, n/K, K) layouts of both fits',
           (('K', K, 2), ('n', n, 1), ('trials', trials, 1))),
      Term(2 * 4 * F32 * trials * K ** 3, 'the K x K x K Newton Hessians of both fits',
           (('K', K, 3), ('trials', trials, 1))),
  ]


def trajectory_learning(K, L0, T, trials):
  """``experiments.trajectory_learning``: both data sets (single trajectory, IID) of every trial
  as (T, K) counts, and the grouped (K, C, K) fit layout; the trajectory collapses onto a few
  rows, so a row can hold nearly all T samples (C up to T + L0)."""
  C = 256 * math.ceil((T + L0) / 256)
  return [
      Term(3 * F32 * 2 * trials * T * (K + L0 + 4), 'the (T, K) counts of both data sets',
           (('T', T, 1), ('trials', trials, 1), ('K', K, 1), ('L0', L0, 1))),
      Term(3 * F32 * 2 * trials * K * K * C, 'the grouped (K, T, K) fit layout of both sources',
           (('T', T, 1), ('K', K, 2), ('trials', trials, 1))),
  ]


def collapse_statistics(K, T, batch, seeds, prompt=None):
  """``experiments.collapse_statistics``: a vmapped batch of trajectories' (T, K) frequency
  traces and their winner masks (``min(batch, seeds)`` seeds at once), at the largest K; and
  the batch's (L0, K) one-hot prompts (``trajectory.generate``'s start counts), ``prompt``:
  ``((flag, L0), (flag, K))`` of the cell with the largest L0 * K (measured: 1.24 GB over the
  base at L0 = 10^5, K = 200, 16 seeds, i.e. ~F32 * seeds * L0 * K; the term is 1.5x that)."""
  size = ('seeds', seeds, 1) if seeds < batch else ('batch', batch, 1)
  terms = [Term(2 * F32 * min(batch, seeds) * T * K,
                'the (T, K) frequency traces of a batch of seeds',
                (('T', T, 1), size, ('K', K, 1)))]
  if prompt:
    (l_flag, L0), (k_flag, K_L0) = prompt
    terms.append(Term(1.5 * F32 * min(batch, seeds) * L0 * K_L0,
                      'the (L0, K) one-hot prompts of a batch of seeds',
                      ((l_flag, L0, 1), size, (k_flag, K_L0, 1))))
  return terms


def vocabulary_scaling(K, L, n, trials, trials_flag=None):
  """``experiments.vocabulary_scaling``, one cell: the (n, L) prompts, answers and per-position
  temporaries of the sparse fit for each of its ``trials``, plus the K x K scores and CG state.
  ``trials_flag``: the (flag, value) that set the cell's trials (default ``('trials', trials)``),
  e.g. ``('min_trials', 4)``."""
  ratio = n / K ** 2
  name, value = trials_flag or ('trials', trials)
  return [Term(F32 * trials * (10 * n * (L + 2) + 8 * K * K),
               'the prompts and per-position temporaries of a cell',
               (('n_over_K2', f'{ratio:g}', 1), ('K', K, 2), (name, value, 1), ('L', L, 1)))]


def real_text(K, L, T, prompts, grid, corpus_chars, corpus_flag):
  """``experiments.real_text``: the (K+1)^2 matrices of the fits and baselines (one per ridge
  and smoothing value of ``grid``, plus a few), the generated (prompts, T) tokens with their
  metrics, and the (n, L) prompts of every split (about one token per 3 characters)."""
  V = K + 1
  terms = [
      Term(F32 * V * V * (grid + 4), 'the (K+1) x (K+1) matrices of the fits', (('K', K, 2),)),
      Term(8 * 12 * prompts * T, 'the generated tokens and their metrics',
           (('T', T, 1), ('prompts', prompts, 1))),
  ]
  if corpus_chars:  # ``corpus_flag``: (flag name, value) of the corpus, e.g. ('corpus', 'kjv')
    terms.append(Term(8 * L * corpus_chars / 3, 'the (n, L) prompts of every split',
                      (('L', L, 1), (*corpus_flag, 0))))
  return terms


def gpt2(model_dir, parameters):
  """``experiments.gpt2_repetition``: the weights read as float64 and their float32 copy."""
  return [Term(8 * parameters, 'the GPT-2 weights', (('hf_model_dir', model_dir, 0),))]
