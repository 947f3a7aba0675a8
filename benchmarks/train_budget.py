"""Trains a tiny AR or PaDIR translation model for a fixed wall-clock budget, saves a checkpoint.

    python -m benchmarks.train_budget --model padir --minutes 10 --out runs/budget/padir
    python -m benchmarks.train_budget --model ar    --minutes 10 --out runs/budget/ar
    python -m benchmarks.train_budget --model padir --max_steps 1000 --out runs/budget/padir_1k
    python -m benchmarks.train_budget --model padir --max_steps 1000 \
        --train_data_dir runs/budget/distilled --out runs/budget/padir_distilled_1k

Both models share the network code (padir_t5x.network; AR = decoder_mode='autoregressive'), the
SentencePiece vocabulary (built once from the training text and cached under --vocab_dir), the
data, the batches (same seed, same length buckets), the optimiser, the schedule and the train
step (padir_t5x.training, which the quickstart uses too; only the loss differs). The budget is
wall-clock time of training steps: the step function is compiled ahead of time for every bucket
shape before the clock starts (the compile time is recorded apart), because on a small shared CPU
compiling PaDIR's two-stage loss takes minutes and would otherwise eat a large, load-dependent
share of a short budget.

Two kinds of budget (`budget_kind`): with --max_steps N the run trains exactly N steps and the
learning rate follows warm-up + cosine decay over the *steps* (step / N), whatever the wall-clock
(--minutes 0 means no time limit; a positive --minutes still stops the run early, recorded); with
--max_steps 0 the run trains for --minutes of wall-clock and the learning rate follows the
*elapsed fraction of that time*, since the number of steps it allows is not known in advance
(training.make_injected_optimizer either way).

--train_data_dir reads the training pairs from another data directory (a distilled copy,
benchmarks/distill_budget.py) while the vocabulary stays the one built from --data_dir's raw
text, so every model shares it. --loss and --network (FIELD=VALUE, repeatable; padir_t5x/cli.py)
set any field of loss_config.PadirLossConfig and network_config.TransformerConfig.

--init_from DIR warm-starts the run from a core checkpoint: an AR checkpoint of the same sizes
shares every parameter with a PaDIR network but the positional attention and the length
predictor, which start fresh (padir_t5x.checkpoints.warm_start); the optimiser state and the
schedule start from zero as in any run. A student warm-started from its teacher carries the
teacher's steps in its weights: its record says so ("warm_start"), and benchmarks/README.md
counts those steps beside its own.

Losses: PaDIR uses the core multi-stage loss (padir_t5x.losses.multi_stage_loss); AR uses the
teacher-forced cross-entropy of the targets shifted right (BOS = PAD = 0), `ar_loss` below. Both
are normalised per real target token, with the same z-loss.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from padir_t5x import checkpoints
from padir_t5x import cli
from padir_t5x import cross_entropy
from padir_t5x.loss_config import PadirLossConfig
from padir_t5x import network
from padir_t5x import network_config
from padir_t5x import progress
from padir_t5x import resume as resume_lib
from padir_t5x import shared_data
from padir_t5x import textio
from padir_t5x import training
from padir_t5x import vocab as vocab_lib

# (padded length, batch size): about 2k target tokens per batch in each bucket; two shapes,
# so two compilations, instead of padding every short Multi30k/Tatoeba sentence to 80.
DEFAULT_BUCKETS = ((32, 64), (80, 24))


def buckets_for(max_length: int) -> tuple[tuple[int, int], ...]:
  """DEFAULT_BUCKETS up to `max_length`, closed by a bucket of exactly `max_length` (about 2k
  target tokens a batch) when none ends there: every pair that fits in max_length has a bucket
  and no bucket is longer than the network's position tables."""
  kept = tuple(bucket for bucket in DEFAULT_BUCKETS if bucket[0] <= max_length)
  if not kept or kept[-1][0] < max_length:
    kept += ((max_length, max(1, 1920 // max_length)),)
  return kept


# The training loss of every step, float32 [steps], saved beside the finished checkpoint.
LOSS_CURVE_FILE = "loss_curve.npy"


@dataclasses.dataclass(frozen=True)
class BudgetConfig:
  """Sizes of the equal-budget run (tiny: 2+2 layers, d=128, for a shared 2-core CPU)."""

  model: str = "padir"
  minutes: float = 10.0
  vocab_size: int = 4000
  max_length: int = 80
  emb_dim: int = 128
  num_heads: int = 4
  mlp_dim: int = 512
  num_layers: int = 2
  dropout_rate: float = 0.1
  peak_learning_rate: float = 2e-3
  warmup_fraction: float = 0.05
  final_learning_rate_fraction: float = 0.05
  num_stages: int = 2
  unmasking_rate: float = 0.25  # the library default, chosen by the dev sweep (README)
  z_loss: float = 1e-4
  seed: int = 0
  max_steps: int = 0  # > 0: a step budget (the schedule follows steps); 0: wall-clock budget
  # FIELD=VALUE overrides (padir_t5x/cli.py) of the PaDIR loss config and of the network config.
  loss: tuple[str, ...] = ()
  network: tuple[str, ...] = ()
  # A core checkpoint (typically the AR teacher) whose parameters start every leaf they share
  # with this network (checkpoints.warm_start); '' trains from scratch.
  init_from: str = ""

  @property
  def budget_kind(self) -> str:
    """'steps' when --max_steps binds the run (and its schedule), else 'wall_clock'."""
    return "steps" if self.max_steps > 0 else "wall_clock"

  def __post_init__(self):
    if self.model not in checkpoints.KINDS:
      raise ValueError(f"--model must be one of {checkpoints.KINDS}, got {self.model!r}")
    if self.max_steps < 0:
      raise ValueError(f"--max_steps must be >= 0, got {self.max_steps}")
    if self.minutes < 0 or (self.max_steps == 0 and self.minutes <= 0):
      raise ValueError(
          f"--minutes must be > 0 without --max_steps (>= 0 with it), got {self.minutes}"
      )
    if self.loss and self.model != "padir":
      raise ValueError("--loss sets PaDIR loss fields; the AR model has none")


def transformer_config(config: BudgetConfig, vocab_high: int) -> network_config.TransformerConfig:
  """The tiny network of `config` (AR or PaDIR decoder), both sides max_length long."""
  return dataclasses.replace(
      _sized_config(config, vocab_high),
      **cli.parse_overrides(network_config.TransformerConfig, config.network),
  )


def _sized_config(config: BudgetConfig, vocab_high: int) -> network_config.TransformerConfig:
  return network_config.tiny_config_from_sizes(
      vocab_size=vocab_lib.padded_vocab_size(vocab_high),
      emb_dim=config.emb_dim,
      num_heads=config.num_heads,
      mlp_dim=config.mlp_dim,
      num_layers=config.num_layers,
      max_input_length=config.max_length,
      max_target_length=config.max_length,
      dropout_rate=config.dropout_rate,
      decoder_mode="padir" if config.model == "padir" else "autoregressive",
  )


def bucket_batches(
    inputs: list[list[int]], targets: list[list[int]], buckets=DEFAULT_BUCKETS, seed: int = 0
) -> Iterator[dict]:
  """Endless shuffled batches, each from one length bucket (padded to the bucket length).

  A pair goes to the first bucket that holds both sides; pairs longer than the last bucket are
  dropped by the caller. Buckets are drawn in proportion to their number of full batches, so
  every pair is seen about equally often.

  Yields: {'encoder_input_tokens': int32 [B, L], 'decoder_target_tokens': int32 [B, L]}.
  """
  rng = np.random.default_rng(seed)
  members = [[] for _ in buckets]
  for i, (x, y) in enumerate(zip(inputs, targets)):
    longest = max(len(x), len(y))
    for b, (length, _) in enumerate(buckets):
      if longest <= length:
        members[b].append(i)
        break
  weights = np.array([len(m) / size for m, (_, size) in zip(members, buckets)], np.float64)
  usable = weights >= 1
  if not usable.any():
    raise ValueError("no bucket has a full batch of training pairs")
  weights = np.where(usable, weights, 0.0)
  weights /= weights.sum()
  orders = [rng.permutation(m) for m in members]
  cursors = [0] * len(buckets)
  while True:
    b = int(rng.choice(len(buckets), p=weights))
    length, size = buckets[b]
    if cursors[b] + size > len(orders[b]):
      orders[b], cursors[b] = rng.permutation(members[b]), 0
    rows = orders[b][cursors[b] : cursors[b] + size]
    cursors[b] += size
    yield {
        "encoder_input_tokens": common.pad_rows([inputs[i] for i in rows], length),
        "decoder_target_tokens": common.pad_rows([targets[i] for i in rows], length),
    }


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


def padir_loss_config(config: BudgetConfig, vocab_high: int | None) -> PadirLossConfig:
  """The PaDIR loss config of `config`: its flat fields, then the --loss overrides."""
  return PadirLossConfig(
      **{
          "num_stages": config.num_stages,
          "unmasking_rate": config.unmasking_rate,
          "vocab_high": vocab_high,
          "z_loss": config.z_loss,
          "loss_normalizing_factor": cross_entropy.REAL_TARGET_TOKENS,
          **cli.parse_overrides(PadirLossConfig, config.loss),
      }
  )


def compile_per_bucket(train_step, params, opt_state, rng, buckets=DEFAULT_BUCKETS) -> dict:
  """{(batch size, length): `train_step` (with a learning-rate argument) compiled for that shape}.

  Compiled ahead of time so that no compilation falls inside the budget (module docstring).
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
  (padir_t5x.resume) every `checkpoint_minutes` of training; `resume` continues from that state:
  parameters, optimiser state, PRNG key and step count restored, the data order replayed to the
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
        {"seconds": seconds_before + now - start, "target_tokens_seen": tokens_seen},
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


def load_training_pairs(data_dir: str, processor, max_length: int, pair: str = "de-en"):
  """Encoded train pairs (EOS appended) with both sides <= max_length ids."""
  src, tgt = pair.split("-")
  # Validated pairs: a line-count mismatch fails with the file names instead of zip() truncating.
  pairs = textio.read_parallel_files(
      os.path.join(data_dir, pair, f"train.{src}"), os.path.join(data_dir, pair, f"train.{tgt}")
  )
  xs = common.encode_lines(processor, [source for source, _ in pairs])
  ys = common.encode_lines(processor, [target for _, target in pairs])
  kept = [(x, y) for x, y in zip(xs, ys) if 1 < len(x) <= max_length and 1 < len(y) <= max_length]
  return [x for x, _ in kept], [y for _, y in kept], len(xs)


def check_warm_start(config: BudgetConfig, init_params, init_meta: dict, processor) -> None:
  """Raises CheckpointError (naming config.init_from) unless its params can start this network:
  the same SentencePiece model as `processor` (the run's) and the same shape at every shared
  path."""
  theirs = checkpoints.load_vocabulary(
      init_meta.get("vocab_model"), init_meta, init_meta["transformer"]["vocab_size"]
  )
  # The comparison translate.Translator.draft_verify_from_checkpoints makes between verifier and drafter.
  if theirs.serialized_model_proto() != processor.serialized_model_proto():
    raise checkpoints.CheckpointError(
        f"{config.init_from}: its vocabulary {init_meta['vocab_model']} is not this run's"
    )
  module = network.Transformer(transformer_config(config, processor.get_piece_size()))
  checkpoints.warm_start(checkpoints.abstract_params(module), init_params, config.init_from)


# The flat flags' types: each rejects a value outside its range before any work (padir_t5x/cli.py).
FLAG_TYPES = {
    "minutes": cli.non_negative_float,
    "vocab_size": cli.int_range(5),  # the 4 special pieces and at least one more
    "max_length": cli.positive_int,
    "emb_dim": cli.positive_int,
    "num_heads": cli.positive_int,
    "mlp_dim": cli.positive_int,
    "num_layers": cli.positive_int,
    "dropout_rate": cli.float_range(0.0, 1.0, high_open=True),
    "peak_learning_rate": cli.positive_float,
    "warmup_fraction": cli.float_range(0.0, 1.0, high_open=True),  # time_schedule divides by 1-w
    "final_learning_rate_fraction": cli.probability,
    "num_stages": cli.positive_int,
    "unmasking_rate": cli.probability,
    "z_loss": cli.non_negative_float,
    "seed": cli.seed_int,
    "max_steps": cli.non_negative_int,
}


FLAG_HELP = {
    "init_from": "a core checkpoint (the AR teacher) whose parameters start every leaf this "
    "network shares with it (same vocabulary and sizes; checked before the data is read)"
}


@cli.entry_point
def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  for field in dataclasses.fields(BudgetConfig):
    if field.name in ("loss", "network"):
      config_class = PadirLossConfig if field.name == "loss" else network_config.TransformerConfig
      cli.add_override_flag(parser, f"--{field.name}", config_class)
    else:
      parser.add_argument(
          f"--{field.name}",
          type=FLAG_TYPES.get(field.name, type(field.default)),
          choices=checkpoints.KINDS if field.name == "model" else None,
          default=field.default,
          help=FLAG_HELP.get(field.name),
      )
  parser.add_argument("--out", required=True, help="checkpoint directory to write")
  parser.add_argument("--data_dir", default=None, help="default: $PADIR_DATA_DIR or ../shared/data")
  parser.add_argument(
      "--train_data_dir",
      default=None,
      help="read de-en/train.{de,en} from here instead (a distilled copy); default: --data_dir",
  )
  parser.add_argument("--vocab_dir", default="runs/budget/vocab")
  parser.add_argument(
      "--checkpoint_minutes",
      type=cli.non_negative_float,
      default=10.0,
      help="save the whole run state (--out/train_state.npz, atomically) every N minutes of "
      "training, so that --resume can continue it; 0: never",
  )
  parser.add_argument(
      "--resume",
      action="store_true",
      help="continue the unfinished run in --out from its last saved state (same flags and "
      "data; a finished run is never touched)",
  )
  args = parser.parse_args(argv)
  cli.check_at_most(parser, args, "num_heads", "emb_dim")
  cli.check_output_path(
      parser,
      "--out",
      args.out,
      inputs={
          "--data_dir": args.data_dir,
          "--train_data_dir": args.train_data_dir,
          "--init_from": args.init_from,
          "--vocab_dir": args.vocab_dir,
      },
      kind="dir",
      make_parents=True,
  )
  check_run_dir(parser, args.out, args.resume)
  fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(BudgetConfig)}
  # Every flag is checked before the vocabulary, the data or the network is touched.
  try:
    config = BudgetConfig(**{**fields, "loss": tuple(args.loss), "network": tuple(args.network)})
  except ValueError as error:
    parser.error(str(error))
  checks = [("--network", lambda: transformer_config(config, vocab_high=128))]
  if config.model == "padir":
    checks.append(("--loss", lambda: padir_loss_config(config, vocab_high=None)))
  for flag, check in checks:
    try:
      check()
    except (TypeError, ValueError) as error:
      parser.error(f"{flag}: {error}")
  init_params, init_meta = None, None
  if config.init_from:
    try:
      _, init_params, init_meta = checkpoints.load_checkpoint(config.init_from)
    except checkpoints.CheckpointError as error:
      parser.error(f"--init_from: {error}")
  data_dir = args.data_dir or shared_data.find_data_dir()
  if data_dir is None:
    parser.error("no data: pass --data_dir or set $PADIR_DATA_DIR")
  train_data_dir = args.train_data_dir or data_dir
  for language in ("de", "en"):
    path = os.path.join(train_data_dir, "de-en", f"train.{language}")
    if not os.path.isfile(path):
      parser.error(f"--train_data_dir: no training file {path}")
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  vocab_model = vocab_lib.ensure_pair_vocabulary(
      data_dir, "de-en", config.vocab_size, args.vocab_dir
  )
  processor = spm.SentencePieceProcessor(model_file=vocab_model)
  if init_params is not None:
    # Before the data is read: another vocabulary or other sizes make the warm start meaningless.
    try:
      check_warm_start(config, init_params, init_meta, processor)
    except checkpoints.CheckpointError as error:
      parser.error(f"--init_from: {error}")
  inputs, targets, total = load_training_pairs(train_data_dir, processor, config.max_length)
  print(
      f"{len(inputs)} of {total} training pairs (from {train_data_dir}) fit in "
      f"{config.max_length} ids; vocab {processor.get_piece_size()}; devices {jax.devices()}"
  )
  settings = run_settings(config, train_data_dir, processor, len(inputs))
  try:
    module, params, record, step_losses = train(
        config,
        inputs,
        targets,
        processor.get_piece_size(),
        init_params=init_params,
        buckets=buckets_for(config.max_length),
        run_dir=args.out,
        checkpoint_minutes=args.checkpoint_minutes,
        resume=args.resume,
        settings=settings,
    )
  except resume_lib.ResumeError as error:
    parser.error(f"--resume: {error}")
  record["train_pairs"] = len(inputs)
  record["train_data_dir"] = os.path.abspath(train_data_dir)
  checkpoints.save_checkpoint(
      args.out,
      params,
      module.config,
      config.model,
      vocab_model=vocab_model,
      vocab_high=processor.get_piece_size(),
      train_record=record,
  )
  np.save(os.path.join(args.out, LOSS_CURVE_FILE), step_losses)
  # The run is finished and saved: its resumable state has no further use.
  if os.path.exists(resume_lib.state_path(args.out)):
    os.remove(resume_lib.state_path(args.out))
  print(json.dumps({k: v for k, v in record.items() if k != "budget_config"}))


def run_settings(config: BudgetConfig, train_data_dir: str, processor, train_pairs: int) -> dict:
  """What a resumed run must share with the run it continues: every flag of the config, the
  training data and the vocabulary (as JSON would return them, for the comparison)."""
  return json.loads(
      json.dumps(
          {
              "budget_config": dataclasses.asdict(config),
              "train_data_dir": os.path.abspath(train_data_dir),
              "train_pairs": train_pairs,
              "vocab_sha256": checkpoints.vocabulary_sha256(processor),
          }
      )
  )


def check_run_dir(parser, out: str, resume: bool) -> None:
  """Refuses, before any work, to train into --out when that would lose a run: a finished
  checkpoint is never overwritten or resumed, an unfinished run is only continued by --resume."""
  finished = checkpoints.is_core_checkpoint(out)
  state = resume_lib.state_path(out)
  if resume:
    if finished:
      parser.error(
          f"--resume: {out} holds a finished run ({checkpoints.CONFIG_FILE}); nothing to resume"
      )
    try:
      resume_lib.read_meta(out)
    except resume_lib.ResumeError as error:
      parser.error(f"--resume: {error}")
  elif finished:
    parser.error(f"--out: {out} already holds a finished checkpoint; choose another directory")
  elif os.path.exists(state):
    step = resume_lib.read_meta(out)["step"] if os.path.isfile(state) else "?"
    parser.error(
        f"--out: {out} holds an unfinished run (saved at step {step}): pass --resume to "
        "continue it, or choose another directory"
    )


if __name__ == "__main__":
  main()
