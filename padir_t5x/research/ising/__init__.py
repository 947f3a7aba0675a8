"""The paper's Ising-model experiments (Li et al. 2024, Sec. 2.2, 2.4.2, 3.1, App. L.6-L.7).

  model       Ising models on few spins; exact enumeration, log-partition, block conditionals.
  estimation  k-pseudolikelihood (k-MPLE) loss and full-batch fit.
  sampling    k-Gibbs and the independent parallel sampler; exact transition matrices.
  experiments Experiment 1 (parameter error vs k) and 2 (steps to the larger mode), CSV/PNG.

Run both experiments with `python -m padir_t5x.research.ising --output_dir DIR [--quick]`.
"""
