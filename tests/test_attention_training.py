"""The trained attention layer (issue 19): the literal layer against the CCMC and a NumPy loop,
the count form used for training against the literal pass, the chunked NLL with a traced n,
the stop rule, the data being sample complexity's, and the --quick run."""
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from ccmc_jax import attention_layer as layer
from ccmc_jax import model
from ccmc_jax import sampling
from ccmc_jax.trials import attention_training as at
from ccmc_jax.trials import sample_complexity as sc
from conftest import run_module

K, L = 5, 7


def _prompts(key, n=64, K=K, L=L):
  return jax.random.randint(key, (n, L), 0, K)


def test_tied_layer_is_the_ccmc_of_its_scores():
  key = jax.random.PRNGKey(0)
  for d in (K, K + 3):
    p = layer.init_tied(jax.random.fold_in(key, d), K, d, scale=2.0)
    np.testing.assert_allclose(p.C @ p.E.T, np.eye(K), atol=1e-5)  # the tying constraint
    X = _prompts(jax.random.fold_in(key, 100 + d))
    P = model.transition_matrix(p.W, p.E)  # softmax(E W^T E^T)
    got = layer.next_token_probs(p, X, layer.TIED)
    np.testing.assert_allclose(got, model.ccmc_next_token_probs(P, X), atol=1e-5)
    assert abs(float(got.sum(-1).max()) - 1) < 1e-5


def _numpy_untied(E, W, C, x):
  """The untied layer for one prompt, position by position in float64."""
  E, W, C = (np.asarray(a, np.float64) for a in (E, W, C))
  q = E[x[-1]]
  scores = np.array([E[t] @ W @ q for t in x])
  s = np.exp(scores - scores.max())
  s /= s.sum()
  o = sum(s_i * E[t] for s_i, t in zip(s, x))
  logits = C @ o
  p = np.exp(logits - logits.max())
  return p / p.sum()


@pytest.mark.parametrize('d', [3, 8])
def test_untied_layer_against_a_numpy_loop(d):
  p = layer.init_untied(jax.random.PRNGKey(d), K, d, scale=1.5)
  X = np.asarray(_prompts(jax.random.PRNGKey(10 + d), n=20))
  got = np.asarray(layer.next_token_probs(p, X, layer.UNTIED))
  want = np.stack([_numpy_untied(p.E, p.W, p.C, x) for x in X])
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert (want[np.arange(len(X)), [0] * len(X)] > 0).all()  # mass off the prompt too


@pytest.mark.parametrize('kind, d', [(layer.TIED, K), (layer.UNTIED, 3)])
def test_count_form_equals_the_literal_pass(kind, d):
  init = layer.init_tied if kind == layer.TIED else layer.init_untied
  p = init(jax.random.PRNGKey(3), K, d)
  X = _prompts(jax.random.PRNGKey(4))
  counts = model.token_counts(X, K)
  got = jnp.exp(layer.log_probs(p, X[:, -1], counts, kind))
  np.testing.assert_allclose(got, layer.next_token_probs(p, X, kind), atol=2e-6)
  # The chunk NLL of training is -log p(y | X) of the same law.
  y = jax.random.randint(jax.random.PRNGKey(5), (X.shape[0],), 0, K)
  y = jnp.where(counts[jnp.arange(len(y)), y] > 0, y, X[:, 0])  # tied: an answer in the prompt
  log_m = jnp.where(counts > 0, jnp.log(jnp.maximum(counts, 1.0)), -jnp.inf)
  nll = at.chunk_nll(p, kind, X[:, -1], log_m, y)
  np.testing.assert_allclose(nll, -np.log(np.asarray(got)[np.arange(len(y)), y]), rtol=1e-5)


def test_bad_shapes_and_kinds_are_refused():
  p = layer.init_untied(jax.random.PRNGKey(0), K, 3)
  with pytest.raises(ValueError, match='E \\(K, d\\), W \\(d, d\\)'):
    layer.next_token_probs(p._replace(W=jnp.zeros((4, 4))), _prompts(jax.random.PRNGKey(1)))
  with pytest.raises(ValueError, match='kind'):
    layer.log_probs(p, jnp.zeros(2, int), jnp.ones((2, K)), 'tided')
  with pytest.raises(ValueError, match='d must be >= K'):
    layer.init_tied(jax.random.PRNGKey(0), K, K - 1)


def _data(n=2500, K=4, seed=0):
  A = sampling.sample_scores(jax.random.PRNGKey(seed), K)
  return A, sampling.sample_dataset(jax.random.PRNGKey(seed + 1), A, n, L,
                                    sampling.uniform_prompt(K, L))


