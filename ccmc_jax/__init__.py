"""ccmc_jax: 1-layer self-attention as a context-conditioned Markov chain (CCMC), in JAX.

Reproduces Ildiz, Huang, Li, Rawat, Oymak, "From Self-Attention to Markov Models: Unveiling the
Dynamics of Generative Transformers" (ICML 2024, arXiv 2402.13512). Modules, one per concept:

  model       attention forward pass, base chain P, CCMC next-token law (Lemma 2.2)
  sampling    ground truth, IID prompts, next tokens
  fit         convex maximum-likelihood estimation (batched Newton), error metrics
  sparse_fit  the MLE from token ids at vocabulary scale: fit_mle (nonlinear CG or Newton)
  trajectory  single-trajectory generation (lax.scan), collapse statistics
  theory      asymptotic error prediction
  identifiability  co-occurrence graphs, identifiability test (Thm 3.4), min-norm limit
  positional  position-weighted CCMC (Def. 2.4 / Lemma 2.5), its sampler and joint MLE
  io          atomic results CSVs and metadata sidecars
  compare     python -m ccmc_jax.compare A.csv B.csv: results CSVs within a tolerance
"""
from ccmc_jax.model import attention_next_token_probs
from ccmc_jax.model import ccmc_next_token_probs
from ccmc_jax.model import positional_ccmc_next_token_probs
from ccmc_jax.model import token_counts
from ccmc_jax.model import transition_matrix
from ccmc_jax.model import zero_diagonal
from ccmc_jax.sparse_fit import fit_mle

__all__ = [
    'attention_next_token_probs', 'ccmc_next_token_probs', 'positional_ccmc_next_token_probs',
    'token_counts', 'transition_matrix', 'zero_diagonal', 'fit_mle',
]
