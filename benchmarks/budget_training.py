"""The equal-budget trainer's loop (benchmarks/train_budget.py): train for a step or wall-clock
budget, the learning rate following the spent fraction of it.

The train step is padir_t5x.core.training's, compiled ahead of time for every bucket shape before
the clock starts (`compile_per_bucket`); the loss is PaDIR's multi-stage loss or, for the AR model,
`ar_loss` (teacher-forced cross-entropy of the targets shifted right), both per real target token.
`train` can save the whole run state every few minutes and resume from it (padir_t5x.core.resume).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.budget_config import BudgetConfig
from benchmarks.budget_config import padir_loss_config
from benchmarks.budget_config import transformer_config
from benchmarks.budget_data import DEFAULT_BUCKETS
from benchmarks.budget_data import bucket_batches
from padir_t5x.core import checkpoints
from padir_t5x.core import cross_entropy
from padir_t5x.core import network
from padir_t5x import progress
from padir_t5x.core import resume as resume_lib
from padir_t5x.core import training


def shift_right(targets: jnp.ndarray) -> jnp.ndarray:
  """[b, t] -> [b, t]: BOS (= PAD = 0, as t5x) then targets[:, :-1]."""
  return jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))


def ar_loss(module, params, batch, rng, z_loss: float = 1e-4, enable_dropout: bool = True):
  """Teacher-forced cross-entropy of an autoregressive Transformer, per real target token.

  Args:
    batch: 'encoder_input_tokens' [b, s], 'decoder_target_tokens' [b, t] (EOS-terminated).

  Returns:
    (loss, metrics {'loss', 'token_accuracy', 'num_tokens'}).
  """
  targets = jnp.asarray(batch["decoder_target_tokens"])
  logits = module.apply(
      {"params": params},
      jnp.asarray(batch["encoder_input_tokens"]),
      shift_right(targets),
      targets,
      enable_dropout=enable_dropout,
      rngs={"dropout": rng},
  )
  weights = (targets > 0).astype(jnp.float32)
  loss, _, num_tokens = cross_entropy.token_cross_entropy(
      logits,
      targets,
      weights,
      z_loss=z_loss,
      loss_normalizing_factor=cross_entropy.REAL_TARGET_TOKENS,
  )
  correct = jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
  return loss, {
      "loss": loss,
      "token_accuracy": correct / jnp.maximum(num_tokens, 1.0),
      "num_tokens": num_tokens,
  }


def budget_fraction(config: BudgetConfig, step: int, elapsed_seconds: float) -> float:
  """How much of the budget is spent: step / max_steps (a step budget) or elapsed / minutes."""
  if config.budget_kind == "steps":
    return step / config.max_steps
  return elapsed_seconds / (config.minutes * 60.0)


def time_schedule(config: BudgetConfig, fraction: float) -> float:
  """Learning rate at `fraction` of the budget: linear warm-up, cosine decay to a floor."""
  peak = config.peak_learning_rate
  if fraction < config.warmup_fraction:
    return peak * fraction / config.warmup_fraction
  progress = min(1.0, (fraction - config.warmup_fraction) / (1.0 - config.warmup_fraction))
  floor = peak * config.final_learning_rate_fraction
  return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def loss_function(
    config: BudgetConfig, module: network.Transformer, vocab_high: int
) -> training.LossFn:
  """config.model's training loss, per real target token with config.z_loss, dropout on.

  PaDIR: the core multi-stage loss; AR: `ar_loss`.
  """
  if config.model == "padir":
    return training.padir_loss_fn(module, padir_loss_config(config, vocab_high))

  def loss_fn(params, batch, rng):
    return ar_loss(module, params, batch, rng, config.z_loss)

  return loss_fn


def compile_per_bucket(train_step, params, opt_state, rng, buckets=DEFAULT_BUCKETS) -> dict:
  """{(batch size, length): `train_step` (with a learning-rate argument) compiled for that shape}.

  Compiled ahead of time so that no compilation falls inside the budget (the docstring of
  benchmarks/train_budget.py).
  """
  compiled = {}
  for length, size in buckets:
    shape = jax.ShapeDtypeStruct((size, length), jnp.int32)
    compiled[(size, length)] = (
        jax.jit(train_step)
        .lower(
            params,
            opt_state,
            {"encoder_input_tokens": shape, "decoder_target_tokens": shape},
            rng,
            jnp.zeros((), jnp.float32),
        )
        .compile()
    )
  return compiled


def _log_line(config: BudgetConfig, step: int, start: float, lr, recent: list[dict]) -> str:
  """One progress line (`progress_line`), then the learning rate, and the loss per real target
  token (both losses are normalised so) and the accuracies, averaged over the steps since the
  last line."""
  shown = {
      "loss/token" if k == "loss" else k: float(np.mean([float(m[k]) for m in recent]))
      for k in recent[-1]
      if k == "loss" or k.endswith("accuracy")
  }
  return (
      f"[{config.model}] {progress_line(config, step, time.perf_counter() - start)}  "
      f"lr={float(lr):.2e}  " + "  ".join(f"{k}={v:.3f}" for k, v in sorted(shown.items()))
  )


def train(
    config: BudgetConfig,
    inputs,
    targets,
    vocab_high: int,
    log=print,
    init_params=None,
    buckets=DEFAULT_BUCKETS,
    run_dir: str | None = None,
    checkpoint_minutes: float = 0.0,
    resume: bool = False,
    settings: dict | None = None,
):
  """Trains for config.max_steps steps or config.minutes of wall-clock; returns
  (module, params, record dict, per-step losses float32 [steps]).

  The learning rate follows the spent fraction of the binding budget (`budget_fraction`,
  `time_schedule`); with a step budget, a positive config.minutes still stops the run early.
  `init_params` (the params of config.init_from) warm-start every leaf they share with the
  network (checkpoints.warm_start); the optimiser state starts fresh either way.

  With `run_dir` and `checkpoint_minutes` > 0 the whole run state is saved there atomically
  (padir_t5x.core.resume) every `checkpoint_minutes` of training; `resume` continues from that
  state: parameters, optimiser state, PRNG key and step count restored, the data order replayed to the
  same batch, so the run goes on as if never stopped (a step budget's schedule then matches
  exactly; a wall-clock budget counts the training seconds of every part). `settings` (the
  run's flags and data) are stored with the state and must match on resume.
  """
  module = network.Transformer(transformer_config(config, vocab_high))
  batches = bucket_batches(inputs, targets, buckets=buckets, seed=config.seed)
  first = next(batches)
  # Clipping and weight decay as training.TrainConfig's defaults.
  optimizer = training.make_injected_optimizer(gradient_clip_norm=1.0, weight_decay=0.0)
  params, opt_state, rng = training.init_train_state(module, first, config.seed, optimizer)
  warm = None
  if init_params is not None:
    warm = checkpoints.warm_start(params, init_params, config.init_from)
    params, opt_state = warm.params, optimizer.init(warm.params)
    log(
        f"[{config.model}] warm start from {config.init_from}: {len(warm.copied)} leaves copied, "
        f"{len(warm.fresh)} fresh ({', '.join(warm.fresh[:4])}{' ...' if len(warm.fresh) > 4 else ''})"
    )
  train_step = training.with_learning_rate(
      training.make_train_step(loss_function(config, module, vocab_high), optimizer)
  )

  compile_start = time.perf_counter()
  compiled = compile_per_bucket(train_step, params, opt_state, rng, buckets)
  compile_seconds = time.perf_counter() - compile_start
  log(f"[{config.model}] compiled {len(compiled)} shapes in {compile_seconds:.0f}s")

  step, batch, tokens_seen, recent, done_losses = 0, first, 0, [], np.zeros((0,), np.float32)
  seconds_before = 0.0  # training seconds of the earlier parts of a resumed run
  if resume:
    params, opt_state, rng, step, done_losses, saved, counters = resume_lib.load(
        run_dir, params, opt_state
    )
    differences = resume_lib.settings_differences(saved, settings or {})
    if differences:
      raise resume_lib.ResumeError(
          f"{resume_lib.state_path(run_dir)} was saved by a run with other settings: "
          + "; ".join(differences)
      )
    rng = jnp.asarray(rng)
    seconds_before, tokens_seen = counters["seconds"], counters["target_tokens_seen"]
    for _ in range(step):  # the data order is a pure function of the seed: replay it
      batch = next(batches)
    log(f"[{config.model}] resumed at step {step} ({seconds_before:.0f}s trained)")

  def save_state(now: float) -> None:
    losses_so_far = np.concatenate([done_losses, np.asarray(step_losses, np.float32)])
    resume_lib.save(
        run_dir,
        params,
        opt_state,
        rng,
        step,
        losses_so_far,
        settings or {},
        # `now` is already this part's training seconds (perf_counter() - start).
        {"seconds": seconds_before + now, "target_tokens_seen": tokens_seen},
    )

  time_limit = config.minutes * 60.0 if config.minutes > 0 else math.inf
  save_every = checkpoint_minutes * 60.0 if run_dir and checkpoint_minutes > 0 else math.inf
  start = time.perf_counter()
  step_losses = []  # device scalars of this part's steps, fetched when saved or at the end
  metrics = None
  next_log, next_save = 30.0, save_every
  while True:
    elapsed = seconds_before + time.perf_counter() - start
    if elapsed >= time_limit or (config.max_steps and step >= config.max_steps):
      break
    rng, step_rng = jax.random.split(rng)
    fraction = budget_fraction(config, step, elapsed)
    lr = jnp.asarray(time_schedule(config, fraction), jnp.float32)
    params, opt_state, metrics = compiled[batch["decoder_target_tokens"].shape](
        params, opt_state, training.device_batch(batch), step_rng, lr
    )
    step += 1
    tokens_seen += int((batch["decoder_target_tokens"] > 0).sum())
    recent.append(metrics)
    step_losses.append(metrics["loss"])
    now = time.perf_counter() - start
    if now >= next_log:
      log(_log_line(config, step, start - seconds_before, lr, recent))
      recent, next_log = [], next_log + 60.0
    if now >= next_save:
      save_state(now)
      done_losses = np.concatenate([done_losses, np.asarray(step_losses, np.float32)])
      step_losses, next_save = [], now + save_every
      log(f"[{config.model}] saved the run state at step {step} in {run_dir}")
    batch = next(batches)
  jax.block_until_ready(params)
  seconds = seconds_before + time.perf_counter() - start
  all_losses = np.concatenate([done_losses, np.asarray(step_losses, np.float32)])
  last_metrics = recent[-1] if recent else metrics
  last = {k: float(v) for k, v in (last_metrics or {}).items()}
  num_params = int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
  record = {
      "budget": config.budget_kind,
      "steps": step,
      "seconds": round(seconds, 1),
      "target_tokens_seen": tokens_seen,
      "compile_seconds": round(compile_seconds, 1),
      "num_params": num_params,
      "last_metrics": last,
      "budget_config": dataclasses.asdict(config),
  }
  if warm is not None:
    record["warm_start"] = {
        "checkpoint": os.path.abspath(config.init_from),
        "copied_leaves": len(warm.copied),
        "fresh": list(warm.fresh),
    }
  if resume:
    record["resumed"] = True
  log(f"[{config.model}] done: {step} steps in {seconds:.0f}s, {num_params:,} parameters")
  return module, params, record, all_losses


def progress_line(config: BudgetConfig, step: int, elapsed: float) -> str:
  """Steps done, rate and ETA (padir_t5x.progress): 'step 300/1200  25% [01:02<03:06, 4.80
  step/s]' with a step budget; 'step 300 [01:02, 4.80 step/s]  10% of 10 min, ETA 09:18' with
  a wall-clock budget, whose end is a time, not a step."""
  if config.budget_kind == "steps":
    return progress.progress_text(step, config.max_steps, elapsed)
  fraction = budget_fraction(config, step, elapsed)
  remaining = config.minutes * 60.0 - elapsed
  return (
      progress.progress_text(step, None, elapsed)
      + f"  {100 * fraction:.0f}% of {config.minutes:g} min, ETA {progress.clock(remaining)}"
  )