def test_chunked_mean_nll_with_a_traced_n_and_its_gradient():
  """Chunks beyond n are skipped (lax.cond), the rest masked: value and gradient equal the
  plain mean over the first n samples, for n inside a chunk and at a chunk's end."""
  A, data = _data()
  chunks = at.chunked(data)
  p = layer.init_tied(jax.random.PRNGKey(2), 4, 4)
  fun = jax.jit(jax.value_and_grad(
      lambda W, n: at.mean_nll(lambda q, m, y: at.chunk_nll(p._replace(W=W), 'tied', q, m, y),
                               chunks, n)))
  counts = np.asarray(data.counts)
  for n in (1, 700, 1024, 2049, 2500):
    def plain(W, n=n):
      lp = layer.log_probs(p._replace(W=W), data.query[:n], data.counts[:n], 'tied')
      return -jnp.mean(lp[jnp.arange(n), data.y[:n]])
    value, grad = fun(p.W, n)
    want_value, want_grad = jax.value_and_grad(plain)(p.W)
    np.testing.assert_allclose(value, want_value, rtol=2e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
  assert counts[:, :].sum(-1).max() == L


def test_stop_rule_and_steps():
  """Adam and L-BFGS stop at the gradient-norm rule (steps recorded), or at max_steps."""
  target = layer.Params(jnp.ones((2, 2)), 2 * jnp.ones((2, 2)), -jnp.ones((2, 2)))
  fun = lambda p: sum(jnp.sum((a - b) ** 2) for a, b in zip(p, target))
  p0 = layer.Params(*[jnp.zeros((2, 2))] * 3)
  out = jax.jit(lambda p: at.train_adam(fun, p, 'untied', 500, 1e-3, 0.1, 200))(p0)
  assert 0 < int(out.steps) < 500 and float(out.grad_norm) <= 1e-3
  np.testing.assert_allclose(out.params.W, target.W, atol=1e-3)
  assert np.isfinite(out.curve[:int(out.steps) + 1]).all()
  assert np.isnan(out.curve[int(out.steps) + 1:]).all()
  capped = at.train_adam(fun, p0, 'untied', 7, 0.0, 0.1, 200)
  assert int(capped.steps) == 7
  tied = at.train_adam(fun, p0, 'tied', 50, 0.0, 0.1, 200)  # only W moves
  np.testing.assert_array_equal(tied.params.E, p0.E)
  lb = jax.jit(lambda p: at.train_lbfgs(fun, p, 100, 1e-5))(p0)
  assert int(lb.steps) < 10 and float(lb.grad_norm) <= 1e-5
  np.testing.assert_allclose(lb.params.W, target.W, atol=1e-5)


SMALL = ['--K=3', '--n=200,1100', '--trials=2', '--inits=2', '--max_steps=60',
         '--heldout=1000', '--seed=3']


@pytest.fixture(scope='module')
def small_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('attention_training')
  r = run_module('experiments.attention_training', *SMALL, tmp=tmp)
  assert r.returncode == 0, r.stderr[-3000:]
  return tmp


def test_small_run_writes_both_tables_and_the_figure(small_run):
  df = pd.read_csv(small_run / 'results' / 'attention_training.csv')
  assert len(df) == 2 * 2 * (1 + 3 * 2)  # n x trials x (MLE + 3 models x inits)
  for col in ('K', 'L', 'n', 'trial', 'model', 'init', 'train_nll', 'heldout_nll', 'error',
              'steps', 'heldout_nll_true', 'd'):
    assert col in df.columns
  assert set(df['model']) == set(at.MODELS)
  assert df[df['model'] == 'untied_adam']['error'].isna().all()
  assert df[df['model'] != 'untied_adam']['error'].notna().all()
  assert (df['steps'] <= 60).all() and df['train_nll'].notna().all()
  cv = pd.read_csv(small_run / 'results' / 'attention_training_curves.csv')
  assert set(cv['model']) == set(at.MODELS) and cv['excess'].notna().all()
  assert (small_run / 'figures' / 'attention_training.png').stat().st_size > 10_000


def test_same_data_and_mle_as_sample_complexity(small_run):
  """Same seed, K, L, n: the convex MLE rows are sample complexity's errors (same A*, prompts,
  answers and solver), not merely similar ones."""
  df = pd.read_csv(small_run / 'results' / 'attention_training.csv')
  mle = df[df['model'] == 'convex_mle'].sort_values(['n', 'trial'])
  setting = sc.Setting(3, 10, (200, 1100), mc_samples=1000)
  got = {n: c['error'] for n, c in sc.run_setting(setting, sc.keys(3, setting, 2))}
  want = np.concatenate([got[n] for n in (200, 1100)])
  np.testing.assert_allclose(mle['error'].to_numpy(), want, rtol=1e-5)


def test_bad_flag_is_one_line(tmp_path):
  r = run_module('experiments.attention_training', '--d_tied=3', '--K=5', tmp=tmp_path)
  assert r.returncode == 2 and r.stderr.startswith('error: --d_tied=3')
  assert len(r.stderr.strip().splitlines()) == 1
