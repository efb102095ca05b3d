"""Positional encoding: the position-weighted CCMC (paper Definition 2.4 / Lemma 2.5).

With keys e_{x_i} + p_i and position vectors that carry no token identity (C p_i = 0), attention
is a CCMC whose counts are replaced by position weights:
pi^X_k ∝ P[x_L, k] * sum_{i: x_i = k} w_i (paper Lemma 2.5; docs/theory.md Sec. 6). Two parts:

(a) Equivalence. For every cell (K, L, attention) of --eq_K x --eq_L x --eq_attention, --eq_trials
    draws each compare the literal attention forward pass with the positional CCMC on
    --eq_prompts uniform prompts, by three routes (column `route`):
      embedding      generic embeddings: a random rotation Q (d = K + d_pos), E = Q[:K], positions
                     in the complement p_i = Q[K:]^T g_i (so C = E has C E^T = I, C p_i = 0),
                     W ~ N(0, scale^2); CCMC from positional.attention_to_positional_ccmc ->
                     model.positional_ccmc_next_token_probs (query-dependent weights w_i(x_L));
      embedding_log  the same, through positional.positional_log_probs (log space);
      bias           the learnable-bias model (A, b), A ~ N(0, scale^2), b ~ N(0, pos_scale^2),
                     realised as attention by positional.embed_position_bias (d = K + 1).
(b) Joint MLE. --trials ground truths (A* ~ N(0, scale^2), b* of kind --bias, w* = exp(b*)), n_max
    IID samples y ~ pi^X(A*, b*) with uniform prompts each; positional.fit_positional for every
    n of --n (n traced, data padded to n_max: one compilation for the whole sweep, vmap over
    trials; each n warm-starts from the estimate at the previous n). Gauge: the global scale of
    w (b -> b + c) and a per-row shift of A are not identifiable, so the metrics compare
    P = softmax(A) and w / sum(w) = softmax(b): P_error = ||P_hat - P*||_F^2 and
    w_error = ||w_hat/sum(w_hat) - w*/sum(w*)||_2^2. Both decay ~1/n (fitted slopes reported).

Outputs:
  results/positional_encoding.csv              K, L, cross, n, trial, metric (P_error, w_error),
                                               seed, error, newton_iters, invalid
  results/positional_encoding_weights.csv      K, L, cross, n, trial, position (0-indexed),
                                               seed, w_true, w_hat (normalised weights)
  results/positional_encoding_equivalence.csv  K, L, cross, route, trial, seed, prompts,
                                               max_abs_diff, mean_abs_diff
  figures/positional_encoding.{png,pdf}

  python -m experiments.positional_encoding --K=5 --L=8 --n=1000,10000,100000 --trials=20
"""
from __future__ import annotations

import functools
import time

from absl import flags
import numpy as np

from experiments import common

flags.adopt_module_key_flags(common)  # --seed, --quick, ... appear in --help

_K = flags.DEFINE_integer('K', 5, 'Vocabulary size K of the MLE part (paper Sec. 2), in [2, 50].')
_L = flags.DEFINE_integer('L', 8, 'Prompt length L of the MLE part (paper Sec. 2), >= 3: with '
                          'L = 2 the query-position weight is confounded with diag(A).')
_N = flags.DEFINE_list('n', ['1000', '2154', '4642', '10000', '21544', '46416', '100000'],
                       'Sample sizes n: IID (prompt, next token) pairs (paper Sec. 3).')
_TRIALS = flags.DEFINE_integer('trials', 20, 'Independent ground truths and data sets, >= 1.')
_SCALE = flags.DEFINE_float('scale', 1.0, 'Scores A* ~ N(0, scale^2) and attention weights '
                            'W ~ N(0, scale^2); in (0, 50].')
_BIAS = flags.DEFINE_string('bias', 'random', 'Ground-truth position log-weights b*: random '
                            '(b_i ~ N(0, b_scale^2)) or recency (linear ramp -b_scale..b_scale).')
