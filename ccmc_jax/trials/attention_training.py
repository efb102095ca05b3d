"""Training the attention layer itself (issue 19): optax on the paper's model vs the convex MLE.

The data of a trial are exactly those of the sample-complexity experiment
(:mod:`ccmc_jax.trials.sample_complexity`: same keys, same ``A*``, prompts and answers for a
seed, K, L and n; its Monte-Carlo prompt set, independent of the data, is the held-out set).
On the first ``n`` samples we fit

* ``convex_mle``: the batched damped Newton of sample complexity (``fit.fit_grouped``), the
  reference: the optimum of ``NLL(A) + (ridge/2)||A||^2``;
* ``tied_adam``, ``tied_lbfgs``: the tied layer (``C E^T = I_K``; only ``W`` trained) by
  ``optax.adam`` and by ``optax.lbfgs`` with its zoom line search, on the same objective, ridge
  on ``A = scores(W, E)`` included: a convex function of ``W`` (``docs/theory.md``);
* ``untied_adam``: the usual layer (``E``, ``W``, ``C`` trained, width ``d``) by Adam on its NLL
  (a ridge of the same size on all its parameters): not convex, not a CCMC.

Each model runs ``jit(vmap over trials (vmap over inits))`` with ``n`` traced: one compilation
per (K, L, model, d) serves every ``n``. The NLL is a sum over chunks of :data:`CHUNK` samples
(``lax.scan``) in which the chunks beyond ``n`` are skipped (``lax.cond`` on an unbatched
predicate stays a branch under ``vmap``), so a step costs ~n whatever ``n_max``. Stop rule:
``||gradient of the objective||_2 <= gtol`` or ``max_steps`` optimizer steps (the steps taken
are recorded). Reported NLLs exclude the ridge and are summed per chunk in float32, then over
chunks in float64 on the host, so comparisons at 1e-5 nats are not round-off.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ccmc_jax import attention_layer as layer
from ccmc_jax import fit
from ccmc_jax import model
from ccmc_jax.trials import common
from ccmc_jax.trials import sample_complexity

CHUNK = 1024  # samples per chunk of the NLL (sampling.BLOCK: the data's own blocks)
MODELS = ('convex_mle', 'tied_adam', 'tied_lbfgs', 'untied_adam')
TRAINED = MODELS[1:]
ADAM_B2 = 0.9  # full-batch gradients: a short second-moment memory converges (0.999 stalls)
CURVE_POINTS = 60  # loss-curve points kept per run (log-spaced steps)


class Setting(NamedTuple):
  """One (K, L) setting: its sample-complexity data and the training configuration."""
  K: int
  L: int
  ns: Tuple[int, ...]      # sample sizes n (increasing)
  heldout: int = 20000     # held-out samples (the sample-complexity Monte-Carlo set)
  scale: float = 1.0       # A* ~ N(0, scale^2); also the scale of the random inits
  ridge: float = 1e-6      # (ridge/2)||A||^2, as sample complexity
  d_tied: int = 0          # tied width d >= K (0: d = K)
  d_untied: int = 4        # untied width d
  inits: int = 5           # random inits per trial and trained model
  max_steps: int = 2000    # optimizer steps at most (the stop rule's cap)
  gtol: float = 1e-6       # stop when ||gradient||_2 <= gtol
  lr: float = 0.1          # Adam's initial learning rate
  lr_decay: int = 500      # Adam's learning rate falls 10x every lr_decay steps

  @property
  def sc(self) -> sample_complexity.Setting:
    """The sample-complexity setting whose data these are (``mc_samples`` = held-out size)."""
    return sample_complexity.Setting(self.K, self.L, self.ns, self.heldout, self.scale,
                                     ridge=self.ridge)

  def width(self, name):
    return (self.d_tied or self.K) if name.startswith('tied') else self.d_untied


def keys(seed, setting: Setting, trials):
  """Trial keys: those of sample complexity (``trial_keys(seed, K, L)``)."""
  return sample_complexity.keys(seed, setting.sc, trials)


def init_keys(key, inits):
  """(inits, 2) init keys of a trial's model: ``fold_in(fold_in(trial key, 1000 + m), i)``
  (``m`` the model's index in :data:`MODELS`; disjoint from the data's ``split``)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(inits))


def model_key(trial_key, name):
  return jax.random.fold_in(trial_key, 1000 + MODELS.index(name))


