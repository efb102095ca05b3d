"""Issue 21: the library refuses inputs that make no sense with one ValueError naming the
argument (``ccmc_jax.checks``; the table is ``docs/checks.md``), and the command-line findings
of the same campaign: refused runs leave the folder as they found it, every table of a run is
locked, no silent acceptance, strict-JSON sidecars.

Check classes: static shapes/dtypes/sizes (also under ``jit``), values of concrete arrays, the
prompt sampler's K and L, a hypothesis property over random shape mismatches; then the command
lines (in-process where possible, to keep the suite fast)."""
import json
import os
import subprocess
import sys

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import ccmc_jax as cj
from ccmc_jax import checks
from ccmc_jax import claims
from ccmc_jax import compare
from ccmc_jax import io
from ccmc_jax import text
from conftest import ROOT

KEY = jax.random.PRNGKey(0)
A3 = jax.random.normal(KEY, (3, 3))
P3 = jax.nn.softmax(A3, -1)
Z3 = jnp.zeros((3, 3))
NAN3 = jnp.full((3, 3), jnp.nan)
INF3 = jnp.full((3, 3), jnp.inf)
U = cj.uniform_prompt

# The calls of the "Why" (each silently returned nonsense or another exception before):
# (call, the argument its message must name).
STATIC = {
    'prompts over K=5, scores K=3': (lambda: cj.sample_dataset(KEY, Z3, 100, 4, U(5, 4)),
                                     'prompt_fn'),
    'non-square scores': (lambda: cj.sample_dataset(KEY, jnp.zeros((3, 4)), 100, 4, U(3, 4)),
                          'A must be a square'),
    'sampler L=7, L=4': (lambda: cj.sample_dataset(KEY, Z3, 100, 4, U(3, 7)), 'prompt_fn'),
    'n=-5': (lambda: cj.sample_dataset(KEY, Z3, -5, 4, U(3, 4)), 'n must be'),
    'L=0': (lambda: cj.sample_dataset(KEY, Z3, 100, 0, U(3, 4)), 'L must be'),
    'sparse n=0': (lambda: cj.sample_sparse_dataset(KEY, Z3, 0, 4), 'n must be'),
    'transition_matrix 1-D': (lambda: cj.transition_matrix(jnp.zeros(3)), 'W must be'),
    'transition_matrix 2x3': (lambda: cj.transition_matrix(jnp.zeros((2, 3))), 'W must be'),
    'trajectory T<0': (lambda: cj.generate_trajectory(KEY, jnp.log(P3), jnp.array([0, 1]), -3),
                       'T must be'),
    'uniform_prompt(0, 4)': (lambda: cj.uniform_prompt(0, 4), 'K must be'),
    'empty prompt': (lambda: cj.ccmc_next_token_probs(P3, jnp.zeros(0, jnp.int32)), 'X must'),
    'float prompt': (lambda: cj.token_counts(jnp.array([0.0, 1.0]), 3), 'X must hold integer'),
    'E not (K, d)': (lambda: cj.attention_next_token_probs(A3, jnp.array([0, 1]),
                                                           E=jnp.eye(2)), 'E must be'),
    'fit K float': (lambda: cj.fit_dataset(cj.Dataset(jnp.array([0, 1]), jnp.ones((2, 3)),
                                                      jnp.array([0, 1])), 3.0), 'K must be'),
    'key not a key': (lambda: cj.sample_dataset(jnp.zeros(5), Z3, 10, 4, U(3, 4)), 'key must'),
    'key batch': (lambda: cj.sample_scores(jax.random.split(KEY, 3), 3), 'key must'),
    'trajectory key': (lambda: cj.generate_trajectory(0, jnp.log(P3), jnp.array([0, 1]), 5),
                       'key must'),
    'check_scores 1-D': (lambda: cj.check_scores(jnp.zeros(3)), 'A must be a'),
}
VALUES = {
    'NaN scores': (lambda: cj.sample_dataset(KEY, NAN3, 100, 4, U(3, 4)), 'A must hold'),
    'inf scores': (lambda: cj.sample_dataset(KEY, INF3, 100, 4, U(3, 4)), 'A must hold'),
    'transition_matrix NaN': (lambda: cj.transition_matrix(NAN3), 'W must hold'),
    'transition_matrix inf': (lambda: cj.transition_matrix(INF3), 'W must hold'),
    'ccmc id >= K': (lambda: cj.ccmc_next_token_probs(P3, jnp.array([0, 5])), 'X holds'),
    'token_counts id >= K': (lambda: cj.token_counts(jnp.array([0, 5]), 3), 'X holds'),
    'attention id >= K': (lambda: cj.attention_next_token_probs(A3, jnp.array([0, 5])),
                          'X holds'),
    'trajectory X0 id >= K': (lambda: cj.generate_trajectory(KEY, jnp.log(P3),
                                                             jnp.array([0, 3]), 10), 'X0 holds'),
    'trajectory NaN log P': (lambda: cj.generate_trajectory(KEY, NAN3, jnp.array([0, 1]), 10),
                             'log_P must hold'),
    'negative position weights': (lambda: cj.positional_ccmc_next_token_probs(
        P3, jnp.array([0, 1, 2]), jnp.array([1.0, -1.0, 1.0])), 'w must'),
    'negative scale': (lambda: cj.sample_scores(KEY, 3, scale=-1.0), 'scale must'),
    'p_error NaN truth': (lambda: cj.p_error(A3, NAN3), 'A_true must hold'),
    'p_error inf P_true': (lambda: cj.p_error(A3, P_true=INF3), 'P_true must hold'),
    'fit answers id >= K': (lambda: cj.fit_dataset(cj.Dataset(
        jnp.array([0, 1]), jnp.ones((2, 3)), jnp.array([0, 7])), 3), 'data.y holds'),
}