_B_SCALE = flags.DEFINE_float('b_scale', 1.0, 'Scale of b* (w*_i = exp(b*_i)); in (0, 10].')
_RIDGE = flags.DEFINE_float('ridge', 1e-6, 'Ridge (ridge/2)(||A||^2 + ||b||^2) on the NLL; >= 0.')
_CROSS = flags.DEFINE_bool('cross', False, 'MLE part with cross-attention (the query is not a '
                           'key; b* then has L - 1 free entries).')
_EQ_K = flags.DEFINE_list('eq_K', ['3', '5', '10'], 'Vocabulary sizes K of the equivalence '
                          'check, in [2, 200].')
_EQ_L = flags.DEFINE_list('eq_L', ['3', '20'], 'Prompt lengths L of the equivalence check, '
                          'in [2, 1000].')
_EQ_ATT = flags.DEFINE_list('eq_attention', ['self', 'cross'], 'Attention kinds of the '
                            'equivalence check: self and/or cross.')
_EQ_TRIALS = flags.DEFINE_integer('eq_trials', 100, 'Draws of (W, E, positions, A, b) per '
                                  'equivalence cell, >= 1.')
_EQ_PROMPTS = flags.DEFINE_integer('eq_prompts', 20, 'Uniform prompts X per draw, >= 1: a cell '
                                   'compares eq_trials * eq_prompts triples per route.')
_D_POS = flags.DEFINE_integer('d_pos', 4, 'Extra embedding dimensions holding the positions '
                              '(d = K + d_pos), in [1, 100].')
_POS_SCALE = flags.DEFINE_float('pos_scale', 1.0, 'Position embeddings g_i ~ N(0, pos_scale^2) '
                                '(and bias route b ~ N(0, pos_scale^2)); in (0, 10].')
_TOL = flags.DEFINE_float('tol', 1e-5, 'Tolerance on max |attention - positional CCMC|; > 0.')

NAME = 'positional_encoding'
WEIGHTS_NAME = NAME + '_weights'
EQ_NAME = NAME + '_equivalence'
KEYS = ['K', 'L', 'cross', 'n', 'trial', 'metric']
WEIGHT_KEYS = ['K', 'L', 'cross', 'n', 'trial', 'position']
EQ_KEYS = ['K', 'L', 'cross', 'route', 'trial']
METRICS = ('P_error', 'w_error')
ROUTES = ('embedding', 'embedding_log', 'bias')
FLAG_NAMES = ['K', 'L', 'n', 'trials', 'scale', 'bias', 'b_scale', 'ridge', 'cross', 'eq_K',
              'eq_L', 'eq_attention', 'eq_trials', 'eq_prompts', 'd_pos', 'pos_scale', 'tol']


def apply_quick():
  """--quick: tiny settings for a smoke run (only flags the user did not set)."""
  quick = {'K': 3, 'L': 4, 'n': ['300', '1000', '3000'], 'trials': 3, 'eq_K': ['3'],
           'eq_L': ['3', '6'], 'eq_trials': 10, 'eq_prompts': 10}
  for name, value in quick.items():
    if not flags.FLAGS[name].present:
      flags.FLAGS[name].value = value


def eq_cells():
  """The (K, L, cross) cells of the equivalence check."""
  return [(int(K), int(L), a == 'cross') for a in dict.fromkeys(_EQ_ATT.value)
          for K in dict.fromkeys(_EQ_K.value) for L in dict.fromkeys(_EQ_L.value)]


