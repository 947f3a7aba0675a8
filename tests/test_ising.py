"""padir_t5x.research.ising: exact conditionals, k-MPLE, samplers and the two experiments'
trends."""

import csv
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from padir_t5x.research.ising import estimation
from padir_t5x.research.ising import experiments
from padir_t5x.research.ising import model
from padir_t5x.research.ising import sampling
from padir_t5x.research.ising.__main__ import main

# Jitted once for the module: eager (op-by-op) calls of these dominated the run time, and tests of
# equal shapes share one compilation.
_block_conditional_log_probs = jax.jit(
    jax.vmap(model.block_conditional_log_probs, in_axes=(None, None, 0))
)  # over subsets
_conditional_log_prob = jax.jit(jax.vmap(model.conditional_log_prob, in_axes=(None, None, 0)))
_direct_loss = jax.jit(estimation.k_pseudo_log_likelihood, static_argnames="k")
_histogram_loss = jax.jit(estimation.k_pseudo_log_likelihood_from_histogram, static_argnames="k")
_closed_form_derivatives = jax.jit(
    estimation.k_mple_loss_gradient_and_hessian, static_argnames=("k", "subsets_per_chunk")
)


def _tiny_model(seed=0, n=5, scale=0.6):
  return model.generic_model(jax.random.PRNGKey(seed), n, scale, scale)


