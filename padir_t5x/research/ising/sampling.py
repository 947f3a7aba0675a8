"""Samplers for Ising models: k-Gibbs and the independent parallel sampler (paper Sec. 3.1, L.7).

  * k-Gibbs (block Gibbs with a random block): each step draws a uniformly random size-k subset K
    and resamples x_K exactly from p(x_K | x_{-K}). A valid MCMC kernel for p: every block
    update leaves p invariant, hence so does their average. k = n is exact sampling.
  * Independent parallel: each step resamples EVERY spin at once, spin i from its own
    single-site conditional p(x_i | x_{-i}) given the CURRENT state. It is what one pass of a
    parallel (non-autoregressive) decoder does with a masked LM's per-token conditionals. It is
    NOT a valid sampler for p: the product of conditionals ignores their dependence, so its
    stationary distribution differs from p (`transition_matrix_parallel` lets one measure by how
    much), and on strongly coupled spins it can oscillate between modes.

Single-chain step functions take x of shape (n,); run many chains with `jax.vmap` (as
`run_until_reached` does). The transition matrices enumerate all 2^n states, so small n only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from padir_t5x.research.ising import model

StepFn = Callable[[jax.Array, jax.Array], jax.Array]  # (key, x (n,)) -> x (n,)


def k_gibbs_step(key: jax.Array, params: model.IsingParams, x: jax.Array, k: int) -> jax.Array:
  """One k-Gibbs step on one chain: x (n,) -> x (n,). k static."""
  subset_key, block_key = jax.random.split(key)
  subset = jax.random.permutation(subset_key, x.shape[-1])[:k]
  block_log_probs = model.block_conditional_log_probs(params, x, subset)  # (2^k,)
  block_config = jax.random.categorical(block_key, block_log_probs)
  return x.at[subset].set(model.all_configurations(k)[block_config])


def single_site_plus_logits(params: model.IsingParams, x: jax.Array) -> jax.Array:
  """logit of p(x_i = +1 | x_{-i}) for every i: 2 (J x + h)_i (zero diagonal). (..., n)."""
  params = model.canonical(params)
  return 2.0 * (x @ params.coupling + params.field)


def parallel_step(key: jax.Array, params: model.IsingParams, x: jax.Array) -> jax.Array:
  """One independent parallel step on one chain: every spin from p(x_i | x_{-i}) at once."""
  plus = jax.random.bernoulli(key, jax.nn.sigmoid(single_site_plus_logits(params, x)))
  return jnp.where(plus, 1.0, -1.0).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("step_fn", "reached_fn", "num_steps"))
def run_until_reached(
    key: jax.Array,
    step_fn: StepFn,
    initial_states: jax.Array,
    reached_fn: Callable[[jax.Array], jax.Array],
    num_steps: int,
) -> tuple[jax.Array, jax.Array]:
  """Runs chains in parallel for num_steps and records when each first satisfies reached_fn.

  Chains keep running after they arrive so that the final states show where they stay.

  Args:
    key: PRNG key.
    step_fn: single-chain transition (key, x (n,)) -> x (n,); must be hashable (static).
    initial_states: (C, n) one starting state per chain.
    reached_fn: (n,) -> () bool, the target event; static.
    num_steps: step budget.

  Returns:
    first_hit: (C,) int32, first step t >= 1 with reached_fn(x_t), or -1 if none within budget.
    final_states: (C, n) the states after num_steps.
  """
  num_chains = initial_states.shape[0]
  batched_step = jax.vmap(step_fn)
  batched_reached = jax.vmap(reached_fn)

  def one_step(carry, step_key):
    states, first_hit, t = carry
    states = batched_step(jax.random.split(step_key, num_chains), states)
    first_hit = jnp.where((first_hit < 0) & batched_reached(states), t, first_hit)
    return (states, first_hit, t + 1), None

  carry = (initial_states, jnp.full((num_chains,), -1, jnp.int32), jnp.int32(1))
  (states, first_hit, _), _ = jax.lax.scan(one_step, carry, jax.random.split(key, num_steps))
  return first_hit, states


# ----------------------------------------------------------------------------------------------
# Exact transition matrices (2^n x 2^n, row = current configuration index, column = next).
# ----------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="k")
def transition_matrix_k_gibbs(params: model.IsingParams, k: int) -> jax.Array:
  """T[x, y] of k-Gibbs: mean over all C(n, k) subsets K of the exact block-K resampling kernel."""
  n = model.num_spins(params)
  configurations = model.all_configurations(n)
  scores = model.log_unnormalized_prob(params, configurations)  # (2^n,)
  subsets = model.all_subsets(n, k)
  rows = jnp.arange(2**n)[:, None]

  def add_block_kernel(matrix, subset):
    base, offset = model.block_neighbour_indices(n, subset)
    neighbours = base[:, None] + offset[None, :]  # (2^n, 2^k)
    block_probs = jax.nn.softmax(scores[neighbours], axis=1)
    return matrix.at[rows, neighbours].add(block_probs), None

  matrix, _ = jax.lax.scan(add_block_kernel, jnp.zeros((2**n, 2**n), jnp.float32), subsets)
  return matrix / subsets.shape[0]


@jax.jit
def transition_matrix_parallel(params: model.IsingParams) -> jax.Array:
  """T[x, y] = prod_i p(y_i | x_{-i}) of the independent parallel sampler."""
  configurations = model.all_configurations(model.num_spins(params))  # (2^n, n)
  logits = single_site_plus_logits(params, configurations)  # (2^n, n)
  log_plus, log_minus = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
  next_is_plus = (configurations > 0).astype(jnp.float32)  # (2^n, n)
  log_matrix = log_plus @ next_is_plus.T + log_minus @ (1.0 - next_is_plus).T
  return jnp.exp(log_matrix)


def stationary_distribution(transition: jax.Array) -> np.ndarray:
  """π with π T = π, sum π = 1, for an irreducible chain, shape (2^n,) float64.

  Solved as a linear system in float64 (numpy) rather than by power iteration: metastable chains
  (the point of these experiments) would need astronomically many iterations.
  """
  matrix = np.asarray(transition, np.float64)
  matrix = matrix / matrix.sum(axis=1, keepdims=True)  # undo float32 rounding of row sums
  size = matrix.shape[0]
  system = matrix.T - np.eye(size)
  system[-1, :] = 1.0  # replace one redundant equation by sum = 1
  rhs = np.zeros(size)
  rhs[-1] = 1.0
  solution = np.linalg.solve(system, rhs)
  return np.clip(solution, 0.0, None) / np.clip(solution, 0.0, None).sum()