def validate():
  """One-line errors for bad flags, before any work."""
  from ccmc_jax import positional  # pylint: disable=import-outside-toplevel
  common.check_int('K', _K.value, 2, 50)
  common.check_int('L', _L.value, 3, 1000)
  common.check_int('n', _N.value, 1, 10 ** 7)
  common.check_int('trials', _TRIALS.value, 1)
  common.check_float('scale', _SCALE.value, 0, 50, lo_open=True)
  common.check_choice('bias', _BIAS.value, positional.BIAS_KINDS)
  common.check_float('b_scale', _B_SCALE.value, 0, 10, lo_open=True)
  common.check_float('ridge', _RIDGE.value, 0)
  common.check_int('eq_K', _EQ_K.value, 2, 200)
  common.check_int('eq_L', _EQ_L.value, 2, 1000)
  common.check_choice('eq_attention', _EQ_ATT.value, ['self', 'cross'])
  if not _EQ_ATT.value:
    raise common.FlagError('--eq_attention is empty: allowed values are self, cross')
  common.check_int('eq_trials', _EQ_TRIALS.value, 1)
  common.check_int('eq_prompts', _EQ_PROMPTS.value, 1)
  common.check_int('d_pos', _D_POS.value, 1, 100)
  common.check_float('pos_scale', _POS_SCALE.value, 0, 10, lo_open=True)
  common.check_float('tol', _TOL.value, 0, lo_open=True)
  n_max, L = max(int(v) for v in _N.value), _L.value
  # Prompts and answers of all trials, plus the chunked pass (small), float32/int32.
  common.check_memory('n', n_max, 4 * _TRIALS.value * n_max * (L + 2) * 2)
  for Ke, Le, _ in eq_cells():
    d = Ke + _D_POS.value
    common.check_memory('eq_prompts', _EQ_PROMPTS.value,
                        4 * 4 * _EQ_TRIALS.value * _EQ_PROMPTS.value * Le * max(d, Ke))
  common.check_writable_dir('results_dir', flags.FLAGS.results_dir)
  common.check_writable_dir('figures_dir', flags.FLAGS.figures_dir)


def _root(seed, *values):
  import jax  # pylint: disable=import-outside-toplevel
  key = jax.random.PRNGKey(seed)
  for v in values:
    key = jax.random.fold_in(key, v)
  return key


def trial_keys(root, trials):
  """Key of trial i: fold_in(root, i)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(trials))


# ----------------------------------------------------------------------------- (a) equivalence


@functools.lru_cache(maxsize=None)
def _eq_sampler(K_max, L_max, d_pos, prompts):
  """jit(lax.map over draws) of the randomness of an equivalence cell, at the largest K and L.

  A cell takes leading blocks. One shape for the whole check makes this the only compiled
  program holding the PRNG (threefry under vmap compiles ~3x slower on CPU than under lax.map).
  """
  import jax  # pylint: disable=import-outside-toplevel
  d = K_max + d_pos

  def draw(key):
    q_key, w_key, g_key, x_key, a_key, b_key = jax.random.split(key, 6)
    return (jax.random.normal(q_key, (d, d)), jax.random.normal(w_key, (d, d)),
            jax.random.normal(g_key, (L_max, d_pos)), jax.random.uniform(x_key, (prompts, L_max)),
            jax.random.normal(a_key, (K_max, K_max)), jax.random.normal(b_key, (L_max,)))

  return jax.jit(lambda keys: jax.lax.map(draw, keys))


@functools.lru_cache(maxsize=None)
def _eq_cell(K, L, crosses, d_pos, scale, pos_scale):
  """jit(vmap over draws) of one (K, L) equivalence cell: max/mean |attention - CCMC| per
  attention kind in ``crosses`` and per route. No PRNG inside (see _eq_sampler)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ccmc_jax import model, positional  # pylint: disable=import-outside-toplevel
  d = K + d_pos

  def draw(Qn, Wn, G, U, An, bn):
    Q, _ = jnp.linalg.qr(Qn[:d, :d])  # a random rotation of R^d
    E, complement = Q[:, :K].T, Q[:, K:].T  # orthonormal rows: C = E gives C E^T = I
    pos = pos_scale * G[:L] @ complement  # C p_i = 0: positions carry no token identity
    W = scale * Wn[:d, :d]
    X = jnp.minimum(jnp.floor(U[:, :L] * K), K - 1).astype(jnp.int32)  # uniform prompts
    q = X[:, -1]
    A, b = scale * An[:K, :K], pos_scale * bn[:L]
    W_b, E_b, pos_b = positional.embed_position_bias(A, b)
    P_eff, log_w = positional.attention_to_positional_ccmc(W, E, pos)
    out = []
    for cross in crosses:
      att = model.attention_next_token_probs(W, X, E, cross, pos=pos)
      via_w = model.positional_ccmc_next_token_probs(P_eff, X, jnp.exp(log_w)[q], cross)
      via_log = jnp.exp(positional.positional_log_probs(jnp.log(P_eff), log_w[q], X, cross))
      att_b = model.attention_next_token_probs(W_b, X, E_b, cross, pos=pos_b)
      via_b = jnp.exp(positional.positional_log_probs(A, b, X, cross))
      out.append(jnp.stack([jnp.abs(att - via_w), jnp.abs(att - via_log),
                            jnp.abs(att_b - via_b)]))
    diffs = jnp.stack(out)  # (crosses, routes, prompts, K)
    return diffs.max(axis=(2, 3)), diffs.mean(axis=(2, 3))

  return jax.jit(jax.vmap(draw))