def chunked(data):
  """A Dataset (..., N) as (..., chunks, CHUNK) arrays ``(query, log m, y)`` (``log m`` is
  ``-inf`` on absent tokens), padded with valid dummy samples (query 0, one key 0, answer 0:
  finite, and never counted since ``n <= N``)."""
  N = data.query.shape[-1]
  pad, lead = -N % CHUNK, data.query.shape[:-1]
  flat = [(0, 0)] * len(lead) + [(0, pad)]
  q = jnp.pad(data.query, flat).reshape(lead + (-1, CHUNK))
  y = jnp.pad(data.y, flat).reshape(lead + (-1, CHUNK))
  m = jnp.pad(data.counts, flat + [(0, 0)]).at[..., N:, 0].set(1.0)
  log_m = jnp.where(m > 0, jnp.log(jnp.maximum(m, 1.0)), -jnp.inf)
  return q, log_m.reshape(lead + (-1, CHUNK, data.counts.shape[-1])), y


def chunk_nll(params, kind, q, log_m, y):
  """(CHUNK,) NLL of each sample, ``-log p(y | X)``, from the query, log key counts and answer:
  :func:`ccmc_jax.attention_layer.log_probs` written for the chunks (equal: tests). Tied (or
  scores ``A`` as ``Params(I, A^T, I)``): ``lse(A[q] + log m) - (A[q, y] + log m_y)``; untied:
  ``lse(z) - z_y`` with logits ``z = (C E^T) softmax(A[q] + log m)``."""
  logits = model.scores(params.W, params.E)[q] + log_m
  if kind == layer.UNTIED:
    logits = jax.nn.softmax(logits, axis=-1) @ (params.E @ params.C.T)
  picked = jnp.sum(jnp.where(jnp.arange(logits.shape[-1]) == y[:, None], logits, 0.0), -1)
  return jax.nn.logsumexp(logits, axis=-1) - picked


def mean_nll(nll_fn, chunks, n):
  """Mean NLL of the first ``n`` samples (traced ``n``): a scan over the chunks that skips the
  chunks beyond ``n`` (differentiable)."""
  q, m, y = chunks
  starts = jnp.arange(q.shape[0]) * CHUNK

  def body(total, xs):
    qc, mc, yc, start = xs

    def add(t):
      keep = start + jnp.arange(CHUNK) < n
      return t + jnp.sum(jnp.where(keep, nll_fn(qc, mc, yc), 0.0))

    return jax.lax.cond(start < n, add, lambda t: t, total), None

  total, _ = jax.lax.scan(body, jnp.float32(0.0), (q, m, y, starts))
  return total / n


def chunk_nll_sums(nll_fn, chunks, n):
  """(chunks,) float32 NLL sums of the first ``n`` samples per chunk: sum them in float64 and
  divide by ``n`` for a mean NLL accurate to ~1e-7 relative (no ridge)."""
  q, m, y = chunks
  starts = jnp.arange(q.shape[0]) * CHUNK

  def one(xs):
    qc, mc, yc, start = xs
    keep = start + jnp.arange(CHUNK) < n
    return jnp.sum(jnp.where(keep, nll_fn(qc, mc, yc), 0.0))

  return jax.lax.map(one, (q, m, y, starts))


def objective(params, chunks, n, kind, ridge):
  """The trained objective: mean NLL + ridge * :func:`attention_layer.ridge_penalty`."""
  fn = functools.partial(chunk_nll, params, kind)
  return mean_nll(fn, chunks, n) + ridge * layer.ridge_penalty(params, kind)


class Trained(NamedTuple):
  params: layer.Params
  steps: jax.Array       # optimizer steps taken
  grad_norm: jax.Array   # ||gradient|| at the end
  curve: jax.Array       # (max_steps + 1,) objective per step (NaN after the stop)


def _loop(step_fn, state0, params0, fun, max_steps, gtol):
  """Run ``step_fn`` until the stop rule holds; record the objective at every step."""
  value0, grad0 = jax.value_and_grad(fun)(params0)
  curve0 = jnp.full(max_steps + 1, jnp.nan, jnp.float32).at[0].set(value0)

  def cond(c):
    _, _, step, gnorm, _, _ = c
    return (gnorm > gtol) & (step < max_steps)

  def body(c):
    params, state, step, _, grad, curve = c
    params, state, value, grad = step_fn(params, state, grad)
    return (params, state, step + 1, optax.global_norm(grad), grad,
            curve.at[step + 1].set(value))

  init = (params0, state0, jnp.int32(0), optax.global_norm(grad0), grad0, curve0)
  params, _, steps, gnorm, _, curve = jax.lax.while_loop(cond, body, init)
  return Trained(params, steps, gnorm, curve)


