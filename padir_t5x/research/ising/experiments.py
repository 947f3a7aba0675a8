"""The paper's two Ising experiments (Figure 1 / App. L.6 and Figure 3 / App. L.7), CSV and PNG.

Experiment 1: squared parameter error ||θ̂ - θ*||^2 of the k-MPLE against k, for several sample
sizes N, on a generic random model and on a peaky two-mode (strongly ferromagnetic) model,
averaged over seeds. Expected: larger k, lower error; the more so on the peaky model.

Experiment 2: on the clique-plus-independent-vertices model (Equation 6), chains start with the
clique in its SMALLER mode (all -1; the field makes all +1 larger) and we count the steps until the
clique is entirely +1, for k-Gibbs at several k and for the independent parallel sampler. We also
solve each sampler's exact stationary distribution (enumeration) and report its TV distance to p:
~0 for every k-Gibbs (a valid MCMC kernel), > 0 for the parallel sampler (it is not).

Parameter choices (documented guesses; the paper's exact values are not reproduced here):
  * n = 8 spins for experiment 1 so that every k in 1..n is cheap to fit exactly.
  * generic: J_ij ~ N(0, 0.3^2), h_i ~ N(0, 0.3^2): weak-moderate dependence (top two
    configurations hold roughly half of the mass or less).
  * peaky: J_ij = 0.4 (+ N(0, 0.05^2) jitter), h_i ~ N(0, 0.1^2): ~97% of the mass on all +1 and
    all -1, so the data contain few configurations away from the modes.
  * clique: 5 clique spins with J = 0.6 and field 0.4 (mode ratio exp(2*5*0.4) = e^4 ~ 55), plus 3
    independent spins with field 0.5. Strong enough that single-site Gibbs needs hundreds of steps
    to cross, weak enough that it mostly does within the budget, so the medians are comparable.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from padir_t5x.research.ising import estimation
from padir_t5x.research.ising import model
from padir_t5x.research.ising import sampling

# ----------------------------------------------------------------------------------------------
# Experiment 1: parameter error of k-MPLE against k.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Experiment1Config:
  num_spins: int = 8
  block_sizes: tuple[int, ...] = (1, 2, 4, 6, 8)
  # N >= 2000: with fewer samples the peaky data often contain no configuration away from the two
  # modes and the k-MPLE has no finite maximiser (the fit runs off towards infinite couplings).
  sample_sizes: tuple[int, ...] = (2000, 8000, 32000)
  num_seeds: int = 3
  generic_coupling_scale: float = 0.3
  generic_field_scale: float = 0.3
  peaky_coupling: float = 0.4
  peaky_coupling_jitter: float = 0.05
  peaky_field_scale: float = 0.1
  fit: estimation.FitConfig = estimation.FitConfig()
  seed: int = 0


def experiment1_models(config: Experiment1Config, seed: int) -> dict[str, model.IsingParams]:
  """The true models for one seed: {"generic": θ*, "peaky": θ*}."""
  generic_key, peaky_key = jax.random.split(
      jax.random.fold_in(jax.random.PRNGKey(config.seed), seed)
  )
  return {
      "generic": model.generic_model(
          generic_key, config.num_spins, config.generic_coupling_scale, config.generic_field_scale
      ),
      "peaky": model.peaky_model(
          peaky_key,
          config.num_spins,
          config.peaky_coupling,
          config.peaky_coupling_jitter,
          config.peaky_field_scale,
      ),
  }


def run_experiment1(config: Experiment1Config) -> list[dict]:
  """One row per (model, N, seed, k): the squared error of the k-MPLE fitted on N samples.

  For a given (model, N, seed) every k sees the SAME samples, so differences between k are not
  sampling noise between data sets.
  """
  datasets = []  # (model name, N, seed, truth, histogram)
  for seed in range(config.num_seeds):
    for name, truth in experiment1_models(config, seed).items():
      for num_samples in config.sample_sizes:
        data_key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1000 + seed), num_samples)
        samples = model.sample_exact(data_key, truth, num_samples)
        datasets.append((name, num_samples, seed, truth, estimation.empirical_histogram(samples)))
  rows = []
  for k in config.block_sizes:
    for name, num_samples, seed, truth, histogram in datasets:
      estimate = estimation.fit_k_mple(histogram, k, config.fit)
      rows.append(
          {
              "model": name,
              "k": k,
              "num_samples": num_samples,
              "seed": seed,
              "squared_error": float(model.squared_parameter_error(estimate, truth)),
              "fit_method": config.fit.method,
          }
      )
  return rows


def mean_error_by(rows: list[dict]) -> dict[tuple[str, int, int], float]:
  """{(model, N, k): squared error averaged over seeds}."""
  grouped: dict[tuple[str, int, int], list[float]] = {}
  for row in rows:
    grouped.setdefault((row["model"], row["num_samples"], row["k"]), []).append(
        row["squared_error"]
    )
  return {key: float(np.mean(values)) for key, values in grouped.items()}


def plot_experiment1(rows: list[dict], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  means = mean_error_by(rows)
  model_names = sorted({key[0] for key in means})
  figure, axes = plt.subplots(1, len(model_names), figsize=(5 * len(model_names), 4))
  for axis, name in zip(np.atleast_1d(axes), model_names):
    for num_samples in sorted({key[1] for key in means if key[0] == name}):
      ks = sorted(key[2] for key in means if key[:2] == (name, num_samples))
      axis.plot(
          ks, [means[(name, num_samples, k)] for k in ks], marker="o", label=f"N={num_samples}"
      )
    axis.set_yscale("log")
    axis.set_xlabel("block size k of k-MPLE")
    axis.set_ylabel("||θ̂ - θ*||² (mean over seeds)")
    axis.set_title(f"{name} model")
    axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


# ----------------------------------------------------------------------------------------------
# Experiment 2: steps from the smaller to the larger mode.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Experiment2Config:
  clique_size: int = 5
  num_independent: int = 3
  clique_coupling: float = 0.6
  clique_field: float = 0.4
  independent_field: float = 0.5
  block_sizes: tuple[int, ...] = (1, 2, 3, 4, 5)
  num_chains: int = 256
  num_steps: int = 1000
  seed: int = 0


def experiment2_model(config: Experiment2Config) -> model.IsingParams:
  return model.clique_model(
      config.clique_size,
      config.num_independent,
      config.clique_coupling,
      config.clique_field,
      (config.independent_field,) * config.num_independent,
  )


def _clique_in_larger_mode(x: jax.Array, clique_size: int) -> jax.Array:
  """Whether the clique (spins 0..clique_size-1) is entirely +1, the larger mode. x (..., n)."""
  return jnp.all(x[..., :clique_size] > 0, axis=-1)


def _smaller_mode_start(config: Experiment2Config) -> jax.Array:
  """(num_chains, n): clique all -1 (the smaller mode), independent spins at their likelier +1."""
  clique = -jnp.ones((config.num_chains, config.clique_size))
  independent = jnp.ones((config.num_chains, config.num_independent))
  return jnp.concatenate([clique, independent], axis=1)


def run_experiment2(config: Experiment2Config) -> list[dict]:
  """One row per sampler: hitting-time statistics and exact stationary TV to p."""
  params = experiment2_model(config)
  n = model.num_spins(params)
  configurations = model.all_configurations(n)
  true_probs = np.asarray(model.exact_probs(params), np.float64)
  in_larger_mode = np.asarray(_clique_in_larger_mode(configurations, config.clique_size))
  reached_fn = functools.partial(_clique_in_larger_mode, clique_size=config.clique_size)
  initial_states = _smaller_mode_start(config)

  samplers = [
      (
          f"{k}-Gibbs",
          k,
          functools.partial(_k_gibbs_chain_step, params=params, k=k),
          lambda k=k: sampling.transition_matrix_k_gibbs(params, k),
      )
      for k in config.block_sizes
  ]
  samplers.append(
      (
          "parallel",
          n,
          functools.partial(_parallel_chain_step, params=params),
          lambda: sampling.transition_matrix_parallel(params),
      )
  )
  rows = []
  for index, (name, k, step_fn, transition_fn) in enumerate(samplers):
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), index)
    first_hit, final_states = sampling.run_until_reached(
        key, step_fn, initial_states, reached_fn, config.num_steps
    )
    first_hit = np.asarray(first_hit)
    reached = first_hit > 0
    # Chains that never arrive count as +inf: the median is then finite only if most arrived.
    steps = np.where(reached, first_hit, np.inf)
    stationary = sampling.stationary_distribution(transition_fn())
    rows.append(
        {
            "sampler": name,
            "k": k,
            "num_chains": config.num_chains,
            "step_budget": config.num_steps,
            "fraction_reached": float(reached.mean()),
            "median_steps": float(np.median(steps)),
            "mean_steps_if_reached": float(first_hit[reached].mean())
            if reached.any()
            else math.inf,
            "fraction_in_larger_mode_at_end": float(
                np.mean(np.asarray(_clique_in_larger_mode(final_states, config.clique_size)))
            ),
            "stationary_prob_larger_mode": float(stationary[in_larger_mode].sum()),
            "true_prob_larger_mode": float(true_probs[in_larger_mode].sum()),
            "stationary_tv_to_true": float(0.5 * np.abs(stationary - true_probs).sum()),
            "_first_hit": first_hit,  # for the plot; not written to CSV
        }
    )
  return rows


def _k_gibbs_chain_step(key, x, params, k):
  return sampling.k_gibbs_step(key, params, x, k)


def _parallel_chain_step(key, x, params):
  return sampling.parallel_step(key, params, x)


def plot_experiment2(rows: list[dict], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4))
  for row in rows:
    first_hit = row["_first_hit"]
    budget = row["step_budget"]
    steps = np.arange(1, budget + 1)
    arrived = np.mean((first_hit[None, :] > 0) & (first_hit[None, :] <= steps[:, None]), axis=1)
    curves.plot(
        steps,
        arrived,
        label=row["sampler"],
        linestyle="--" if row["sampler"] == "parallel" else "-",
    )
  curves.set_xscale("log")
  curves.set_xlabel("step")
  curves.set_ylabel("fraction of chains that reached the larger mode")
  curves.set_title("from the smaller mode of the clique")
  curves.legend()
  names = [row["sampler"] for row in rows]
  bars.bar(names, [row["stationary_tv_to_true"] for row in rows])
  bars.set_yscale("symlog", linthresh=1e-4)
  bars.set_ylabel("TV(stationary distribution, p)")
  bars.set_title("exact stationary distribution vs target")
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


# ----------------------------------------------------------------------------------------------
# CSV writing and the whole run.
# ----------------------------------------------------------------------------------------------


def write_csv(rows: list[dict], path: str) -> None:
  """Writes the rows' public columns (those not starting with "_") to path."""
  columns = [column for column in rows[0] if not column.startswith("_")]
  with open(path, "w", newline="", encoding="utf-8") as handle:
    writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def quick_configs() -> tuple[Experiment1Config, Experiment2Config]:
  """Tiny sizes for a smoke run (--quick) and the tests."""
  return (
      Experiment1Config(num_spins=4, block_sizes=(1, 4), sample_sizes=(300,), num_seeds=1),
      Experiment2Config(
          clique_size=3, num_independent=1, block_sizes=(1, 3), num_chains=32, num_steps=100
      ),
  )