def test_enumeration_round_trip_and_normalisation():
  configurations = model.all_configurations(4)
  assert configurations.shape == (16, 4)
  np.testing.assert_array_equal(model.configuration_index(configurations), np.arange(16))
  params = _tiny_model(n=4)
  np.testing.assert_allclose(float(jnp.sum(model.exact_probs(params))), 1.0, rtol=1e-5)
  # log Z by a plain Python loop over configurations, energy written out in numpy.
  coupling, field = np.asarray(params.coupling, np.float64), np.asarray(params.field, np.float64)
  brute = np.log(
      sum(
          np.exp(0.5 * np.asarray(c) @ coupling @ np.asarray(c) + field @ np.asarray(c))
          for c in itertools.product([-1.0, 1.0], repeat=4)
      )
  )
  np.testing.assert_allclose(float(model.log_partition(params)), brute, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_block_conditionals_match_brute_force(k):
  n = 5
  params = _tiny_model(n=n)
  joint = np.asarray(model.exact_probs(params), np.float64)
  configurations = np.asarray(model.all_configurations(n))
  x = configurations[13]
  subsets = list(itertools.combinations(range(n), k))
  all_log_probs = np.asarray(
      _block_conditional_log_probs(params, jnp.asarray(x), jnp.asarray(subsets, jnp.int32))
  )
  all_observed = np.asarray(
      _conditional_log_prob(params, jnp.asarray(x), jnp.asarray(subsets, jnp.int32))
  )
  for subset, log_probs, observed in zip(subsets, all_log_probs, all_observed):
    outside = [i for i in range(n) if i not in subset]
    # Condition by hand: keep the configurations that agree with x outside K, renormalise.
    agrees = np.all(configurations[:, outside] == x[outside], axis=1)
    conditional = {
        tuple(c[list(subset)]): p / joint[agrees].sum()
        for c, p in zip(configurations[agrees], joint[agrees])
    }
    for c_index, c in enumerate(np.asarray(model.all_configurations(k))):
      np.testing.assert_allclose(
          np.exp(log_probs[c_index]), conditional[tuple(c)], rtol=1e-4, atol=1e-7
      )
    np.testing.assert_allclose(
        float(observed), np.log(conditional[tuple(x[list(subset)])]), rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("k", [1, 2, 4])
def test_histogram_loss_equals_direct_loss(k):
  params = _tiny_model(seed=1, n=4)
  samples = model.sample_exact(jax.random.PRNGKey(2), params, 200)
  histogram = estimation.empirical_histogram(samples)
  np.testing.assert_allclose(
      float(_histogram_loss(params, histogram, k)),
      float(_direct_loss(params, samples, k)),
      rtol=1e-5,
  )


def test_closed_form_derivatives_match_autodiff():
  n, k = 4, 2
  params = _tiny_model(seed=1, n=n)
  samples = model.sample_exact(jax.random.PRNGKey(2), params, 200)
  histogram = estimation.empirical_histogram(samples)
  vector = estimation.params_to_vector(params)

  def loss(v):
    return -estimation.k_pseudo_log_likelihood_from_histogram(
        estimation.vector_to_params(v, n), histogram, k
    )

  value, gradient, hessian = _closed_form_derivatives(vector, histogram, k)
  np.testing.assert_allclose(float(value), float(jax.jit(loss)(vector)), rtol=1e-5)
  np.testing.assert_allclose(gradient, jax.jit(jax.grad(loss))(vector), atol=1e-5)
  np.testing.assert_allclose(hessian, jax.jit(jax.hessian(loss))(vector), atol=1e-4)


def test_k_equal_n_is_the_log_likelihood():
  params = _tiny_model(seed=3, n=4)
  # 200 samples, as test_histogram_loss_equals_direct_loss: same shapes, one compilation.
  samples = model.sample_exact(jax.random.PRNGKey(4), params, 200)
  log_likelihood = float(
      jnp.mean(model.log_unnormalized_prob(params, samples)) - model.log_partition(params)
  )
  np.testing.assert_allclose(float(_direct_loss(params, samples, 4)), log_likelihood, rtol=1e-5)


@pytest.mark.parametrize("k", [2, 4])
def test_estimator_recovers_parameters_from_many_samples(k):
  n = 4
  truth = _tiny_model(seed=5, n=n, scale=0.5)
  samples = model.sample_exact(jax.random.PRNGKey(6), truth, 50_000)
  estimate = estimation.fit_k_mple(estimation.empirical_histogram(samples), k)
  error = float(model.squared_parameter_error(estimate, truth))
  # 10 parameters: an error of 0.01 is ~0.03 per parameter, vs a parameter scale of 0.5.
  assert error < 0.01, error
  assert error < 0.02 * float(
      model.squared_parameter_error(estimation.vector_to_params(jnp.zeros(10), n), truth)
  )


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_optax_fit_reaches_the_newton_estimate(method):
  n, k = 4, 2
  truth = _tiny_model(seed=5, n=n, scale=0.5)
  histogram = estimation.empirical_histogram(
      model.sample_exact(jax.random.PRNGKey(11), truth, 2000)
  )
  newton = estimation.params_to_vector(estimation.fit_k_mple(histogram, k))
  fitted = estimation.params_to_vector(
      estimation.fit_k_mple(histogram, k, estimation.FitConfig(method=method))
  )
  # Same maximiser: far closer to each other than either is to the truth (sampling error).
  distance = float(jnp.sum((fitted - newton) ** 2))
  assert distance < 1e-8, distance
  assert float(jnp.sum((newton - estimation.params_to_vector(truth)) ** 2)) > 1e-4
  # Newton really is at the maximum: the autodiff gradient of the optax loss vanishes there.
  assert float(jnp.linalg.norm(jax.grad(estimation.k_mple_loss)(newton, histogram, k))) < 1e-5


def test_fit_config_rejects_unknown_method():
  with pytest.raises(ValueError):
    estimation.FitConfig(method="sgd")


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
      jax.random.PRNGKey(8),
      lambda key, x: sampling.k_gibbs_step(key, params, x, 2),
      initial,
      lambda x: jnp.all(x > 0),
      60,
  )
  empirical = np.asarray(estimation.empirical_histogram(final), np.float64)
  assert 0.5 * np.abs(empirical - target).sum() < 0.05


def test_parallel_step_draws_each_site_from_its_conditional():
  params = _tiny_model(seed=9, n=4)
  x = jnp.asarray([1.0, -1.0, -1.0, 1.0])
  draws = jax.jit(jax.vmap(sampling.parallel_step, in_axes=(0, None, None)))(
      jax.random.split(jax.random.PRNGKey(10), 20_000), params, x
  )
  # p(x_i = +1 | x_{-i}): block configuration 1 of the single-site block {i}.
  expected = np.exp(
      np.asarray(_block_conditional_log_probs(params, x, jnp.arange(4, dtype=jnp.int32)[:, None]))[
          :, 1
      ]
  )
  np.testing.assert_allclose(np.mean(np.asarray(draws) > 0, axis=0), expected, atol=0.02)


def test_experiment1_larger_k_lowers_the_error_on_the_peaky_model():
  config = experiments.Experiment1Config(block_sizes=(1, 8), sample_sizes=(2000,), num_seeds=2)
  means = experiments.mean_error_by(experiments.run_experiment1(config))
  assert means[("peaky", 2000, 8)] < means[("peaky", 2000, 1)], means


def test_experiment2_larger_k_reaches_the_larger_mode_sooner():
  config = experiments.Experiment2Config(
      clique_size=4, num_independent=2, block_sizes=(1, 4), num_chains=128, num_steps=300
  )
  rows = {row["sampler"]: row for row in experiments.run_experiment2(config)}
  assert rows["4-Gibbs"]["median_steps"] < rows["1-Gibbs"]["median_steps"]
  assert rows["4-Gibbs"]["fraction_reached"] >= rows["1-Gibbs"]["fraction_reached"]
  # k-Gibbs is a valid sampler, the parallel sampler is not.
  assert rows["1-Gibbs"]["stationary_tv_to_true"] < 1e-4
  assert rows["parallel"]["stationary_tv_to_true"] > 1e-3


def test_command_writes_csvs_and_plots(tmp_path, capsys):
  # In-process (`python -m padir_t5x.research.ising` only calls main): no second JAX start-up, and
  # the compilations shared with the other tests are reused.
  main(["--output_dir", str(tmp_path), "--quick"])
  stdout = capsys.readouterr().out
  assert "Experiment 1" in stdout and "Experiment 2" in stdout
  for name in ("experiment1.png", "experiment2.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with open(tmp_path / "experiment1.csv", encoding="utf-8") as handle:
    rows1 = list(csv.DictReader(handle))
  config1, config2 = experiments.quick_configs()
  assert len(rows1) == (
      2 * len(config1.block_sizes) * len(config1.sample_sizes) * config1.num_seeds
  )
  assert {"model", "k", "num_samples", "seed", "squared_error"} <= set(rows1[0])
  assert {row["fit_method"] for row in rows1} == {"newton"}
  with open(tmp_path / "experiment2.csv", encoding="utf-8") as handle:
    rows2 = list(csv.DictReader(handle))
  assert [row["sampler"] for row in rows2] == [f"{k}-Gibbs" for k in config2.block_sizes] + [
      "parallel"
  ]
  assert all(0.0 <= float(row["fraction_reached"]) <= 1.0 for row in rows2)


def test_command_fit_method_flag(tmp_path, capsys, monkeypatch):
  seen = []
  monkeypatch.setattr(
      experiments,
      "run_all",
      lambda output_dir, config1, config2: seen.append((config1, config2)) or "summary",
  )
  main(["--output_dir", str(tmp_path), "--quick", "--fit_method", "lbfgs"])
  assert seen[0][0].fit.method == "lbfgs"
  assert seen[0][0].fit.num_iterations == experiments.quick_configs()[0].fit.num_iterations
  main(["--output_dir", str(tmp_path), "--quick"])
  assert seen[1][0].fit.method == "newton"
  with pytest.raises(SystemExit):
    main(["--output_dir", str(tmp_path), "--quick", "--fit_method", "sgd"])
  assert "invalid choice" in capsys.readouterr().err