def _trainable(fun, params0, kind):
  """(function of the trained parameters, their start, back to Params): the tied layer trains
  ``W`` only (``E``, ``C`` fixed by the tying), the untied one all three."""
  if kind == layer.UNTIED:
    return fun, params0, lambda p: p
  E, C = params0.E, params0.C
  return (lambda W: fun(layer.Params(E, W, C))), params0.W, lambda W: layer.Params(E, W, C)


def train_adam(fun, params0, kind, max_steps, gtol, lr, lr_decay):
  """Adam (learning rate ``lr * 0.1^(step / lr_decay)``, ``b2 =`` :data:`ADAM_B2`) on ``fun``
  until the stop rule; the tied layer trains ``W`` only."""
  f, x0, back = _trainable(fun, params0, kind)
  opt = optax.adam(optax.exponential_decay(lr, lr_decay, 0.1), b2=ADAM_B2)
  value_and_grad = jax.value_and_grad(f)

  def step_fn(x, state, grad):
    updates, state = opt.update(grad, state, x)
    x = optax.apply_updates(x, updates)
    value, grad = value_and_grad(x)
    return x, state, value, grad

  out = _loop(step_fn, opt.init(x0), x0, f, max_steps, gtol)
  return out._replace(params=back(out.params))


def train_lbfgs(fun, params0, max_steps, gtol):
  """``optax.lbfgs`` (zoom line search) on ``W`` of the tied layer until the stop rule."""
  f, W0, back = _trainable(fun, params0, layer.TIED)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(f)

  def step_fn(W, state, _):
    value, grad = value_and_grad(W, state=state)  # cached in the state after the first step
    updates, state = opt.update(grad, state, W, value=value, grad=grad, value_fn=f)
    W = optax.apply_updates(W, updates)
    value, grad = value_and_grad(W, state=state)  # the line search's last evaluation
    return W, state, value, grad

  out = _loop(step_fn, opt.init(W0), W0, f, max_steps, gtol)
  return out._replace(params=back(out.params))


def _kind(name):
  """The layer of a model: the convex MLE is evaluated as the tied layer of its scores."""
  return layer.UNTIED if name.startswith('untied') else layer.TIED


@functools.lru_cache(maxsize=None)
def train_stage(name, K, d, ridge, max_steps, gtol, lr, lr_decay, scale):
  """``jit(vmap over trials (vmap over inits))`` of one trained model:
  ``(init keys (trials, inits, 2), chunks (trials, ...), n) -> Trained`` (n traced)."""
  kind = _kind(name)

  def one(key, chunks, n):
    init = layer.init_tied if kind == layer.TIED else layer.init_untied
    params0 = init(key, K, d, scale)
    fun = lambda p: objective(p, chunks, n, kind, ridge)
    if name == 'tied_lbfgs':
      return train_lbfgs(fun, params0, max_steps, gtol)
    return train_adam(fun, params0, kind, max_steps, gtol, lr, lr_decay)

  return jax.jit(jax.vmap(jax.vmap(one, in_axes=(0, None, None)), in_axes=(0, 0, None)))


@functools.lru_cache(maxsize=None)
def eval_stage(kind):
  """``jit(vmap over trials (vmap over inits))``: per-chunk train and held-out NLL sums and the
  error ``||P_hat - P*||_F^2`` (NaN for the untied layer, which has no ``P_hat``)."""
  def one(params, chunks, heldout, n, n_heldout, A_true):
    fn = functools.partial(chunk_nll, params, kind)
    error = (fit.p_error(model.scores(params.W, params.E), A_true) if kind == layer.TIED
             else jnp.float32(jnp.nan))
    return (chunk_nll_sums(fn, chunks, n), chunk_nll_sums(fn, heldout, n_heldout), error)

  inner = jax.vmap(one, in_axes=(0, None, None, None, None, None))
  return jax.jit(jax.vmap(inner, in_axes=(0, 0, 0, None, None, 0)))


def mle_params(A_hat, K):
  """The MLE's scores as tied parameters (``E = I``, ``W = A^T``): one evaluation code path."""
  eye = jnp.broadcast_to(jnp.eye(K, dtype=jnp.float32), A_hat.shape)
  return layer.Params(eye, jnp.swapaxes(A_hat, -1, -2), eye)