def summarize(rows1: list[dict], rows2: list[dict]) -> str:
  lines = ["Experiment 1: squared parameter error (mean over seeds) by k"]
  means = mean_error_by(rows1)
  for name in sorted({key[0] for key in means}):
    for num_samples in sorted({key[1] for key in means if key[0] == name}):
      ks = sorted(key[2] for key in means if key[:2] == (name, num_samples))
      errors = "  ".join(f"k={k}: {means[(name, num_samples, k)]:.4f}" for k in ks)
      lines.append(f"  {name:7s} N={num_samples:<6d} {errors}")
  lines.append("Experiment 2: from the smaller mode to the larger mode (clique all +1)")
  for row in rows2:
    lines.append(
        f"  {row['sampler']:9s} median steps {row['median_steps']:>7.1f}  "
        f"reached {row['fraction_reached']:.3f} in {row['step_budget']} steps  "
        f"end in larger mode {row['fraction_in_larger_mode_at_end']:.3f}  "
        f"stationary P(larger) {row['stationary_prob_larger_mode']:.4f} "
        f"(true {row['true_prob_larger_mode']:.4f}), TV {row['stationary_tv_to_true']:.2e}"
    )
  return "\n".join(lines)


def run_all(output_dir: str, config1: Experiment1Config, config2: Experiment2Config) -> str:
  """Runs both experiments, writes experiment{1,2}.{csv,png} into output_dir, returns a summary."""
  os.makedirs(output_dir, exist_ok=True)
  start = time.time()
  rows1 = run_experiment1(config1)
  write_csv(rows1, os.path.join(output_dir, "experiment1.csv"))
  plot_experiment1(rows1, os.path.join(output_dir, "experiment1.png"))
  middle = time.time()
  rows2 = run_experiment2(config2)
  write_csv(rows2, os.path.join(output_dir, "experiment2.csv"))
  plot_experiment2(rows2, os.path.join(output_dir, "experiment2.png"))
  end = time.time()
  return (
      summarize(rows1, rows2)
      + f"\n(experiment 1: {middle - start:.1f} s, experiment 2: {end - middle:.1f} s)"
  )