@pytest.mark.parametrize('case', sorted(STATIC))
def test_static_checks_name_the_argument(case):
  """Shapes, dtypes and sizes: one ValueError naming the argument (before: a Dataset with a
  token 4 of K = 3 and counts summing to 237 of 400, an empty Dataset, a ZeroDivisionError,
  an MLIRError, an array of nonsense)."""
  call, needle = STATIC[case]
  with pytest.raises(ValueError, match=needle) as e:
    call()
  assert '\n' not in str(e.value) and 'got' in str(e.value), str(e.value)


@pytest.mark.parametrize('case', sorted(VALUES))
def test_value_checks_of_concrete_arrays_name_the_argument(case):
  """NaN/inf scores, ids outside [0, K), negative weights and scales, called eagerly."""
  call, needle = VALUES[case]
  with pytest.raises(ValueError, match=needle) as e:
    call()
  assert '\n' not in str(e.value), str(e.value)


def test_static_checks_hold_under_jit_and_values_follow_the_docstrings():
  """Shapes are checked while tracing (no result from inconsistent shapes under jit); values
  cannot be: NaN in, NaN out (transition_matrix), as the docstrings say."""
  with pytest.raises(ValueError, match='prompt_fn'):
    jax.jit(lambda A: cj.sample_dataset(KEY, A, 10, 4, U(5, 4)))(Z3)
  with pytest.raises(ValueError, match='W must be'):
    jax.jit(cj.transition_matrix)(jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match='X0 must be'):
    jax.jit(lambda lp, x: cj.generate_trajectory(KEY, lp, x, 5))(Z3, jnp.zeros((2, 2), int))
  assert np.all(np.isnan(jax.jit(cj.transition_matrix)(NAN3)))
  assert np.isnan(cj.p_error(NAN3, A3))  # a diverged estimate: NaN, never a number
  with pytest.raises(ValueError, match='key must'):
    jax.jit(lambda k: cj.sample_scores(k, 3))(jnp.zeros(3, jnp.uint32))
  typed = cj.sample_scores(jax.random.key(0), 3)  # a typed key is a key too
  np.testing.assert_array_equal(typed, cj.sample_scores(KEY, 3))
  assert jax.vmap(lambda k: cj.sample_scores(k, 3))(jax.random.split(KEY, 2)).shape == (2, 3, 3)
  assert checks.concrete(jnp.ones(2)) is not None
  assert jax.jit(lambda x: checks.concrete(x) is None and x)(1.0) == 1.0