def _slots_stage(K, capacity):
  return sample_complexity._group_stage(K, capacity)  # pylint: disable=protected-access


@functools.lru_cache(maxsize=None)
def _mle_stage(ridge):
  """jit(vmap over trials) of the convex MLE at a traced n: sample complexity's solver and
  stopping rule (``fit.fit_grouped``, one chunk-loop bound for the batch, as its sweep)."""
  def fit_all(grouped, n):
    slots = fit.used_slots(grouped, n)
    return jax.vmap(lambda g: fit.fit_grouped(fit.restrict(g, n), ridge=ridge,
                                              slots=slots).A_hat)(grouped)

  return jax.jit(fit_all)


def _host_mean(sums, n):
  """Chunk sums (..., chunks) -> mean NLL in float64 on the host."""
  return np.asarray(sums, np.float64).sum(-1) / n


def _thin(curve, points=CURVE_POINTS):
  """Log-spaced steps 0..last of a curve (NaN after the stop) and their values."""
  last = int(np.sum(np.isfinite(curve))) - 1
  steps = np.unique(np.round(np.geomspace(1, last + 1, points)).astype(int) - 1)
  return steps, curve[steps]


def run_setting(setting: Setting, trial_keys, ns=None, curve_trial=0):
  """Every model on every trial of one setting, at each ``n`` of ``ns`` (default
  ``setting.ns``).

  Args:
    setting: the (K, L) setting.
    trial_keys: (trials, 2) keys of sample complexity (:func:`keys`).
    ns: the sample sizes to run.
    curve_trial: the trial whose loss curves are returned (the representative one).
  Yields:
    (n, rows, curves): ``rows`` a dict of columns, one row per (trial, model, init) with
    ``trial, model, d, init, train_nll, heldout_nll, heldout_nll_true, error, steps,
    grad_norm``; ``curves`` one row per (model, init, step) of trial ``curve_trial`` with the
    objective (``NLL + ridge``) and its excess over the convex MLE's.
  """
  K, trials = setting.K, trial_keys.shape[0]
  A, data, mc = sample_complexity.generate(setting.sc, trial_keys)
  grouped, dropped = _slots_stage(K, sample_complexity.capacity(data.query, K))(data)
  assert not np.asarray(dropped).any(), 'row capacity too small'  # by construction
  chunks, heldout = chunked(data), chunked(mc)
  del data, mc
  ridge, n_held = setting.ridge, setting.heldout
  true = jax.tree.map(lambda a: a[:, None], mle_params(A, K))
  _, held_true, _ = eval_stage(layer.TIED)(true, chunks, heldout, 1, n_held, A)
  held_true = _host_mean(held_true, n_held)[:, 0]
  tkeys = {m: jax.vmap(lambda k, m=m: init_keys(model_key(k, m), setting.inits))(trial_keys)
           for m in TRAINED}
  for n in ns or setting.ns:
    A_hat = _mle_stage(ridge)(grouped, n)
    mle = mle_params(A_hat, K)
    fitted = {'convex_mle': (jax.tree.map(lambda a: a[:, None], mle), None)}
    for name in TRAINED:
      stage = train_stage(name, K, setting.width(name), ridge, setting.max_steps, setting.gtol,
                          setting.lr, setting.lr_decay, setting.scale)
      out = stage(tkeys[name], chunks, n)
      fitted[name] = (out.params, out)
    rows, curves = [], []
    for name, (params, out) in fitted.items():
      tr, he, err = eval_stage(_kind(name))(params, chunks, heldout, n, n_held, A)
      tr, he, err = _host_mean(tr, n), _host_mean(he, n_held), np.asarray(err, np.float64)
      inits = tr.shape[1]
      steps = (np.asarray(out.steps) if out is not None else
               np.zeros((trials, inits), np.int64))
      gnorm = (np.asarray(out.grad_norm, np.float64) if out is not None else
               np.zeros((trials, inits)))
      rows.append({'trial': np.repeat(np.arange(trials), inits), 'model': name,
                   'd': setting.width(name) if name != 'convex_mle' else K,
                   'init': np.tile(np.arange(inits), trials), 'train_nll': tr.ravel(),
                   'heldout_nll': he.ravel(), 'heldout_nll_true': np.repeat(held_true, inits),
                   'error': err.ravel(), 'steps': steps.ravel(), 'grad_norm': gnorm.ravel()})
      if name == 'convex_mle':
        best = tr[curve_trial, 0] + ridge * float(
            layer.ridge_penalty(jax.tree.map(lambda a: a[curve_trial, 0], params)))
        curves.append({'model': name, 'init': 0, 'step': 0, 'objective': best})
        continue
      for i in range(inits):
        s, v = _thin(np.asarray(out.curve[curve_trial, i], np.float64))
        curves.append({'model': name, 'init': i, 'step': s, 'objective': v})
    yield n, common.concat_columns(rows), _with_excess(common.concat_columns(curves))


