"""The claims check (ccmc_jax.claims, experiments.claims): every claim passes on the committed
results, fails on a perturbed copy of its CSV (a check that cannot fail is a defect), is NOT RUN
when its CSV is missing; malformed input is one line and exit status 2."""
import functools
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ccmc_jax import claims
from ccmc_jax import io
from conftest import ROOT

RESULTS = os.path.join(ROOT, 'results')
BY_ID = {c.id: c for c in claims.CLAIMS}


def synthetic(name):
  """Stand-ins for the CSVs of experiments not on every branch (vocabulary scaling, real
  text), shaped as those experiments specify and satisfying their claims."""
  rng = np.random.default_rng(0)
  if name == 'vocabulary_scaling':
    rows = []
    for K in (8, 16, 32, 64, 128, 256, 512, 1024):
      for r in (10, 30):
        n = r * K * K
        for trial in range(4):
          pred = 1.5 * K * K / n
          rows.append(dict(K=K, L=10, n=n, n_over_K2=r, trial=trial, predicted_error=pred,
                           error=pred * (1 + 0.05 * rng.standard_normal())))
    return pd.DataFrame(rows)
  if name == 'real_text':
    rep = {'ccmc': 0.6, 'ccmc_window': 0.4, 'bigram': 0.05, 'corpus': 0.03}
    return pd.DataFrame([dict(source=s, prompt=p, seq_rep_4=v * (1 + 0.1 * rng.random()),
                              distinct_1=0.5, distinct_2=0.5, top1_share=0.1, top5_share=0.3)
                         for s, v in rep.items() for p in range(5)])
  if name == 'real_text_fit':
    return pd.DataFrame({'model': ['mle', 'uniform_P', 'bigram_P'],
                         'heldout_nll': [1.2, 1.6, 1.4], 'n_train': 1000, 'n_heldout': 100,
                         'copy_fraction': 0.4})
  if name == 'train_lm':
    return pd.DataFrame({'step': [0, 100, 200], 'train_loss': [7.6, 4.5, 4.0],
                         'validation_nll': [7.6, 4.6, 4.1], 'bigram_nll': 4.5,
                         'unigram_nll': 5.3})
  if name == 'lm_repetition':
    rep = {'lm_greedy': 0.9, 'lm_sample': 0.05, 'lm_sample_t0.7': 0.2, 'ccmc': 0.6,
           'ccmc_window': 0.8, 'bigram': 0.003, 'corpus': 0.1}
    return pd.DataFrame([dict(source=s, prompt=p, seq_rep_4=v * (1 + 0.1 * rng.random()))
                         for s, v in rep.items() for p in range(5)])
  if name == 'lm_distillation':
    return pd.DataFrame([dict(source=s, n=n, heldout_nll_lm=base + 300 / n,
                              kl_lm_copy=kl + 100 / n)
                         for s, base, kl in (('lm_answers', 1.5, 0.05), ('real_text', 1.9, 0.4))
                         for n in (1000, 2000, 5000, 10000)])
  raise KeyError(name)


@functools.lru_cache(maxsize=None)
def _committed(name):
  df = claims.read(RESULTS, name)
  return synthetic(name) if df is None else df


def frames_of(claim):
  return {n: _committed(n).copy() for n in claim.csvs}


def write(frames, folder):
  for name, df in frames.items():
    io.write_csv(df, os.path.join(folder, f'{name}.csv'))


# ----------------------------------------------------------------------------- perturbations
# One per claim (keyed by id): each breaks the claim the way a wrong result would.


def _scale_rate(df, x, power, mask=None):
  """error *= (x / min x)^power on the rows of mask: the log-log slope moves by power."""
  mask = np.ones(len(df), bool) if mask is None else mask
  df.loc[mask, 'error'] *= (df.loc[mask, x] / df[x].min()) ** power


def _set(df, mask, col, value):
  df.loc[mask, col] = value


def p_fig1(f):
  d = f['ccmc_example']
  _set(d, (d['quantity'] == 'pi') & (d['col'] == 0), 'value', 0.46)


def p_attention(f):
  f['attention_equivalence'].loc[7, 'max_abs_diff'] = 2e-5


def p_positional_eq(f):
  f['positional_encoding_equivalence'].loc[3, 'max_abs_diff'] = 3e-4


def p_slope_K(f):
  d = f['sample_complexity']
  _scale_rate(d, 'n', 0.3, (d['K'] == d['K'].max()) & (d['L'] == 10))