def run_equivalence(results):
  """Every equivalence cell not yet in ``results``; rows written after each (K, L)."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  trials, prompts, seed, start = _EQ_TRIALS.value, _EQ_PROMPTS.value, flags.FLAGS.seed, time.time()
  cells = eq_cells()
  pairs = list(dict.fromkeys((K, L) for K, L, _ in cells))
  sampler = _eq_sampler(max(K for K, _ in pairs), max(L for _, L in pairs), _D_POS.value, prompts)
  for c, (K, L) in enumerate(pairs):
    crosses = tuple(cr for Kc, Lc, cr in cells if (Kc, Lc) == (K, L)
                    and not results.done({'K': K, 'L': L, 'cross': int(cr)}))
    if not crosses:
      continue
    draws = sampler(trial_keys(_root(seed, 1, K, L), trials))
    max_d, mean_d = map(np.asarray, _eq_cell(K, L, crosses, _D_POS.value, _SCALE.value,
                                              _POS_SCALE.value)(*draws))
    results.add(pd.concat([pd.DataFrame({
        'K': K, 'L': L, 'cross': int(cross), 'route': route, 'trial': np.arange(trials),
        'seed': seed, 'prompts': prompts, 'max_abs_diff': max_d[:, a, r],
        'mean_abs_diff': mean_d[:, a, r]})
        for a, cross in enumerate(crosses) for r, route in enumerate(ROUTES)], ignore_index=True))
    common.progress(f'{NAME}: equivalence K={K} L={L} ({c + 1}/{len(pairs)}): '
                    f'{trials * prompts} triples per route and attention kind, '
                    f'max |attention - CCMC| = {max_d.max():.2e}', start)


# ----------------------------------------------------------------------------- (b) joint MLE


@functools.lru_cache(maxsize=None)
def _generate(K, L, n_max, scale, bias, b_scale, cross):
  """jit(lax.map over trials) of the ground truths and data (lax.map: threefry under vmap
  compiles several times slower on CPU, see sample_complexity)."""
  import jax  # pylint: disable=import-outside-toplevel
  from ccmc_jax import positional, sampling  # pylint: disable=import-outside-toplevel
  prompt_fn = sampling.uniform_prompt(K, L)

  def make_trial(key):
    a_key, b_key, data_key = jax.random.split(key, 3)
    A = sampling.sample_scores(a_key, K, scale)
    b = positional.sample_position_bias(b_key, L, b_scale, bias)
    return A, b, positional.sample_positional_dataset(data_key, A, b, n_max, L, prompt_fn, cross)

  return jax.jit(lambda keys: jax.lax.map(make_trial, keys))


@functools.lru_cache(maxsize=None)
def _fit_sweep(K, cross, ridge):
  """jit(vmap over trials) of the fits at every n of the sweep (``ns`` traced: one compilation).

  A lax.scan over ``ns``; each fit starts from the previous n's estimate (the first from 0), so
  the later fits need ~3 Newton passes, each over the first n samples only.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ccmc_jax import fit, positional  # pylint: disable=import-outside-toplevel

  def sweep(data, A, b, ns):
    Lk = data.X.shape[-1] - int(cross)

    def one(start, n):
      r = positional.fit_positional(data, K, n, cross, ridge=ridge, init=start)
      out = (fit.p_error(r.A_hat, A), positional.w_error(r.b_hat, b),
             positional.normalized_weights(r.b_hat), r.iters, r.invalid)
      return (r.A_hat, r.b_hat), out

    start = (jnp.zeros((K, K), jnp.float32), jnp.zeros((Lk,), jnp.float32))
    return jax.lax.scan(one, start, ns)[1]

  return jax.jit(jax.vmap(sweep, in_axes=(0, 0, 0, None)))