def test_valid_calls_are_unchanged_eager_and_jitted():
  """Valid calls still work, eager and jitted alike (the checks change no number)."""
  K = 5
  W = jax.random.normal(KEY, (K, K))
  P = cj.transition_matrix(W)
  X = jnp.array([[0, 3, 3, 1, 2], [4, 4, 0, 1, 1]])
  np.testing.assert_allclose(cj.ccmc_next_token_probs(P, X),
                             cj.attention_next_token_probs(W, X), atol=1e-6)
  np.testing.assert_array_equal(cj.token_counts(X, K), jax.jit(cj.token_counts,
                                                               static_argnums=1)(X, K))
  np.testing.assert_array_equal(cj.token_counts(X, K).sum(-1), [5, 5])
  np.testing.assert_allclose(cj.ccmc_next_token_probs(P, X),
                             jax.jit(cj.ccmc_next_token_probs)(P, X), atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(K=st.integers(1, 6), cols=st.integers(1, 6), K_prompt=st.integers(1, 6),
       L=st.integers(-2, 6), L_prompt=st.integers(1, 6), n=st.integers(-3, 40),
       sparse=st.booleans(), under_jit=st.booleans())
def test_random_shape_mismatches_always_raise_value_error(K, cols, K_prompt, L, L_prompt, n,
                                                          sparse, under_jit):
  """Any mismatch between the scores' shape, the prompt sampler's K and L, L and n is one
  ValueError: never another exception, never a result (eager or under jit)."""
  consistent = K == cols == K_prompt and L == L_prompt and L >= 1 and n >= 1
  if consistent:
    cols += 1  # make every drawn case a mismatch
  A = jnp.zeros((K, cols))
  if sparse:
    call = lambda a: cj.sample_sparse_dataset(KEY, a, n, L, prompt_fn=U(K_prompt, L_prompt))
  else:
    call = lambda a: cj.sample_dataset(KEY, a, n, L, U(K_prompt, L_prompt))
  with pytest.raises(ValueError):
    (jax.jit(call) if under_jit else call)(A)


# ------------------------------------------------------------------------------ command lines

def _flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return flags.FLAGS


def _listing(path):
  return sorted(os.listdir(path)) if os.path.isdir(path) else None


def _probe(module, cases, prelude=''):
  """Run ``module.validate()`` (or ``main``) under each case's flags in ONE subprocess (the
  experiments' flags clash in one process: real_text and vocabulary_scaling both define --K);
  returns {case: (exception type, message, listing of the results folder)}."""
  code = f"""
import json, os, sys
from absl import flags
from absl.testing import flagsaver
from ccmc_jax import io
from experiments import {module} as m
flags.FLAGS.mark_as_parsed()
{prelude}
out = {{}}
for name, (call, values, present) in json.loads(sys.argv[1]).items():
  for p in present:
    flags.FLAGS[p].present = 1
  try:
    with flagsaver.flagsaver(**values):
      getattr(m, call)(*([[]] if call == 'main' else []))
    out[name] = ['none', '', None]
  except Exception as e:
    folder = values.get('results_dir')
    out[name] = [type(e).__name__, str(e),
                 sorted(os.listdir(folder)) if folder and os.path.isdir(folder) else None]
  for p in present:
    flags.FLAGS[p].present = 0
print(json.dumps(out))
"""
  r = subprocess.run([sys.executable, '-c', code, json.dumps(cases)], cwd=ROOT,
                     env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


def test_vocabulary_scaling_bad_flags_are_one_line(tmp_path):
  """Before: --n_over_K2= was a KeyError and --L=1 the library's ValueError (tracebacks),
  both after a sidecar and a lock were written."""
  dirs = {'results_dir': str(tmp_path / 'r'), 'figures_dir': str(tmp_path / 'f')}
  got = _probe('vocabulary_scaling', {
      'empty ratio': ['validate', {**dirs, 'n_over_K2': []}, []],
      'L=1': ['validate', {**dirs, 'L': 1}, []]})
  assert got['empty ratio'][:2] == ['FlagError', '--n_over_K2 is empty: give at least one value']
  assert got['L=1'][0] == 'FlagError' and got['L=1'][1].startswith('--L=1 is invalid')


def test_real_text_refusals(tmp_path):
  """real_text, one subprocess:
  * --smoothing=1e308 and --ridge=1e6 (before: ``All-NaN slice encountered``) and --corpus with
    --corpus_file
    (before: the file silently won) are one-line flag errors;
  * a --corpus_file too large is refused from its size, before it is read, naming the file
    (before: read first; out of memory on a 6 GB file blamed --K);
  * the run locks all three tables before any work (before: each at the end, so two runs into
    one folder both exited 0) and the refused run leaves no lock and no sidecar of its own.
  """
  base = {'corpus': 'python_docs', 'K': 200, 'L': 32, 'T': 200, 'ridge': ['1e-5'],
          'smoothing': ['1'], 'figures_dir': str(tmp_path / 'f'), 'plot_only': False}
  small, big = tmp_path / 'c.txt', tmp_path / 'big.txt'
  small.write_text('some words here\n' * 50)
  with open(big, 'wb') as f:
    f.truncate(256 * 2**20)  # sparse: no disk used; never read
  locked = tmp_path / 'locked'
  locked.mkdir()
  r = {name: str(tmp_path / name) for name in ('a', 'b', 'c')}
  got = _probe('real_text', {
      'smoothing': ['validate', {**base, 'results_dir': r['a'], 'smoothing': ['1e308']}, []],
      'ridge': ['validate', {**base, 'results_dir': r['a'], 'ridge': ['1e-6', '1e6']}, []],
      'both': ['validate', {**base, 'results_dir': r['b'], 'corpus_file': str(small)},
               ['corpus']],
      'big': ['validate', {**base, 'results_dir': r['c'], 'corpus_file': str(big)}, []],
      'locked': ['main', {**base, 'results_dir': str(locked)}, []]},
      prelude=f"held = io.lock({str(locked / '.real_text_curves.lock')!r})\n"
              "io.physical_memory = lambda: 2**30")
  assert got['smoothing'][0] == 'FlagError'
  assert got['smoothing'][1].startswith('--smoothing=1e+308 is invalid'), got['smoothing']
  assert got['ridge'][0] == 'FlagError'  # before: fit_mle's NaN, 'All-NaN slice encountered'
  assert got['ridge'][1].startswith('--ridge=1000000.0 is invalid'), got['ridge']
  assert got['both'][0] == 'FlagError' and 'both choose the corpus' in got['both'][1]
  assert got['big'][0] == 'FlagError' and 'needs about' in got['big'][1], got['big']
  assert f'--corpus_file={big}' in got['big'][1]
  assert got['locked'][0] == 'ResultsError' and 'another run' in got['locked'][1]
  assert got['locked'][2] == ['.real_text_curves.lock'], got['locked']


def test_real_text_prompts_beyond_the_held_out_positions_are_refused():
  """Before: --prompts=100000 silently repeated the 7,271 held-out positions."""
  with pytest.raises(text.TooFewPositions) as e:
    text.prompt_positions([(0, 300)], 32, 200, 100)
  assert e.value.available == 69 and e.value.count == 100
  assert len(set(text.prompt_positions([(0, 300)], 32, 200, 69))) == 69


def test_a_refused_resume_leaves_the_folder_as_it_found_it(tmp_path):
  """Before: a refused --resume left a new empty .<name>.lock (and sidecars said 'partial')."""
  from absl.testing import flagsaver  # pylint: disable=import-outside-toplevel
  from experiments import common  # pylint: disable=import-outside-toplevel
  _flags()
  folder = tmp_path / 'r'
  folder.mkdir()
  pd.DataFrame({'k': [1], 'v': [2.0]}).to_csv(folder / 't.csv', index=False)
  (folder / 'u.meta.json').write_text('{"old": 1}\n')
  before = {p: (folder / p).read_bytes() for p in _listing(folder)}
  with flagsaver.flagsaver(results_dir=str(folder)):
    with pytest.raises(common.FlagError, match='--resume'):
      common.Run({'x': 1}, [('t', ['k']), ('u', ['k'])], ['t'])
  assert {p: (folder / p).read_bytes() for p in _listing(folder)} == before


def test_gpt2_folder_with_nan_weights_leaves_no_sidecar_and_no_lock(tmp_path):
  """Before: one good line, exit 2, and a 'partial' sidecar and a lock left behind."""
  from absl.testing import flagsaver  # pylint: disable=import-outside-toplevel
  from experiments import common  # pylint: disable=import-outside-toplevel
  from experiments import gpt2_repetition  # pylint: disable=import-outside-toplevel
  import test_gpt2_panel as tg  # pylint: disable=import-outside-toplevel
  model = str(tmp_path / 'gpt2')
  weights = tg.make_folder(model)
  weights['wte.weight'][0, 0] = np.nan
  tg.write_safetensors(os.path.join(model, 'model.safetensors'),
                       {k: (a, 'F32') for k, a in weights.items()})
  _flags()
  results = tmp_path / 'r'
  with flagsaver.flagsaver(hf_model_dir=model, results_dir=str(results),
                           figures_dir=str(tmp_path / 'f'), plot_only=False, steps=5,
                           prompt_ids=['1', '2']):
    with pytest.raises(common.FlagError) as e:
      gpt2_repetition.entry([])
  assert '\n' not in str(e.value) and str(e.value).startswith('--hf_model_dir')
  assert _listing(results) in (None, [])


def test_claims_refuses_a_csv_with_a_repeated_row(tmp_path):
  """Before: claims measured a row written twice as two (the plots and compare refuse it)."""
  df = pd.read_csv(os.path.join(ROOT, 'results', 'ccmc_example.csv'))
  pd.concat([df, df.iloc[:1]]).to_csv(tmp_path / 'ccmc_example.csv', index=False)
  with pytest.raises(io.ResultsError, match='repeats the key'):
    claims.read(str(tmp_path), 'ccmc_example')
  df.to_csv(tmp_path / 'ccmc_example.csv', index=False)
  assert len(claims.read(str(tmp_path), 'ccmc_example')) == len(df)


@pytest.mark.parametrize('args, needle', [
    (['{a}', '{a}', '--keys='], '--keys= names an empty column'),  # before: ignored, exit 0
    (['{a}', '{a}', '--keys=row,,col'], 'names an empty column'),
    (['--reference', '--rev=--help'], '--rev=--help is invalid'),  # before: given to git
])
def test_compare_refuses_empty_keys_and_option_like_revisions(capsys, args, needle):
  a = os.path.join(ROOT, 'results', 'ccmc_example.csv')
  assert compare.main([x.format(a=a) for x in args]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and needle in err and '\n' not in err, err


def test_sidecars_are_strict_json_with_null_for_non_finite_numbers(tmp_path):
  """Before: a ratio dividing by zero wrote ``Infinity`` (not JSON)."""
  path = str(tmp_path / 'x.meta.json')
  io.write_meta(path, {'K': 3}, summary={'ratio': float('inf'), 'values': [1.0, np.nan]})

  def refuse(constant):
    raise AssertionError(f'not strict JSON: {constant}')
  with open(path) as f:
    meta = json.loads(f.read(), parse_constant=refuse)
  assert meta['summary'] == {'ratio': None, 'values': [1.0, None]}
  assert meta['null_values']['values'] == {'summary.ratio': 'inf', 'summary.values[1]': 'nan'}
  assert 'JSON has no Infinity' in meta['null_values']['why']


def test_a_refused_run_removes_the_folders_it_made(tmp_path):
  """Before: a run refused after its flags were checked (e.g. real_text --prompts beyond the
  held-out positions, found once the corpus is split) left an empty --results_dir (and its
  parents) behind, made by the flag check or the lock."""
  from absl.testing import flagsaver  # pylint: disable=import-outside-toplevel
  from experiments import common  # pylint: disable=import-outside-toplevel
  _flags()
  folder = tmp_path / 'new' / 'r'
  with flagsaver.flagsaver(results_dir=str(folder)):
    common.check_writable_dir('results_dir', str(folder))
    run = common.Run({'x': 1}, [('t', ['k']), ('u', ['k'])])
    assert sorted(os.listdir(folder)) == ['.t.lock', '.u.lock', 't.meta.json', 'u.meta.json']
    with pytest.raises(common.FlagError):
      with run.session():
        raise common.FlagError('--prompts=9 is invalid')
  assert _listing(tmp_path) == []


def test_a_run_refused_by_the_lock_leaves_the_other_runs_sidecars_alone(tmp_path, monkeypatch):
  """Before: the refused run read the sidecars before it tried the locks and put those bytes
  back when refused, undoing what the run holding the lock had written meanwhile."""
  from absl.testing import flagsaver  # pylint: disable=import-outside-toplevel
  from experiments import common  # pylint: disable=import-outside-toplevel
  _flags()
  with flagsaver.flagsaver(results_dir=str(tmp_path)):
    first = common.Run({'x': 1}, [('t', ['k']), ('u', ['k'])])
    real_lock = io.lock

    def lock_after_the_first_run_wrote(path, what=None):  # the first run's journal update
      first['t'].add({'k': [1], 'v': [2.0]})
      return real_lock(path, what)
    monkeypatch.setattr(io, 'lock', lock_after_the_first_run_wrote)
    with pytest.raises(io.ResultsError, match='another run'):
      common.Run({'x': 2}, [('t', ['k']), ('u', ['k'])])
    monkeypatch.setattr(io, 'lock', real_lock)
    meta = io.read_meta(str(tmp_path / 't.meta.json'))
    assert meta['flags']['x'] == 1 and 't' in meta['journal'], meta
    assert (tmp_path / '.t.lock').exists() and (tmp_path / 't.csv').exists()
    first.close()
