"""padir_t5x.ising: exact conditionals, k-MPLE, samplers and the two experiments' trends."""

import csv
import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from padir_t5x.ising import estimation
from padir_t5x.ising import experiments
from padir_t5x.ising import model
from padir_t5x.ising import sampling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_model(seed=0, n=5, scale=0.6):
  return model.generic_model(jax.random.PRNGKey(seed), n, scale, scale)


def test_enumeration_round_trip_and_normalisation():
  configurations = model.all_configurations(4)
  assert configurations.shape == (16, 4)
  np.testing.assert_array_equal(model.configuration_index(configurations), np.arange(16))
  params = _tiny_model(n=4)
  np.testing.assert_allclose(float(jnp.sum(model.exact_probs(params))), 1.0, rtol=1e-5)
  # log Z by a plain Python loop over configurations.
  brute = np.log(sum(np.exp(float(model.log_unnormalized_prob(params, jnp.asarray(c, jnp.float32))))
                     for c in itertools.product([-1.0, 1.0], repeat=4)))
  np.testing.assert_allclose(float(model.log_partition(params)), brute, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_block_conditionals_match_brute_force(k):
  n = 5
  params = _tiny_model(n=n)
  joint = np.asarray(model.exact_probs(params), np.float64)
  configurations = np.asarray(model.all_configurations(n))
  x = configurations[13]
  for subset in itertools.combinations(range(n), k):
    outside = [i for i in range(n) if i not in subset]
    # Condition by hand: keep the configurations that agree with x outside K, renormalise.
    agrees = np.all(configurations[:, outside] == x[outside], axis=1)
    conditional = {tuple(c[list(subset)]): p / joint[agrees].sum()
                   for c, p in zip(configurations[agrees], joint[agrees])}
    log_probs = np.asarray(model.block_conditional_log_probs(params, jnp.asarray(x),
                                                             jnp.asarray(subset, jnp.int32)))
    for c_index, c in enumerate(np.asarray(model.all_configurations(k))):
      np.testing.assert_allclose(np.exp(log_probs[c_index]), conditional[tuple(c)], rtol=1e-4,
                                 atol=1e-7)
    np.testing.assert_allclose(
        float(model.conditional_log_prob(params, jnp.asarray(x), jnp.asarray(subset, jnp.int32))),
        np.log(conditional[tuple(x[list(subset)])]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_histogram_loss_equals_direct_loss(k):
  params = _tiny_model(seed=1, n=4)
  samples = model.sample_exact(jax.random.PRNGKey(2), params, 200)
  histogram = estimation.empirical_histogram(samples)
  np.testing.assert_allclose(
      float(estimation.k_pseudo_log_likelihood_from_histogram(params, histogram, k)),
      float(estimation.k_pseudo_log_likelihood(params, samples, k)), rtol=1e-5)


def test_closed_form_derivatives_match_autodiff():
  n, k = 4, 2
  params = _tiny_model(seed=1, n=n)
  samples = model.sample_exact(jax.random.PRNGKey(2), params, 200)
  histogram = estimation.empirical_histogram(samples)
  vector = estimation.params_to_vector(params)

  def loss(v):
    return -estimation.k_pseudo_log_likelihood_from_histogram(
        estimation.vector_to_params(v, n), histogram, k)

  value, gradient, hessian = estimation.k_mple_loss_gradient_and_hessian(vector, histogram, k)
  np.testing.assert_allclose(float(value), float(loss(vector)), rtol=1e-5)
  np.testing.assert_allclose(gradient, jax.grad(loss)(vector), atol=1e-5)
  np.testing.assert_allclose(hessian, jax.hessian(loss)(vector), atol=1e-4)


def test_k_equal_n_is_the_log_likelihood():
  params = _tiny_model(seed=3, n=4)
  samples = model.sample_exact(jax.random.PRNGKey(4), params, 50)
  log_likelihood = float(jnp.mean(model.log_unnormalized_prob(params, samples))
                         - model.log_partition(params))
  np.testing.assert_allclose(float(estimation.k_pseudo_log_likelihood(params, samples, 4)),
                             log_likelihood, rtol=1e-5)


@pytest.mark.parametrize("k", [2, 4])
def test_estimator_recovers_parameters_from_many_samples(k):
  n = 4
  truth = _tiny_model(seed=5, n=n, scale=0.5)
  samples = model.sample_exact(jax.random.PRNGKey(6), truth, 50_000)
  estimate = estimation.fit_k_mple(estimation.empirical_histogram(samples), k)
  error = float(model.squared_parameter_error(estimate, truth))
  # 10 parameters: an error of 0.01 is ~0.03 per parameter, vs a parameter scale of 0.5.
  assert error < 0.01, error
  assert error < 0.02 * float(model.squared_parameter_error(estimation.vector_to_params(jnp.zeros(10), n), truth))


def test_k_gibbs_chains_sample_the_target():
  n = 4
  params = _tiny_model(seed=7, n=n)
  target = np.asarray(model.exact_probs(params), np.float64)
  # Exact: the stationary distribution of the k-Gibbs kernel is p; of the parallel one it is not.
  for k in (1, 2):
    stationary = sampling.stationary_distribution(sampling.transition_matrix_k_gibbs(params, k))
    assert 0.5 * np.abs(stationary - target).sum() < 1e-4
  parallel = sampling.stationary_distribution(sampling.transition_matrix_parallel(params))
  assert 0.5 * np.abs(parallel - target).sum() > 0.01
  # Monte Carlo: many chains after many steps, from a fixed start, land distributed as p.
  initial = -jnp.ones((4000, n))
  _, final = sampling.run_until_reached(
      jax.random.PRNGKey(8), lambda key, x: sampling.k_gibbs_step(key, params, x, 2), initial,
      lambda x: jnp.all(x > 0), 60)
  empirical = np.asarray(estimation.empirical_histogram(final), np.float64)
  assert 0.5 * np.abs(empirical - target).sum() < 0.05


def test_parallel_step_draws_each_site_from_its_conditional():
  params = _tiny_model(seed=9, n=4)
  x = jnp.asarray([1.0, -1.0, -1.0, 1.0])
  draws = jax.vmap(lambda key: sampling.parallel_step(key, params, x))(
      jax.random.split(jax.random.PRNGKey(10), 20_000))
  expected = np.asarray([np.exp(float(model.block_conditional_log_probs(
      params, x, jnp.asarray([i], jnp.int32))[1])) for i in range(4)])
  np.testing.assert_allclose(np.mean(np.asarray(draws) > 0, axis=0), expected, atol=0.02)


def test_experiment1_larger_k_lowers_the_error_on_the_peaky_model():
  config = experiments.Experiment1Config(block_sizes=(1, 8), sample_sizes=(2000,), num_seeds=2)
  means = experiments.mean_error_by(experiments.run_experiment1(config))
  assert means[("peaky", 2000, 8)] < means[("peaky", 2000, 1)], means


def test_experiment2_larger_k_reaches_the_larger_mode_sooner():
  config = experiments.Experiment2Config(clique_size=4, num_independent=2, block_sizes=(1, 4),
                                         num_chains=128, num_steps=300)
  rows = {row["sampler"]: row for row in experiments.run_experiment2(config)}
  assert rows["4-Gibbs"]["median_steps"] < rows["1-Gibbs"]["median_steps"]
  assert rows["4-Gibbs"]["fraction_reached"] >= rows["1-Gibbs"]["fraction_reached"]
  # k-Gibbs is a valid sampler, the parallel sampler is not.
  assert rows["1-Gibbs"]["stationary_tv_to_true"] < 1e-4
  assert rows["parallel"]["stationary_tv_to_true"] > 1e-3


def test_command_writes_csvs_and_plots(tmp_path):
  environment = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", "padir_t5x.ising", "--output_dir", str(tmp_path),
                           "--quick"], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr
  assert "Experiment 1" in result.stdout and "Experiment 2" in result.stdout
  for name in ("experiment1.png", "experiment2.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with open(tmp_path / "experiment1.csv", encoding="utf-8") as handle:
    rows1 = list(csv.DictReader(handle))
  config1, config2 = experiments.quick_configs()
  assert len(rows1) == (2 * len(config1.block_sizes) * len(config1.sample_sizes)
                        * config1.num_seeds)
  assert {"model", "k", "num_samples", "seed", "squared_error"} <= set(rows1[0])
  with open(tmp_path / "experiment2.csv", encoding="utf-8") as handle:
    rows2 = list(csv.DictReader(handle))
  assert [row["sampler"] for row in rows2] == [f"{k}-Gibbs" for k in config2.block_sizes] + [
      "parallel"]
  assert all(0.0 <= float(row["fraction_reached"]) <= 1.0 for row in rows2)