def run_fit(results, weights):
  """The n sweep of the joint MLE (skipped when already in ``results``)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from ccmc_jax import positional  # pylint: disable=import-outside-toplevel
  K, L, cross, trials, seed = _K.value, _L.value, _CROSS.value, _TRIALS.value, flags.FLAGS.seed
  setting = {'K': K, 'L': L, 'cross': int(cross)}
  if results.done(setting):
    return
  start = time.time()
  ns = sorted({int(v) for v in _N.value})
  gen = _generate(K, L, max(ns), _SCALE.value, _BIAS.value, _B_SCALE.value, cross)
  A, b, data = gen(trial_keys(_root(seed, 2, K, L, int(cross)), trials))
  common.progress(f'{NAME}: sampled {trials} x {max(ns)} (prompt, next token) pairs', start)
  p_err, w_err, w_hat, iters, invalid = map(np.asarray, _fit_sweep(K, cross, _RIDGE.value)(
      data, A, b, jnp.asarray(ns, jnp.int32)))
  assert not invalid.any(), 'an answer absent from its prompt'  # by construction of the sampler
  Lk = w_hat.shape[-1]
  w_true = np.asarray(positional.normalized_weights(b[:, :Lk]))
  frames, wframes = [], []
  for j, n in enumerate(ns):
    for metric, err in (('P_error', p_err[:, j]), ('w_error', w_err[:, j])):
      frames.append(pd.DataFrame({**setting, 'n': n, 'trial': np.arange(trials),
                                  'metric': metric, 'seed': seed, 'error': err,
                                  'newton_iters': iters[:, j], 'invalid': invalid[:, j]}))
    wframes.append(pd.DataFrame({
        **setting, 'n': n, 'trial': np.repeat(np.arange(trials), Lk),
        'position': np.tile(np.arange(Lk), trials), 'seed': seed,
        'w_true': w_true.reshape(-1), 'w_hat': w_hat[:, j].reshape(-1)}))
    common.progress(f'{NAME}: K={K} L={L} n={n}: mean ||P_hat - P*||^2 = {p_err[:, j].mean():.3g}, '
                    f'mean ||w_hat - w*||^2 = {w_err[:, j].mean():.3g} (normalised w), '
                    f'Newton iterations <= {iters[:, j].max()}', start)
  # Weights first: a setting present in `results` always has its weights (for --resume).
  weights.add(pd.concat(wframes, ignore_index=True))
  results.add(pd.concat(frames, ignore_index=True))


def slopes(df):
  """Least-squares slope of log(mean error) vs log(n), per metric."""
  out = {}
  for metric, g in df.groupby('metric'):
    m = g.groupby('n')['error'].mean()
    if len(m) >= 2:
      out[metric] = float(np.polyfit(np.log(m.index.values), np.log(m.values), 1)[0])
  return out


def eq_summary(df):
  """Worst difference overall, triples compared per route, and the per-cell worst values."""
  per_cell = df.groupby(['K', 'L', 'cross', 'route']).agg(
      max_abs_diff=('max_abs_diff', 'max'), triples=('prompts', 'sum')).reset_index()
  return float(df['max_abs_diff'].max()), int(per_cell['triples'].min()), per_cell


# ----------------------------------------------------------------------------- figure


def plot(csv_path, weights_path, eq_path):
  """Figure from the CSVs only: equivalence per cell, error vs n, recovered position weights."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from ccmc_jax import io  # pylint: disable=import-outside-toplevel
  num = ['K', 'L', 'cross', 'n', 'trial', 'error']
  df = io.read_csv(csv_path, required=KEYS + ['error'], numeric=num)
  wdf = io.read_csv(weights_path, required=WEIGHT_KEYS + ['w_true', 'w_hat'],
                    numeric=WEIGHT_KEYS + ['w_true', 'w_hat'])
  eq = io.read_csv(eq_path, required=EQ_KEYS + ['max_abs_diff', 'prompts'],
                   numeric=['K', 'L', 'cross', 'trial', 'max_abs_diff', 'prompts'])
  for frame, path in ((df, csv_path), (wdf, weights_path), (eq, eq_path)):
    if frame.empty:
      raise io.ResultsError(f'{path} has no rows')
  tol = _TOL.value
  fig, axes = plt.subplots(1, 3, figsize=(18, 5.2), gridspec_kw={'width_ratios': [1.3, 1, 1]})

  # (a) equivalence: worst |difference| per cell and route.
  worst, triples, per_cell = eq_summary(eq)
  ax = axes[0]
  cells = per_cell[['K', 'L', 'cross']].drop_duplicates().reset_index(drop=True)
  x = np.arange(len(cells))
  width = 0.8 / len(ROUTES)
  floor = np.finfo(np.float32).eps / 16  # exact zeros drawn at the axis floor
  colors = dict(zip(ROUTES, ('tab:blue', 'tab:cyan', 'tab:orange')))
  labels = {'embedding': 'generic embeddings → positional_ccmc_next_token_probs',
            'embedding_log': 'generic embeddings → positional_log_probs',
            'bias': 'learnable bias b (embed_position_bias) → positional_log_probs'}
  for r, route in enumerate(ROUTES):
    vals = cells.merge(per_cell[per_cell['route'] == route], on=['K', 'L', 'cross'],
                       how='left')['max_abs_diff'].to_numpy()
    ax.bar(x + (r - (len(ROUTES) - 1) / 2) * width, np.maximum(np.nan_to_num(vals), floor),
           width, color=colors[route], label=labels[route])
  ax.axhline(tol, color='tab:red', ls='--', label=f'tolerance {tol:g}')
  ax.axhline(np.finfo(np.float32).eps, color='gray', ls=':', label='float32 eps')
  ax.set(yscale='log', xticks=x, ylim=(floor / 2, tol * 300),
         ylabel='max |attention − positional CCMC| per cell',
         title=f'(a) attention with positions = positional CCMC\nmax |diff| {worst:.1e} '
               f'over ≥ {triples:,} (W, positions, X) per cell and route')
  ax.set_xticklabels([f'K={k} L={l} {"cross" if c else "self"}'
                      for k, l, c in cells.itertuples(index=False)], fontsize=7, rotation=60,
                     ha='right')
  ax.legend(fontsize=7, loc='upper left')

  # (b) error vs n, both gauge-invariant metrics.
  ax = axes[1]
  slope = slopes(df)
  K, L = int(df['K'].iloc[0]), int(df['L'].iloc[0])
  cross = bool(df['cross'].iloc[0])
  trials = df['trial'].nunique()
  names = {'P_error': r'$\|\hat P - P^*\|_F^2$',
           'w_error': r'$\|\hat w/\Sigma\hat w - w^*/\Sigma w^*\|_2^2$'}
  for metric, color in zip(METRICS, ('tab:blue', 'tab:green')):
    g = df[df['metric'] == metric].groupby('n')['error']
    mean, lo, hi = g.mean(), g.quantile(0.25), g.quantile(0.75)
    n = mean.index.values
    ax.plot(n, mean, 'o-', color=color,
            label=f'{names[metric]}: slope {slope.get(metric, np.nan):.2f}')
    ax.fill_between(n, lo, hi, color=color, alpha=0.2)
    ax.plot(n, mean.iloc[-1] * n[-1] / n, ':', color=color, lw=1)
  ax.plot([], [], ':', color='gray', label='∝ 1/n')
  ax.set(xscale='log', yscale='log', xlabel='n (IID prompts)', ylabel='squared error',
         title=f'(b) joint MLE of (A, b): K={K}, L={L}, {"cross" if cross else "self"}-attention,\n'
               f'mean (dots) and 25-75% band over {trials} trials')
  ax.text(0.02, 0.02, 'Gauge: the global scale of w (b → b + c) and a shift of\neach row of A '
          'are not identifiable; the metrics compare\nP = softmax(A) and w / Σw = softmax(b).',
          transform=ax.transAxes, fontsize=7.5, va='bottom',
          bbox=dict(boxstyle='round', fc='white', ec='0.8'))
  ax.legend(fontsize=8, loc='upper right')

  # (c) recovered normalised weights, trial 0, smallest and largest n.
  ax = axes[2]
  w0 = wdf[wdf['trial'] == wdf['trial'].min()]
  ns = sorted(w0['n'].unique())
  Lk = w0['position'].nunique()
  pos = np.arange(Lk)
  shown = [(None, 'true w*/Σw*', 'k')] + [(ns[0], None, 'tab:orange'), (ns[-1], None, 'tab:green')]
  bw = 0.8 / len(shown)
  for s, (n, label, color) in enumerate(shown):
    if n is None:
      vals = w0[w0['n'] == ns[-1]].sort_values('position')['w_true'].to_numpy()
    else:
      vals = w0[w0['n'] == n].sort_values('position')['w_hat'].to_numpy()
      label = f'estimate, n = {n:,}'
    ax.bar(pos + (s - 1) * bw, vals, bw, color=color, label=label,
           alpha=0.85 if n is None else 0.75)
  ax.set(xticks=pos, xticklabels=[str(i + 1) for i in pos], xlabel='position i (1-indexed; '
         f'{L} = query{", not a key" if cross else ""})', ylabel='normalised weight w_i / Σw',
         title='(c) position weights, trial 0')
  ax.legend(fontsize=8)
  for a in axes[1:]:
    a.grid(True, which='both', alpha=0.3)
  fig.suptitle('Positional encoding (paper Def. 2.4 / Lemma 2.5): '
               r'$\pi^X_k \propto P[x_L, k]\,\sum_{i: x_i = k} w_i$; tokens 0-indexed in code '
               'and CSV, positions 0-indexed in the CSV')
  fig.tight_layout()
  return common.save_figure(fig, NAME)