def _with_excess(curves):
  best = curves['objective'][curves['model'] == 'convex_mle'][0]
  curves['excess'] = curves['objective'] - best
  return curves


def memory_terms(setting: Setting, trials):
  """Peak-memory terms (``ccmc_jax.memory.Term``) of one setting: the data and held-out sets
  (count vectors and their log-count chunks) and the reverse-mode residuals of the vmapped
  training (a few (n, K) arrays per trial and init). Coefficients rounded up, not measured
  per machine."""
  from ccmc_jax import memory  # pylint: disable=import-outside-toplevel
  K, n = setting.K, max(setting.ns)
  return [
      memory.Term(4 * memory.F32 * trials * (n + setting.heldout) * (K + setting.L + 4),
                  'the data and held-out sets of every trial',
                  (('trials', trials, 1), ('n', n, 1), ('heldout', setting.heldout, 1),
                   ('K', K, 1))),
      memory.Term(8 * memory.F32 * trials * setting.inits * n * K,
                  'the training residuals of every trial and init',
                  (('trials', trials, 1), ('inits', setting.inits, 1), ('n', n, 1),
                   ('K', K, 1))),
  ]


def _frame(rows):
  import pandas as pd  # pylint: disable=import-outside-toplevel
  return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)


def versus_mle(frame):
  """The tied rows with the convex MLE's ``train_nll`` and ``error`` of the same (K, L, n,
  trial) alongside (``train_nll_mle``, ``error_mle``)."""
  df = _frame(frame)
  keys = [k for k in ('K', 'L', 'n', 'trial') if k in df.columns]
  mle = df[df['model'] == 'convex_mle'][keys + ['train_nll', 'error']]
  tied = df[df['model'].astype(str).str.startswith('tied')]
  return tied.merge(mle, on=keys, how='left', suffixes=('', '_mle'))


def untied_spread(frame):
  """max - min over inits of the untied layer's final ``train_nll``, per (K, L, n, trial)."""
  df = _frame(frame)
  keys = [k for k in ('K', 'L', 'n', 'trial') if k in df.columns]
  u = df[df['model'] == 'untied_adam']
  return u.groupby(keys)['train_nll'].agg(lambda v: v.max(skipna=False) - v.min(skipna=False))


def progress_line(rows):
  """One line per cell: the tied runs' excess NLL over the MLE, the untied spread."""
  v = versus_mle(rows)
  spread = untied_spread(rows)
  return (f'tied train_nll - MLE max {(v["train_nll"] - v["train_nll_mle"]).max():.2g}, '
          f'|error - MLE| / MLE max {((v["error"] - v["error_mle"]).abs() / v["error_mle"]).max():.2g}; '
          f'untied spread over inits max {spread.max():.3g}')


def summary(frame):
  """The sidecar's summary: the must-show numbers over the whole table."""
  df = _frame(frame)
  v = versus_mle(df)
  out = {'tied_train_nll_excess_max': float((v['train_nll'] - v['train_nll_mle']).max()),
         'tied_error_rel_diff_max': float(((v['error'] - v['error_mle']).abs()
                                           / v['error_mle']).max()),
         'untied_spread_median': float(untied_spread(df).median()),
         'untied_spread_max': float(untied_spread(df).max())}
  top = df[df['n'] == df['n'].max()]
  held = top.groupby(['K', 'model'])['heldout_nll'].mean()
  for K in sorted(top['K'].unique()):
    out[f'heldout_untied_minus_tied_K{K}'] = float(held[(K, 'untied_adam')]
                                                   - held[(K, 'tied_lbfgs')])
  for (K, m), g in v.groupby(['K', 'model']):
    mean = g.groupby('n')['error'].mean()
    out[f'slope_{m}_K{K}'] = (common.loglog_slope(mean.index, mean.values) if len(mean) > 1
                              else float('nan'))
  return out
