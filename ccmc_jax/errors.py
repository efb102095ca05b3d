"""The base of every user-facing error of ccmc_jax (a dependency-free module, so that the
optional ``gpt2`` reader and ``io`` can share it)."""


class UserError(ValueError):
  """A user-facing error (bad flag, unusable results file, bad model folder): one line that
  names what is wrong; ``experiments.common.run`` prints it and exits 2, without a traceback."""
