"""Positional encoding: the position-weighted CCMC (paper Definition 2.4 / Lemma 2.5).

With keys e_{x_i} + p_i and position vectors that carry no token identity (C p_i = 0), attention
is a CCMC whose counts are replaced by position weights: pi^X_k ∝ P[x_L, k] sum_{i: x_i = k} w_i
(``docs/theory.md``). Two parts, each with its trials:

(a) Equivalence (:class:`EqCell`): per draw, the literal attention forward pass against the
    positional CCMC on uniform prompts, by three routes (ROUTES): generic embeddings through
    ``model.positional_ccmc_next_token_probs`` (``embedding``) or ``positional_log_probs``
    (``embedding_log``), and the learnable-bias model (A, b) realised as attention by
    ``positional.embed_position_bias`` (``bias``). The randomness is drawn at the check's
    largest shape and each cell takes leading blocks (one compiled sampler).
(b) Joint MLE (:class:`FitSetting`): ground truths A*, b* and n_max IID samples per trial;
    ``positional.fit_positional`` at every n of the grid (a lax.scan, each n warm-started from
    the previous estimate). Gauge-invariant metrics: P_error = ||P_hat - P*||_F^2 and
    w_error = ||w_hat/sum(w_hat) - w*/sum(w*)||_2^2; both decay ~1/n.

Keys: part (a) cell (K, L) uses ``trial_keys(seed, 1, K, L)``, part (b) ``trial_keys(seed, 2,
K, L, int(cross))`` (ccmc_jax.trials.common).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ccmc_jax import fit
from ccmc_jax import model
from ccmc_jax import positional
from ccmc_jax import sampling
from ccmc_jax.trials import common

ROUTES = ('embedding', 'embedding_log', 'bias')
METRICS = ('P_error', 'w_error')


# ----------------------------------------------------------------------------- (a) equivalence


class EqSweep(NamedTuple):
  """Shapes and scales shared by every equivalence cell (draws made at K_max, L_max)."""
  K_max: int
  L_max: int
  d_pos: int       # extra embedding dimensions holding the positions (d = K + d_pos)
  prompts: int     # uniform prompts per draw
  scale: float = 1.0
  pos_scale: float = 1.0


def eq_cells(Ks, Ls, attentions):
  """The (K, L, cross) cells of the equivalence check (duplicates dropped, order kept)."""
  return [(int(K), int(L), a == 'cross') for a in dict.fromkeys(attentions)
          for K in dict.fromkeys(Ks) for L in dict.fromkeys(Ls)]


def eq_keys(seed, K, L, trials):
  return common.trial_keys(seed, 1, K, L, trials=trials)


def _eq_draw(key, sweep: EqSweep):
  d = sweep.K_max + sweep.d_pos
  q_key, w_key, g_key, x_key, a_key, b_key = jax.random.split(key, 6)
  return (jax.random.normal(q_key, (d, d)), jax.random.normal(w_key, (d, d)),
          jax.random.normal(g_key, (sweep.L_max, sweep.d_pos)),
          jax.random.uniform(x_key, (sweep.prompts, sweep.L_max)),
          jax.random.normal(a_key, (sweep.K_max, sweep.K_max)),
          jax.random.normal(b_key, (sweep.L_max,)))


def _eq_compare(draw, K, L, crosses, sweep: EqSweep):
  """max and mean |attention - positional CCMC|, (len(crosses), len(ROUTES)) each."""
  Qn, Wn, G, U, An, bn = draw
  d, scale, pos_scale = K + sweep.d_pos, sweep.scale, sweep.pos_scale
  Q, _ = jnp.linalg.qr(Qn[:d, :d])  # a random rotation of R^d
  E, complement = Q[:, :K].T, Q[:, K:].T  # orthonormal rows: C = E gives C E^T = I
  pos = pos_scale * G[:L] @ complement  # C p_i = 0: positions carry no token identity
  W = scale * Wn[:d, :d]
  X = jnp.minimum(jnp.floor(U[:, :L] * K), K - 1).astype(jnp.int32)  # uniform prompts
  q = X[:, -1]
  A, b = scale * An[:K, :K], pos_scale * bn[:L]
  W_b, E_b, pos_b = positional.embed_position_bias(A, b)
  A_eff, log_w = positional.attention_to_positional_scores(W, E, pos)
  P_eff = jax.nn.softmax(A_eff, axis=-1)
  out = []
  for cross in crosses:
    att = model.attention_next_token_probs(W, X, E, cross, pos=pos)
    # The probability form: w normalised over the key positions (w -> c w is free), so no
    # exp(log_w) overflows; P_eff is float32 and underflows once score gaps exceed ~87.
    w = jax.nn.softmax(log_w[q][:, :L - int(cross)], axis=-1)
    via_w = model.positional_ccmc_next_token_probs(P_eff, X, w, cross)
    via_log = jnp.exp(positional.positional_log_probs(A_eff, log_w[q], X, cross))
    att_b = model.attention_next_token_probs(W_b, X, E_b, cross, pos=pos_b)
    via_b = jnp.exp(positional.positional_log_probs(A, b, X, cross))
    out.append(jnp.stack([jnp.abs(att - via_w), jnp.abs(att - via_log),
                          jnp.abs(att_b - via_b)]))
  diffs = jnp.stack(out)  # (crosses, routes, prompts, K)
  return {'max_abs_diff': common.finite_max(diffs, axis=(2, 3)),
          'mean_abs_diff': diffs.mean(axis=(2, 3))}


@functools.lru_cache(maxsize=None)
def _eq_sampler(sweep: EqSweep):
  """jit(lax.map over draws): threefry under vmap compiles ~3x slower on CPU than lax.map."""
  return jax.jit(lambda k: jax.lax.map(lambda key: _eq_draw(key, sweep), k))


@functools.lru_cache(maxsize=None)
def _eq_stage(K, L, crosses, sweep: EqSweep):
  return jax.jit(jax.vmap(lambda *draw: _eq_compare(draw, K, L, crosses, sweep)))


def run_eq_cell(K, L, crosses, sweep: EqSweep, keys):
  """Every draw of the cell (K, L) for each attention kind in ``crosses`` (a tuple of bools):
  dict of (trials, len(crosses), len(ROUTES)) arrays max_abs_diff, mean_abs_diff."""
  return _eq_stage(K, L, tuple(crosses), sweep)(*_eq_sampler(sweep)(keys))


def make_run_eq_trial(K, L, crosses, sweep: EqSweep):
  """One draw from its key, unbatched: a row of :func:`run_eq_cell`."""
  return lambda key: _eq_compare(_eq_draw(key, sweep), K, L, tuple(crosses), sweep)


def eq_summary(frame):
  """Worst difference overall, triples compared per route (the fewest of any cell), and the
  per-cell worst values; a NaN anywhere makes the worst values NaN (never skipped)."""
  per_cell = frame.groupby(['K', 'L', 'cross', 'route']).agg(
      max_abs_diff=('max_abs_diff', common.nan_max), triples=('prompts', 'sum')).reset_index()
  return common.nan_max(frame['max_abs_diff']), int(per_cell['triples'].min()), per_cell


def eq_route_max(frame):
  """{route: worst |attention - positional CCMC|} (NaN when any value of the route is NaN)."""
  return {r: common.nan_max(g['max_abs_diff']) for r, g in frame.groupby('route')}


def eq_failures(frame, tol):
  """{route: worst difference} of the routes whose worst difference is not within ``tol``
  (NaN fails); empty when the equivalence holds."""
  return {r: v for r, v in eq_route_max(frame).items() if not common.within(v, tol)}


def eq_failure(frame, tol):
  """None when every route holds within ``tol``, else a one-line message naming the routes."""
  bad = eq_failures(frame, tol)
  return (f'max |attention - positional CCMC| > tol {tol:g} (or NaN) for route '
          + ', '.join(f'{r} ({v:.3g})' for r, v in bad.items())) if bad else None


def eq_summary_dict(frame, tol):
  """The equivalence sidecar's summary: worst difference overall and per route, the fewest
  triples of any cell and route, the tolerance and whether every route passed."""
  worst, triples, _ = eq_summary(frame)
  return {'max_abs_diff': worst, 'max_abs_diff_per_route': eq_route_max(frame),
          'triples_per_cell_and_route': triples, 'tol': tol,
          'passed': not eq_failures(frame, tol)}


# ----------------------------------------------------------------------------- (b) joint MLE


class FitSetting(NamedTuple):
  K: int
  L: int
  ns: Tuple[int, ...]
  cross: bool = False
  scale: float = 1.0    # A* ~ N(0, scale^2)
  bias: str = 'random'  # kind of b* (positional.BIAS_KINDS)
  b_scale: float = 1.0
  ridge: float = 1e-6


def fit_keys(seed, setting: FitSetting, trials):
  return common.trial_keys(seed, 2, setting.K, setting.L, int(setting.cross), trials=trials)


def _truth_and_data(key, s: FitSetting):
  a_key, b_key, data_key = jax.random.split(key, 3)
  A = sampling.sample_scores(a_key, s.K, s.scale)
  b = positional.sample_position_bias(b_key, s.L, s.b_scale, s.bias)
  return A, b, positional.sample_positional_dataset(
      data_key, A, b, max(s.ns), s.L, sampling.uniform_prompt(s.K, s.L), s.cross)


def _fit_sweep(data, A, b, ns, s: FitSetting):
  """The fits at every n of ``ns`` (traced), each warm-started from the previous n's estimate
  (the first from 0), so the later fits need ~3 Newton passes over the first n samples."""
  Lk = data.X.shape[-1] - int(s.cross)

  def one(start, n):
    r = positional.fit_positional(data, s.K, n, s.cross, ridge=s.ridge, init=start)
    out = (fit.p_error(r.A_hat, A), positional.w_error(r.b_hat, b),
           positional.normalized_weights(r.b_hat), r.iters, r.invalid)
    return (r.A_hat, r.b_hat), out

  start = (jnp.zeros((s.K, s.K), jnp.float32), jnp.zeros((Lk,), jnp.float32))
  p_err, w_err, w_hat, iters, invalid = jax.lax.scan(one, start, ns)[1]
  return {'P_error': p_err, 'w_error': w_err, 'w_hat': w_hat, 'newton_iters': iters,
          'invalid': invalid}


@functools.lru_cache(maxsize=None)
def _generate_stage(s: FitSetting):
  """jit(lax.map over trials) of the ground truths and data (lax.map: threefry under vmap
  compiles several times slower on CPU)."""
  return jax.jit(lambda k: jax.lax.map(lambda key: _truth_and_data(key, s), k))


@functools.lru_cache(maxsize=None)
def _fit_stage(s: FitSetting):
  """jit(vmap over trials) of the whole n sweep (``ns`` traced: one compilation)."""
  return jax.jit(jax.vmap(lambda d, A, b, ns: _fit_sweep(d, A, b, ns, s),
                          in_axes=(0, 0, 0, None)))


def generate(s: FitSetting, keys):
  """(A*, b*, data) of every trial of ``keys``, stacked (dispatched asynchronously)."""
  return _generate_stage(s)(keys)


def run_fit(s: FitSetting, generated):
  """The n sweep of every trial: dict of (trials, len(ns)) arrays P_error, w_error,
  newton_iters, invalid; w_hat (trials, len(ns), Lk) and w_true (trials, Lk), normalised."""
  A, b, data = generated
  out = _fit_stage(s)(data, A, b, jnp.asarray(s.ns, jnp.int32))
  Lk = out['w_hat'].shape[-1]
  return {**out, 'w_true': positional.normalized_weights(b[:, :Lk])}


def make_run_fit_trial(s: FitSetting):
  """One trial from its key, unbatched: a row of :func:`run_fit` (without w_true)."""
  def run_trial(key):
    A, b, data = _truth_and_data(key, s)
    return _fit_sweep(data, A, b, jnp.asarray(s.ns, jnp.int32), s)
  return run_trial


def slopes(frame):
  """{metric: slope of log(mean error) against log(n)} (about -1 for both metrics)."""
  return common.mean_slopes(frame, 'metric')


# ----------------------------------------------------------------------------- long-format rows


def eq_columns(K, L, crosses, out, seed, prompts):
  """The equivalence CSV's columns for one cell from :func:`run_eq_cell`'s output."""
  max_d, mean_d = np.asarray(out['max_abs_diff']), np.asarray(out['mean_abs_diff'])
  return common.concat_columns([{
      'K': K, 'L': L, 'cross': int(cross), 'route': route, 'trial': np.arange(len(max_d)),
      'seed': seed, 'prompts': prompts, 'max_abs_diff': max_d[:, a, r],
      'mean_abs_diff': mean_d[:, a, r]}
      for a, cross in enumerate(crosses) for r, route in enumerate(ROUTES)])


def fit_columns(s: FitSetting, out, seed):
  """(error columns, weight columns) of the MLE CSVs from :func:`run_fit`'s output (numpy)."""
  setting = {'K': s.K, 'L': s.L, 'cross': int(s.cross)}
  trials, Lk = out['w_hat'].shape[0], out['w_hat'].shape[-1]
  rows, wrows = [], []
  for j, n in enumerate(s.ns):
    rows += [{**setting, 'n': n, 'trial': np.arange(trials), 'metric': m, 'seed': seed,
              'error': out[m][:, j], 'newton_iters': out['newton_iters'][:, j],
              'invalid': out['invalid'][:, j]} for m in METRICS]
    wrows.append({**setting, 'n': n, 'trial': np.repeat(np.arange(trials), Lk),
                  'position': np.tile(np.arange(Lk), trials), 'seed': seed,
                  'w_true': out['w_true'].reshape(-1), 'w_hat': out['w_hat'][:, j].reshape(-1)})
  return common.concat_columns(rows), common.concat_columns(wrows)
