"""Trains a tiny AR or PaDIR translation model for a fixed wall-clock budget, saves a checkpoint.

    python -m benchmarks.train_budget --model padir --minutes 10 --out runs/budget/padir
    python -m benchmarks.train_budget --model ar    --minutes 10 --out runs/budget/ar
    python -m benchmarks.train_budget --model padir --max_steps 1000 --out runs/budget/padir_1k
    python -m benchmarks.train_budget --model padir --max_steps 1000 \
        --train_data_dir runs/budget/distilled --out runs/budget/padir_distilled_1k

Both models share the network code (padir_t5x.core.network; AR = decoder_mode='autoregressive'), the
SentencePiece vocabulary (built once from the training text and cached under --vocab_dir), the
data, the batches (same seed, same length buckets), the optimiser, the schedule and the train
step (padir_t5x.core.training, which the quickstart uses too; only the loss differs). The budget is
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
predictor, which start fresh (padir_t5x.core.checkpoints.warm_start); the optimiser state and the
schedule start from zero as in any run. A student warm-started from its teacher carries the
teacher's steps in its weights: its record says so ("warm_start"), and benchmarks/README.md
counts those steps beside its own.

Losses: PaDIR uses the core multi-stage loss (padir_t5x.core.losses.multi_stage_loss); AR uses the
teacher-forced cross-entropy of the targets shifted right (BOS = PAD = 0),
`budget_training.ar_loss`. Both are normalised per real target token, with the same z-loss.

This module is the command; the settings are benchmarks/budget_config.py, the data and its
buckets benchmarks/budget_data.py, the training loop benchmarks/budget_training.py.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from benchmarks.budget_config import BudgetConfig
from benchmarks.budget_config import padir_loss_config
from benchmarks.budget_config import transformer_config
from benchmarks.budget_data import buckets_for
from benchmarks.budget_data import load_training_pairs
from benchmarks.budget_training import train
from padir_t5x.core import checkpoints
from padir_t5x import cli
from padir_t5x.core import network
from padir_t5x.core import network_config
from padir_t5x.core import resume as resume_lib
from padir_t5x.data import shared_data
from padir_t5x import vocab as vocab_lib
from padir_t5x.core.loss_config import PadirLossConfig

# The training loss of every step, float32 [steps], saved beside the finished checkpoint.
LOSS_CURVE_FILE = "loss_curve.npy"


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
  data_dir = shared_data.data_dir_or_error(parser, args.data_dir)
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