def p_slope_L(f):
  d = f['sample_complexity']
  _scale_rate(d, 'n', -0.3, (d['K'] == 10) & (d['L'] == d['L'].max()))


def p_K2(f):
  d = f['sample_complexity']
  d['error'] /= d['K']  # error ~ K / n instead of K^2 / n


def p_theory_ratio(f):
  d = f['sample_complexity']
  _set(d, d['K'] == 5, 'predicted_error', d['predicted_error'] * 1.5)


def p_self_slope(f):
  d = f['self_vs_cross']
  _scale_rate(d, 'n', 0.5, d['attention'] == 'self')


def p_cross_over_self(f):
  d = f['self_vs_cross']
  _set(d, (d['attention'] == 'self') & (d['n'] == d['n'].max()), 'error', 0.05)


def p_cross_floor(f):
  f['self_vs_cross']['predicted_floor'] *= 1.3


def p_graph(f):
  d = f['self_vs_cross_graph']
  _set(d, d['attention'] == 'cross', 'identifiable', 1)


def p_pe_P(f):
  d = f['positional_encoding']
  _scale_rate(d, 'n', 0.4, d['metric'] == 'P_error')


def p_pe_w(f):
  d = f['positional_encoding']
  _scale_rate(d, 'n', 0.4, d['metric'] == 'w_error')


def p_top1_gap(f):
  d = f['collapse_seeds']
  _set(d, d['variant'] == 'random', 'top1', d['top1'] * 0.55)


def p_top2(f):
  d = f['collapse_seeds']
  _set(d, d['variant'] == 'zero_diag', 'top2', 0.4)


def p_zero_diag_half(f):
  d = f['collapse_seeds']
  d.loc[d.index[d['variant'] == 'zero_diag'][5], 'top1'] = 0.6


def _emit(d, variant, t, token):
  """Make ``token`` the one emitted at step t of the first trajectory of ``variant``."""
  rows = (d['variant'] == variant) & (d['seed'] == d['seed'].min()) & (d['t'] == t)
  d.loc[rows, 'emitted'] = (d.loc[rows, 'token'] == token).astype(int)


def p_no_repeat(f):
  d = f['collapse']
  z = d[(d['variant'] == 'zero_diag') & (d['emitted'] == 1)]
  _emit(d, 'zero_diag', 101, int(z[z['t'] == 100]['token'].iloc[0]))


def p_absent(f):
  d = f['collapse']
  _set(d, (d['variant'] == 'random') & (d['t'] == 49) & (d['token'] == 2), 'frequency', 0.0)
  _emit(d, 'random', 50, 2)


def p_single_vs_iid(f):
  d = f['trajectory_learning']
  _set(d, (d['source'] == 'single') & (d['T'] == d['T'].max()), 'error',
       d['error'] / 20)


def p_iid_slope(f):
  d = f['trajectory_learning']
  _scale_rate(d, 'T', 0.4, d['source'] == 'iid')


def p_cs_half(f):
  d = f['collapse_statistics']
  d.loc[d.index[d['variant'] == 'zero_diag'][10], 'max_final_freq'] = 0.6


def p_cs_absent(f):
  d = f['collapse_statistics']
  i = d.index[d['L0'] < d['K']][0]
  d.loc[i, 'winners'] = d.loc[i, 'L0'] + 1


def p_cs_variants(f):
  d = f['collapse_statistics']
  _set(d, (d['variant'] == 'zero_diag') & (d['K'] == d['K'].max()), 'top1',
       d['top1'] + 0.2)


def _flat(sweep):
  def perturb(f):
    d = f['collapse_statistics']
    _set(d, (d['variant'] == 'random') & (d['sweep'] == sweep), 'top1', 0.6)
  return perturb


def p_vocab_exponent(f):
  _scale_rate(f['vocabulary_scaling'], 'K', 0.4)


def p_vocab_ratio(f):
  d = f['vocabulary_scaling']
  _set(d, d['K'] == d['K'].max(), 'predicted_error', d['predicted_error'] * 1.5)


def p_vocab_span(f):
  d = f['vocabulary_scaling']
  f['vocabulary_scaling'] = d[d['K'] >= d['K'].max() / 16]


def p_vocab_max(f):
  d = f['vocabulary_scaling']
  f['vocabulary_scaling'] = d[d['K'] < 512]


def p_real_nll(f):
  d = f['real_text_fit']
  _set(d, d['model'] == 'mle', 'heldout_nll', d['heldout_nll'].max() + 0.1)


