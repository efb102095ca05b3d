"""ccmc_jax: 1-layer self-attention as a context-conditioned Markov chain (CCMC), in JAX.

Reproduces Ildiz, Huang, Li, Rawat, Oymak, "From Self-Attention to Markov Models: Unveiling the
Dynamics of Generative Transformers" (ICML 2024, arXiv 2402.13512). The theory behind every
formula: ``docs/theory.md``. Modules, one per concept:

  model       attention forward pass, base chain P, CCMC next-token law (Lemma 2.2)
  sampling    ground truth, IID prompts, next tokens
  fit         convex maximum-likelihood estimation (batched Newton), error metrics
  sparse_fit  the MLE from token ids at vocabulary scale: fit_mle (nonlinear CG or Newton)
  trajectory  single-trajectory generation (lax.scan), collapse statistics
  theory      asymptotic error prediction
  identifiability  co-occurrence graphs, identifiability test (Thm 3.4), min-norm limit
  positional  position-weighted CCMC (Def. 2.4 / Lemma 2.5), its sampler and joint MLE
  io          atomic results CSVs and metadata sidecars (imported on demand: uses pandas)
  compare     python -m ccmc_jax.compare --reference: a rerun vs the committed results/
  tolerances  the measured per-column tolerances of every results CSV (used by compare)

The names below are the public API, one per step of a typical use (README, "Quick start"):

  chain        transition_matrix(W) -> P;  scores(W) -> A = W^T (what sampling and fit take)
  next token   ccmc_next_token_probs(P, X) == attention_next_token_probs(W, X)
  sample       sample_scores, uniform_prompt, sample_dataset -> Dataset
  fit          fit_dataset(data, K) -> FitResult (one call); fit_scores (inside your own jit)
  error        p_error(A_hat, A_true) = ||P_hat - P*||_F^2 (or p_error(A_hat, P_true=P));
               predicted_error (the asymptotic prediction)
  trajectory   generate_trajectory(key, log_P, X0, T) -> Trajectory;  as_dataset

Convention: ``W`` for the model functions, scores ``A = W^T`` (or ``log P``) for sampling, fit,
theory and trajectory; a ``P`` passed where scores are expected is refused (``check_scores``).
"""
from ccmc_jax import fit
from ccmc_jax import identifiability
from ccmc_jax import model
from ccmc_jax import positional
from ccmc_jax import sampling
from ccmc_jax import theory
from ccmc_jax import trajectory
from ccmc_jax.fit import FitResult
from ccmc_jax.fit import fit_dataset
from ccmc_jax.fit import fit_scores
from ccmc_jax.fit import p_error
from ccmc_jax.identifiability import cooccurrence_graph
from ccmc_jax.model import attention_next_token_probs
from ccmc_jax.model import ccmc_next_token_probs
from ccmc_jax.model import check_scores
from ccmc_jax.model import check_stochastic
from ccmc_jax.model import positional_ccmc_next_token_probs
from ccmc_jax.model import scores
from ccmc_jax.model import token_counts
from ccmc_jax.model import transition_matrix
from ccmc_jax.model import zero_diagonal
from ccmc_jax.sampling import Dataset
from ccmc_jax.sampling import sample_dataset
from ccmc_jax.sampling import sample_scores
from ccmc_jax.sampling import sample_sparse_dataset
from ccmc_jax.sparse_fit import fit_mle
from ccmc_jax.sampling import uniform_prompt
from ccmc_jax.theory import predicted_error
from ccmc_jax.theory import predicted_error_uniform
from ccmc_jax.trajectory import Trajectory
from ccmc_jax.trajectory import as_dataset
from ccmc_jax.trajectory import generate as generate_trajectory

__all__ = [
    # modules
    'fit', 'identifiability', 'model', 'positional', 'sampling', 'theory', 'trajectory',
    # chain and next-token law (paper Sec. 2)
    'attention_next_token_probs', 'ccmc_next_token_probs', 'check_scores', 'check_stochastic',
    'positional_ccmc_next_token_probs', 'scores', 'token_counts', 'transition_matrix',
    'zero_diagonal',
    # sampling, fitting, error (paper Sec. 3)
    'Dataset', 'FitResult', 'cooccurrence_graph', 'fit_dataset', 'fit_scores', 'p_error',
    'predicted_error', 'predicted_error_uniform', 'sample_dataset',
    'fit_mle', 'sample_sparse_dataset', 'sample_scores', 'uniform_prompt',
    # one trajectory (paper Sec. 4)
    'Trajectory', 'as_dataset', 'generate_trajectory',
]