def main(_):
  csv, weights_csv, eq_csv = common.csv_paths(NAME, WEIGHTS_NAME, EQ_NAME)
  if not flags.FLAGS.plot_only:
    _, flag_dict = common.start(validate, FLAG_NAMES)
    eq = common.Results(EQ_NAME, EQ_KEYS, flag_dict, flags.FLAGS.resume)
    weights = common.Results(WEIGHTS_NAME, WEIGHT_KEYS, flag_dict, flags.FLAGS.resume)
    results = common.Results(NAME, KEYS, flag_dict, flags.FLAGS.resume)
    run_equivalence(eq)
    worst, triples, _ = eq_summary(eq.frame)
    eq.finish(max_abs_diff=worst, triples_per_cell_and_route=triples, tol=_TOL.value,
              passed=bool(worst <= _TOL.value))
    common.progress(f'{NAME}: max |attention - positional CCMC| = {worst:.2e} '
                    f'({"<=" if worst <= _TOL.value else "> "} tol {_TOL.value:g})')
    run_fit(results, weights)
    weights.finish()
    slope = slopes(results.frame)
    wall = results.finish(slopes=slope)
    common.progress(f'{NAME}: slopes {", ".join(f"{k} {v:.2f}" for k, v in slope.items())}; '
                    f'wrote {results.path} in {wall:.1f} s')
  paths = plot(csv, weights_csv, eq_csv)
  common.progress(f'{NAME}: wrote {", ".join(paths)}')


if __name__ == '__main__':
  common.run(main, quick=apply_quick)