def p_real_rep(f):
  d = f['real_text']
  _set(d, d['source'] == 'corpus', 'seq_rep_4',
       d[d['source'] == 'ccmc']['seq_rep_4'].mean() / 2)


def _training(f, model):
  d = f['attention_training']
  return d, d['model'] == model


def p_train_mle(f):
  d, tied = _training(f, 'tied_adam')
  d.loc[d.index[tied][3], 'train_nll'] += 2e-5  # one tied run 2e-5 nats above the MLE


def p_train_slope(f):
  d, tied = _training(f, 'tied_lbfgs')
  _scale_rate(d, 'n', 0.3, tied & (d['K'] == d['K'].max()))


def p_train_spread(f):
  d, untied = _training(f, 'untied_adam')
  first = d[untied].groupby(['K', 'L', 'n', 'trial'])['train_nll'].transform('first')
  d.loc[untied, 'train_nll'] = first + 1e-5 * d.loc[untied, 'init']  # every init agrees


def p_train_heldout(f):
  d, untied = _training(f, 'untied_adam')
  tied = d[d['model'] == 'tied_lbfgs'].groupby(['K', 'n'])['heldout_nll'].mean()
  d.loc[untied, 'heldout_nll'] = [tied[(k, n)] for k, n in d.loc[untied, ['K', 'n']].values]
def p_lm_nll(f):
  d = f['train_lm']
  _set(d, d['step'] == d['step'].max(), 'validation_nll', d['bigram_nll'] + 0.01)
def p_lm_greedy(f):
  d = f['lm_repetition']
  _set(d, d['source'] == 'corpus', 'seq_rep_4',
       d[d['source'] == 'lm_greedy']['seq_rep_4'].mean() / 2)


def p_lm_sample(f):
  d = f['lm_repetition']
  _set(d, d['source'] == 'lm_sample', 'seq_rep_4',
       d[d['source'] == 'lm_greedy']['seq_rep_4'].mean() * 0.8)


def p_distilled_nll(f):
  d = f['lm_distillation']
  lm = d['source'] == 'lm_answers'
  d.loc[lm, 'heldout_nll_lm'] = d.loc[lm, 'heldout_nll_lm'].to_numpy()[::-1]  # rises with n


def p_distilled_kl(f):
  d = f['lm_distillation']
  _set(d, d['source'] == 'lm_answers', 'kl_lm_copy', d['kl_lm_copy'].max() + 0.1)


PERTURB = {
    'fig1.closed_form': p_fig1,
    'fig2.attention_is_ccmc': p_attention,
    'lemma2.5.positional_is_ccmc': p_positional_eq,
    'fig4.slope_per_K': p_slope_K,
    'fig6.slope_per_L': p_slope_L,
    'fig4.K2_scaling': p_K2,
    'fig4.theory_ratio': p_theory_ratio,
    'fig3.self_slope': p_self_slope,
    'fig3.cross_over_self': p_cross_over_self,
    'fig3.cross_floor': p_cross_floor,
    'thm3.4.graph': p_graph,
    'lemma2.5.P_slope': p_pe_P,
    'lemma2.5.w_slope': p_pe_w,
    'fig5.top1_random_vs_zero_diag': p_top1_gap,
    'fig5.zero_diag_top2': p_top2,
    'fig5.zero_diag_half': p_zero_diag_half,
    'fig5.zero_diag_no_repeat': p_no_repeat,
    'fig5.absent_tokens': p_absent,
    'sec4.single_vs_iid': p_single_vs_iid,
    'sec4.iid_slope': p_iid_slope,
    'collapse_stats.zero_diag_half': p_cs_half,
    'collapse_stats.absent_tokens': p_cs_absent,
    'collapse_stats.zero_diag_below_random': p_cs_variants,
    'collapse_stats.top1_falls_with_K': _flat('K'),
    'collapse_stats.top1_falls_with_L0': _flat('L0'),
    'collapse_stats.top1_rises_with_scale': _flat('scale'),
    'vocab.exponent': p_vocab_exponent,
    'vocab.theory_ratio': p_vocab_ratio,
    'vocab.K_span': p_vocab_span,
    'vocab.K_max': p_vocab_max,
    'real_text.heldout_nll': p_real_nll,
    'real_text.repetition': p_real_rep,
    'train.tied_matches_mle': p_train_mle,
    'train.tied_slope': p_train_slope,
    'train.untied_spread': p_train_spread,
    'train.heldout_tied_vs_untied': p_train_heldout,
    'train_lm.below_bigram': p_lm_nll,
    'lm.greedy_repetition': p_lm_greedy,
    'lm.sampling_repeats_less': p_lm_sample,
    'lm_distillation.nll_falls_with_n': p_distilled_nll,
    'lm_distillation.distilled_beats_text': p_distilled_kl,
}


