"""Ising models on a few spins, with everything computed exactly by enumeration.

The model (paper Sec. 2.2) on spins x in {-1, +1}^n is

    p(x) ∝ exp(x^T J x / 2 + h^T x),    J symmetric with zero diagonal.

With n <= ~14 the 2^n configurations fit in memory, so the log-partition function, marginals and
the conditional of any block of spins are exact: they are the ground truth the estimators
(`estimation.py`) and samplers (`sampling.py`) are measured against.

Conventions shared by the whole subpackage:
  * spins are float32 arrays with values -1.0 / +1.0, shape (..., n);
  * configuration index i in [0, 2^n) has spin j = +1 iff bit j of i is set, so
    `all_configurations(n)[i]` and `configuration_index(x)` are inverse to each other;
  * a "subset" is an int32 array of k distinct spin indices, shape (k,); a block configuration
    index c in [0, 2^k) sets subset[j] = +1 iff bit j of c is set (same convention, on k spins).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class IsingParams(NamedTuple):
  """θ = (J, h). A NamedTuple, hence a JAX pytree that optax can optimise directly.

  coupling: (n, n) J. Only its symmetric, zero-diagonal part matters (`canonical`): the diagonal
    multiplies x_i^2 = 1, a constant, and x^T J x sees only (J + J^T) / 2.
  field: (n,) h.
  """

  coupling: jax.Array
  field: jax.Array


def canonical(params: IsingParams) -> IsingParams:
  """The unique symmetric, zero-diagonal representative of `params` (same distribution)."""
  coupling = (params.coupling + params.coupling.T) / 2
  coupling = coupling * (1.0 - jnp.eye(coupling.shape[0], dtype=coupling.dtype))
  return IsingParams(coupling, params.field)


def squared_parameter_error(estimate: IsingParams, truth: IsingParams) -> jax.Array:
  """||θ̂ - θ*||^2 over the free parameters: each unordered pair i<j once, plus every field.

  Both are canonicalised first, so an unsymmetrised estimate is compared fairly. Returns ().
  """
  estimate, truth = canonical(estimate), canonical(truth)
  # The symmetric matrix counts each pair twice and the diagonal is zero: halve the full sum.
  coupling_error = jnp.sum((estimate.coupling - truth.coupling) ** 2) / 2
  return coupling_error + jnp.sum((estimate.field - truth.field) ** 2)


def num_spins(params: IsingParams) -> int:
  return params.field.shape[-1]


# ----------------------------------------------------------------------------------------------
# Model families used by the experiments.
# ----------------------------------------------------------------------------------------------


def generic_model(key: jax.Array, n: int, coupling_scale: float, field_scale: float) -> IsingParams:
  """Random dense model: J_ij ~ N(0, coupling_scale^2) for i<j, h_i ~ N(0, field_scale^2)."""
  coupling_key, field_key = jax.random.split(key)
  upper = jnp.triu(coupling_scale * jax.random.normal(coupling_key, (n, n)), k=1)
  field = field_scale * jax.random.normal(field_key, (n,))
  return IsingParams(upper + upper.T, field)


def peaky_model(
    key: jax.Array, n: int, coupling: float, coupling_jitter: float, field_scale: float
) -> IsingParams:
  """Strongly ferromagnetic dense model: mass concentrates on all +1 and all -1.

  J_ij = coupling + N(0, coupling_jitter^2) for i<j (the jitter keeps the couplings distinct, so
  the estimator cannot profit from an accidental symmetry), h_i ~ N(0, field_scale^2) small so
  that neither mode swallows the other.
  """
  jitter_key, field_key = jax.random.split(key)
  upper = jnp.triu(coupling + coupling_jitter * jax.random.normal(jitter_key, (n, n)), k=1)
  field = field_scale * jax.random.normal(field_key, (n,))
  return IsingParams(upper + upper.T, field)


def clique_model(
    clique_size: int,
    num_independent: int,
    clique_coupling: float,
    clique_field: float,
    independent_fields: tuple[float, ...] | None = None,
) -> IsingParams:
  """The paper's Equation 6: a ferromagnetic clique plus independent vertices.

  Spins 0..clique_size-1 form the clique, with J_ij = clique_coupling between every pair and field
  clique_field on each, so the clique has two modes (all +1, all -1) and a positive clique_field
  makes all +1 the larger one by a factor exp(2 * clique_size * clique_field). The remaining
  num_independent spins have no couplings at all, only their own fields (default 0.5 each);
  they dilute the clique: a random size-k block covers fewer clique spins.
  """
  n = clique_size + num_independent
  if independent_fields is None:
    independent_fields = (0.5,) * num_independent
  if len(independent_fields) != num_independent:
    raise ValueError(f"need {num_independent} independent fields, got {len(independent_fields)}")
  in_clique = jnp.arange(n) < clique_size
  clique_pairs = in_clique[:, None] & in_clique[None, :] & ~jnp.eye(n, dtype=bool)
  coupling = jnp.where(clique_pairs, clique_coupling, 0.0).astype(jnp.float32)
  field = jnp.concatenate(
      [
          jnp.full((clique_size,), clique_field, jnp.float32),
          jnp.asarray(independent_fields, jnp.float32),
      ]
  )
  return IsingParams(coupling, field)


# ----------------------------------------------------------------------------------------------
# Enumeration, log-partition, exact sampling.
# ----------------------------------------------------------------------------------------------


def all_configurations(n: int) -> jax.Array:
  """Every configuration of n spins, shape (2^n, n), row i = the configuration with index i."""
  bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
  return jnp.asarray(2 * bits - 1, jnp.float32)


def configuration_index(x: jax.Array) -> jax.Array:
  """Index of each configuration, shape (...,) int32, from spins of shape (..., n)."""
  n = x.shape[-1]
  return jnp.sum((x > 0).astype(jnp.int32) << jnp.arange(n, dtype=jnp.int32), axis=-1)


def log_unnormalized_prob(params: IsingParams, x: jax.Array) -> jax.Array:
  """x^T J x / 2 + h^T x for spins x of shape (..., n); returns (...)."""
  params = canonical(params)
  return 0.5 * jnp.einsum("...i,ij,...j->...", x, params.coupling, x) + x @ params.field


def log_partition(params: IsingParams) -> jax.Array:
  """log Z by summing over all 2^n configurations. Returns ()."""
  return jax.nn.logsumexp(log_unnormalized_prob(params, all_configurations(num_spins(params))))


def exact_log_probs(params: IsingParams) -> jax.Array:
  """log p(x) for every configuration, shape (2^n,), in configuration-index order."""
  scores = log_unnormalized_prob(params, all_configurations(num_spins(params)))
  return scores - jax.nn.logsumexp(scores)


def exact_probs(params: IsingParams) -> jax.Array:
  """p(x) for every configuration, shape (2^n,)."""
  return jnp.exp(exact_log_probs(params))


def sample_exact(key: jax.Array, params: IsingParams, num_samples: int) -> jax.Array:
  """num_samples i.i.d. draws from p, shape (num_samples, n), via the enumerated distribution."""
  n = num_spins(params)
  indices = jax.random.categorical(key, exact_log_probs(params), shape=(num_samples,))
  return all_configurations(n)[indices]


def total_variation(p: jax.Array, q: jax.Array) -> jax.Array:
  """TV distance between two distributions over the same (flattened) support. Returns ()."""
  return 0.5 * jnp.sum(jnp.abs(p - q))


# ----------------------------------------------------------------------------------------------
# Exact conditionals of a block.
# ----------------------------------------------------------------------------------------------


def all_subsets(n: int, k: int) -> jax.Array:
  """Every size-k subset of {0..n-1} in lexicographic order, shape (C(n, k), k) int32."""
  subsets = np.array(list(itertools.combinations(range(n), k)), np.int32).reshape(
      math.comb(n, k), k
  )
  return jnp.asarray(subsets)


def block_conditional_log_probs(params: IsingParams, x: jax.Array, subset: jax.Array) -> jax.Array:
  """log p(x_K = c | x_{-K}) for every block configuration c, by enumerating the 2^k of them.

  Only the terms of the energy that touch x_K change with c:
      c^T J_KK c / 2 + c^T b,   b = h_K + J_{K,-K} x_{-K} = h_K + (J x)_K - J_KK x_K,
  so the conditional is a softmax over the 2^k block configurations of that expression; the
  current values x_K do not matter (they are subtracted back out of b).

  Args:
    params: the model.
    x: (n,) the conditioning configuration (its values on `subset` are ignored).
    subset: (k,) int32 distinct spin indices K.

  Returns:
    (2^k,) log-probabilities, block configuration c ordered as all_configurations(k).
  """
  params = canonical(params)
  k = subset.shape[0]
  block_coupling = params.coupling[subset][:, subset]  # (k, k)
  outside_field = (
      params.field[subset] + params.coupling[subset] @ x - block_coupling @ x[subset]
  )  # (k,)
  block_configs = all_configurations(k)  # (2^k, k)
  scores = (
      0.5 * jnp.einsum("ci,ij,cj->c", block_configs, block_coupling, block_configs)
      + block_configs @ outside_field
  )
  return scores - jax.nn.logsumexp(scores)


def conditional_log_prob(params: IsingParams, x: jax.Array, subset: jax.Array) -> jax.Array:
  """log p(x_K | x_{-K}) of the observed block values, x (n,), subset (k,). Returns ()."""
  log_probs = block_conditional_log_probs(params, x, subset)
  return log_probs[configuration_index(x[subset])]


def block_neighbour_indices(n: int, subset: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Configuration indices of x with its block K overwritten, for every x, as base + offset.

  Overwriting x_K by block configuration c changes only the bits of K, so the resulting index is
  (index(x) with K's bits cleared) + (c's bits spread onto K's positions). Keeping the two terms
  separate lets callers broadcast them to (2^n, 2^k) only inside a fused computation.

  Args:
    n: number of spins.
    subset: (k,) int32 distinct spin indices K.

  Returns:
    base: (2^n,) int32, index(x) with the bits of K cleared, for every configuration x.
    offset: (2^k,) int32, sum_j bit_j(c) << K_j for every block configuration c.
  """
  k = subset.shape[0]
  subset_mask = jnp.sum(jnp.left_shift(1, subset))
  base = jnp.arange(2**n, dtype=jnp.int32) & ~subset_mask
  block_bits = (jnp.arange(2**k, dtype=jnp.int32)[:, None] >> jnp.arange(k, dtype=jnp.int32)) & 1
  offset = jnp.sum(block_bits << subset[None, :], axis=1)
  return base, offset