def test_distilled_nll_claim_fails_on_a_bump():
  """Falling overall but rising by more than half the fall between two neighbouring n: a
  fit that got worse with more data is a defect even when the ends look right."""
  claim = BY_ID['lm_distillation.nll_falls_with_n']
  frames = frames_of(claim)
  d = frames['lm_distillation']
  lm = (d['source'] == 'lm_answers').to_numpy()
  d.loc[lm, 'heldout_nll_lm'] = [2.0, 1.6, 1.95, 1.5]  # total fall 0.5, a rise of 0.35
  r = claims.evaluate(claim, frames)
  assert r.status == claims.FAIL and 'largest rise' in r.detail, r
  d.loc[lm, 'heldout_nll_lm'] = [2.0, 1.6, 1.7, 1.5]  # a rise of 0.1 < 0.25: noise, passes
  assert claims.evaluate(claim, frames).status == claims.PASS


# ----------------------------------------------------------------------------- tests


def test_committed_results_pass():
  """Every claim whose CSVs are committed passes; the others are NOT RUN (missing CSV)."""
  results = claims.check(RESULTS)
  assert len(results) >= 15 and len({r.id for r in results}) == len(results)
  for claim, r in zip(claims.CLAIMS, results):
    present = all(os.path.isfile(os.path.join(RESULTS, f'{n}.csv')) for n in claim.csvs)
    assert r.status == (claims.PASS if present else claims.NOT_RUN), r
  assert sum(r.status == claims.PASS for r in results) >= 15
  assert claims.exit_status(results) == 0


@pytest.mark.parametrize('claim', claims.CLAIMS, ids=lambda c: c.id)
def test_claim_fails_on_perturbed_csv(claim, tmp_path):
  """Unperturbed (committed, or a synthetic stand-in) it passes; its perturbed copy written to
  tmp_path fails. A claim without an entry in PERTURB fails here."""
  frames = frames_of(claim)
  assert claims.evaluate(claim, frames).status == claims.PASS
  PERTURB[claim.id](frames)
  write(frames, tmp_path)
  r, = claims.check(tmp_path, claims=[claim])
  assert r.status == claims.FAIL, r
  assert claims.exit_status([r]) == 1


def test_nan_measured_is_fail():
  claim = BY_ID['fig4.slope_per_K']
  frames = frames_of(claim)
  frames['sample_complexity'].loc[0, 'error'] = np.nan
  r = claims.evaluate(claim, frames)
  assert r.status == claims.FAIL and np.isnan(r.measured)


def test_missing_csv_is_not_run(tmp_path):
  results = claims.check(tmp_path)
  assert {r.status for r in results} == {claims.NOT_RUN}
  assert all(r.detail.startswith('missing ') for r in results)
  assert claims.exit_status(results) == 0 and claims.exit_status(results, True) == 1


def test_quick_checks_only_the_quick_claims():
  results = claims.check(RESULTS, quick=True)
  for claim, r in zip(claims.CLAIMS, results):
    if claim.quick is None:
      assert r.status == claims.NOT_RUN and 'not checked at --quick' in r.detail
    else:
      assert r.expected == claim.quick.text


def test_range_and_worst_value():
  rng = claims.Range(-1.15, -0.85)
  assert rng.contains(-1.0) and not rng.contains(-0.8) and not rng.contains(np.nan)
  assert claims.Range(hi=0, strict=True).text == '< 0' and not claims.Range(
      hi=0, strict=True).contains(0)
  claim = claims.Claim('x', 'ref', 'text', (), lambda f: ({'a': -1.0, 'b': -0.9, 'c': -1.05},
                                                          ''), rng, None)
  r = claims.evaluate(claim, {})
  assert r.measured == -0.9 and r.status == claims.PASS  # nearest an edge


def test_readme_block_is_replaced():
  text = f'intro\n{claims.README_BEGIN}\nold\n{claims.README_END}\nrest\n'
  new = claims.replace_block(text, '| table |\n')
  assert new == f'intro\n{claims.README_BEGIN}\n| table |\n{claims.README_END}\nrest\n'
  with pytest.raises(io.ResultsError):
    claims.replace_block('no markers', 'x')


def test_refresh_blocks_fills_the_table_and_the_counts_line():
  results = [claims.Result('a.b', 'Fig. 1', 'x', 'ccmc_example', 1.0, '≤ 2', claims.PASS, ''),
             claims.Result('c.d', 'Fig. 2', 'y', 'ccmc_example', 3.0, '≤ 2', claims.FAIL, '')]
  summary = (f'intro\n{claims.SUMMARY_BEGIN}\nold\n{claims.SUMMARY_END}\n'
             f'{claims.README_BEGIN}\nold\n{claims.README_END}\n')
  new = claims.refresh_blocks(summary, results, 'results')
  assert '1 PASS, 1 FAIL, 0 NOT RUN of 2 claims' in new and 'FAIL: `c.d`.' in new
  assert '| `c.d` | Fig. 2 |' in new and 'old' not in new
  with pytest.raises(io.ResultsError, match='needs a'):
    claims.refresh_blocks('no markers', results, 'results')
  with pytest.raises(io.ResultsError, match='exactly one'):
    claims.refresh_blocks(summary + claims.SUMMARY_END, results, 'results')


def _committed_text(path):
  with open(os.path.join(ROOT, path), encoding='utf-8') as f:
    return f.read()


def test_docs_claims_table_and_readme_counts_match_committed_results():
  """docs/claims.md's generated table lists every claim with the status and expected range the
  committed results give, and the README's counts line is what they give (regenerate both with
  `python -m experiments.claims --readme=README.md --readme=docs/claims.md`; the measured digits
  are not compared, so a round-off change of a result does not fail here)."""
  results = claims.check(RESULTS)
  text = _committed_text('docs/claims.md')
  block = text[text.index(claims.README_BEGIN):text.index(claims.README_END)]
  rows = [line.split(' | ') for line in block.splitlines() if line.startswith('| `')]
  got = [(r[0][3:-1], r[-2], r[-1].strip(' |*')) for r in rows]
  assert got == [(r.id, r.expected, r.status) for r in results]
  readme = _committed_text('README.md')
  assert claims.README_BEGIN not in readme  # the table lives in docs/claims.md only
  summary = readme[readme.index(claims.SUMMARY_BEGIN):readme.index(claims.SUMMARY_END)]
  assert summary == f'{claims.SUMMARY_BEGIN}\n{claims.to_summary(results, "results")}'


def _script(*args, cwd):
  return subprocess.run([sys.executable, '-m', 'experiments.claims', *args], cwd=cwd,
                        env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                        text=True, timeout=120)


@pytest.mark.parametrize('case', ['pass', 'fail', 'malformed', 'missing_column', 'bad_flag'])
def test_script_exit_status(case, tmp_path):
  """0 all run claims pass, 1 one fails, 2 with one line on a malformed CSV or a missing
  column (and no claims.csv written)."""
  claim = BY_ID['sec4.single_vs_iid']
  frames = frames_of(claim)
  if case == 'fail':
    PERTURB[claim.id](frames)
  write(frames, tmp_path)
  path = tmp_path / 'trajectory_learning.csv'
  if case == 'malformed':
    path.write_text('source,K,T,trial,error\n"iid,6,100,0,0.3\n')
  if case == 'missing_column':
    frames['trajectory_learning'].drop(columns='error').to_csv(path, index=False)
  r = _script(f'--results_dir={tmp_path}', *(['--quick=maybe'] if case == 'bad_flag' else []),
              cwd=ROOT)
  expected = {'pass': 0, 'fail': 1, 'malformed': 2, 'missing_column': 2, 'bad_flag': 2}[case]
  assert r.returncode == expected, r.stdout + r.stderr
  out = tmp_path / 'claims.csv'
  if expected == 2:
    assert r.stderr.startswith('error: ') and len(r.stderr.strip().splitlines()) == 1
    assert ('--quick' if case == 'bad_flag' else 'trajectory_learning.csv') in r.stderr
    assert not out.exists()
  else:
    table = pd.read_csv(out)
    row = table[table['id'] == claim.id].iloc[0]
    assert row['status'] == ('PASS' if expected == 0 else 'FAIL')
    assert (table['status'] == 'NOT RUN').sum() == len(table) - 2  # iid_slope runs too
    assert (tmp_path / 'claims.md').read_text().count('\n| `') == len(table)


def test_empty_csv_is_fail(tmp_path):
  claim = BY_ID['sec4.iid_slope']
  frames = frames_of(claim)
  write({n: df.iloc[:0] for n, df in frames.items()}, tmp_path)
  r, = claims.check(tmp_path, claims=[claim])
  assert r.status == claims.FAIL and 'no rows' in r.detail
