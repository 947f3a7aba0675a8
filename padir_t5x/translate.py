"""Translate your own text with a trained PaDIR (or AR) model: one translation per input line.

    python -m padir_t5x.translate --checkpoint runs/quickstart < input.de > output.en
    python -m padir_t5x.translate --checkpoint runs/quickstart --input in.de --output out.en
    echo "drei katzen schlafen" | python -m padir_t5x.translate --checkpoint runs/quickstart

The checkpoint is a core checkpoint (padir_t5x/core/checkpoints.py: params.npz + config.json +
vocab.model), as written by `python -m padir_t5x.quickstart` and benchmarks/train_budget.py, or,
with t5x installed, a T5X checkpoint_N (or model) directory: the model comes from the config.gin
t5x.train wrote (or --gin_file), the parameters from
padir_t5x.t5x_adapter.restore.load_for_inference. PaDIR models decode by iterative refinement over a
length beam (length-bucketed, so a batch of short sentences refines only the positions its predicted
lengths need); AR models by cached beam search. Decoding defaults are those the checkpoint records
(the quickstart's evaluation setting), else DecodingConfig's; the flags override them.

Draft and verify (padir_t5x/decoders/draft_verify.py): with --draft_checkpoint PADIR, the AR model
of --checkpoint decodes greedily with PaDIR drafts that it verifies in one pass each; --verify
strict (the default) gives AR greedy's translation exactly in fewer sequential calls, --verify
tolerant (--verify_top_k, --verify_margin) trades exactness for fewer rounds. The PaDIR flags set
the drafter's decoding (--max_passes: the first draft's passes; --redraft_passes: the later ones'):

    python -m padir_t5x.translate --checkpoint runs/budget/ar_800 \\
        --draft_checkpoint runs/budget/padir_distilled_800 --length_beam 5 --max_passes 1 \\
        --redraft_passes 1 --reuse_drafts --shift_variants --verify_candidates < in.de

An EM run's final models are T5X model directories (`python -m padir_t5x.em` prints them as
ar_model and nar_model): --checkpoint AR_MODEL --draft_checkpoint NAR_MODEL (needs t5x; their
config.gin build the models, or --gin_file / --draft_gin_file).

Lines are read as UTF-8 and split on '\\n' only (padir_t5x.data.textio). Sentences are sorted by
length into batches and the translations written back in input order; an empty line gives an
empty translation. A line longer than the model's input length is truncated (with a warning
counting such lines) or, with --strict, is an error. --output is written only when the whole run
succeeds (a temporary file in the same directory, then os.replace); an --output that is the
--input (or --vocab) file, a directory, or in a directory that cannot be written is refused
before anything is read (cli.check_output_path), as is reading a closed standard input. A
--vocab other than the checkpoint's is refused where config.json records its vocab_sha256 (a
warning for older checkpoints, which do not). At the end, one line on
stderr: sentences, tokens, wall time, sentences/s and mean passes.

Compiling: each batch shape (rows: --batch_size, or 1 or 8 for a last small batch; columns: an
input width) compiles once per process, and the compiled programs are kept in JAX's persistent
compilation cache (--compilation_cache DIR, default $PADIR_CACHE_DIR/jax_cache, i.e.
~/.cache/padir_t5x/jax_cache; '' turns it off), so that the next run reads them instead of
compiling again; the traced programs are kept beside them (DIR/exported,
padir_t5x/decoders/exported.py), so that the next run does not trace them either. The closing
line says how much of the wall time was compiling ("compile N s").
--refine_top_k k (PaDIR) refines only the k best length candidates after the first pass.

With --init random (the paper's setting), the random initial tokens are drawn per batch from
--seed: the output is reproducible for the same input and flags, but a sentence may translate
differently in another batch. --init mask makes every sentence's translation independent of the
others.

Python:

    from padir_t5x.translate import Translator   # padir_t5x/translator.py
    translator = Translator.from_checkpoint("runs/quickstart")
    translator.translate(["drei katzen schlafen"])            # -> ['three cats sleep']
    translator.translate(lines, details=True)                 # -> [Translation(text, score, ...)]
    Translator.from_checkpoint(path, keep_candidates=True)    # Translation.candidates: all, best first
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence


from padir_t5x.core import checkpoints
from padir_t5x import cli
from padir_t5x.core import loading
from padir_t5x import progress
from padir_t5x.data import textio
from padir_t5x.core.checkpoints import CheckpointError
from padir_t5x.translator import AR_OPTIONS
from padir_t5x.translator import EXPORTED_SUBDIR
from padir_t5x.translator import PADIR_OPTIONS
from padir_t5x.translator import TOLERANT_OPTIONS
from padir_t5x.translator import VERIFY_FIELDS
from padir_t5x.translator import VERIFY_OPTIONS
from padir_t5x.translator import Translation  # noqa: F401  (the library's names, from here too)
from padir_t5x.translator import TranslationInputError
from padir_t5x.translator import Translator
from padir_t5x.translator import default_compilation_cache
from padir_t5x.translator import enable_compilation_cache
from padir_t5x.translator import truncation_warning


# -------------------------------------------------------------------------------------------------
# The command.
def build_parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(
      prog="python -m padir_t5x.translate",
      description="Translate text with a PaDIR or AR core checkpoint, one line per sentence.",
  )
  parser.add_argument(
      "--checkpoint",
      required=True,
      help="core checkpoint directory (params.npz, config.json), or a T5X checkpoint_N or model "
      "directory (needs t5x)",
  )
  parser.add_argument(
      "--gin_file", help="T5X: the gin config that builds the model (default: its config.gin)"
  )
  parser.add_argument("--input", help="UTF-8 source file, one sentence a line (default: stdin)")
  parser.add_argument("--output", help="translations, one a line (default: stdout)")
  parser.add_argument("--vocab", help="SentencePiece model to use instead of the checkpoint's")
  parser.add_argument(
      "--kind", choices=checkpoints.KINDS, help="fail unless the checkpoint is of this kind"
  )
  # The decoding flags are generated from the config fields that declare them (cli.add_config_flags):
  # one help text, range and default each, shared with the benchmarks. Unset flags keep the
  # checkpoint's recorded setting.
  from padir_t5x.decoders import decoders  # pylint: disable=g-import-not-at-top
  from padir_t5x.decoders import draft_verify  # pylint: disable=g-import-not-at-top
  from padir_t5x.decoders.decoding_config import DecodingConfig  # pylint: disable=g-import-not-at-top

  padir = parser.add_argument_group("PaDIR decoding (default: the checkpoint's setting)")
  cli.add_config_flags(padir, DecodingConfig, PADIR_OPTIONS, unset=True)
  ar = parser.add_argument_group("AR decoding")
  cli.add_config_flags(ar, decoders.ArBeamDecoder, AR_OPTIONS, unset=True)
  dv = parser.add_argument_group(
      "draft and verify (AR greedy with PaDIR drafts; the PaDIR flags set the drafter's decoding)"
  )
  dv.add_argument(
      "--draft_checkpoint",
      help="PaDIR checkpoint that drafts for the AR --checkpoint (core, or T5X with t5x)",
  )
  dv.add_argument("--draft_gin_file", help="T5X: the gin config of the drafter")
  cli.add_config_flags(
      dv,
      draft_verify.DraftVerifyConfig,
      [VERIFY_FIELDS.get(name, name) for name in VERIFY_OPTIONS],
      flag_names={field: flag for flag, field in VERIFY_FIELDS.items()},
      unset=True,
  )
  # 32 for both kinds, by measurement: the caption models on the 1,014 Multi30k captions, warm
  # cache, 2-core CPU (load 1.6-1.8): PaDIR k=1 98.7 / 120.5 / 116.2 sentences/s at 16 / 32 /
  # 64, PaDIR l=5 71.7 / 66.5 at 32 / 64, AR beam 5 95.1 / 95.1 at 32 / 64 (issue 30).
  parser.add_argument("--batch_size", type=cli.positive_int, default=32)
  parser.add_argument(
      "--compilation_cache",
      metavar="DIR",
      default=None,
      help="JAX's persistent compilation cache, so that a second run does not compile again "
      "(default: $PADIR_COMPILATION_CACHE, else $PADIR_CACHE_DIR/jax_cache, i.e. "
      "~/.cache/padir_t5x/jax_cache; '' turns it off)",
  )
  parser.add_argument(
      "--dtype",
      choices=("float32", "bfloat16"),
      default=None,
      help="activation dtype to decode in (bfloat16 on an accelerator); default: the model's",
  )
  parser.add_argument(
      "--seed", type=cli.seed_int, default=0, help="random initial tokens, re-masking"
  )
  parser.add_argument(
      "--strict", action="store_true", help="a line longer than the model's input is an error"
  )
  parser.add_argument("--details", action="store_true", help="text<TAB>score<TAB>length<TAB>passes")
  parser.add_argument("--no_progress", action="store_true", help="no progress bar for --input")
  return parser


def _progress_bar(total: int):
  """(update(k), close()) of a progress bar on stderr: tqdm if importable, else a '\\r' line."""
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    tqdm = None
  if tqdm is not None:
    bar = tqdm(total=total, unit="sent", file=sys.stderr, desc="translate")
    return bar.update, bar.close
  start, done = time.perf_counter(), [0]

  def update(k: int) -> None:
    done[0] += k
    line = progress.progress_text(done[0], total, time.perf_counter() - start, unit="sent")
    sys.stderr.write(f"\rtranslate {line}")
    sys.stderr.flush()

  def close() -> None:
    sys.stderr.write("\n")

  return update, close


def _described_file(checkpoint: str) -> str:
  """The file that says what a checkpoint holds: a core checkpoint's config.json, else the dir."""
  config = os.path.join(checkpoint, checkpoints.CONFIG_FILE)
  return config if os.path.isfile(config) else checkpoint


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  # Flag checks that need no model: exit 2 with argparse's one-line message.
  if args.input is not None and os.path.isdir(args.input):
    parser.error(f"argument --input: {args.input} is a directory, not a file")
  if args.input is not None and not os.path.isfile(args.input):
    parser.error(f"argument --input: file not found: {args.input}")
  if args.vocab is not None and not os.path.isfile(args.vocab):
    parser.error(f"argument --vocab: file not found: {args.vocab}")
  if args.gin_file is not None and not os.path.isfile(args.gin_file):
    parser.error(f"argument --gin_file: file not found: {args.gin_file}")
  if args.draft_checkpoint is None:
    given = [k for k in VERIFY_OPTIONS + ("draft_gin_file",) if getattr(args, k) is not None]
    if given:
      parser.error(f"argument --{given[0]}: needs --draft_checkpoint (draft and verify)")
  else:
    if not os.path.isdir(args.draft_checkpoint):
      parser.error(f"argument --draft_checkpoint: directory not found: {args.draft_checkpoint}")
    if args.draft_gin_file is not None and not os.path.isfile(args.draft_gin_file):
      parser.error(f"argument --draft_gin_file: file not found: {args.draft_gin_file}")
    given = [k for k in AR_OPTIONS if getattr(args, k) is not None]
    if given:
      parser.error(
          f"argument --{given[0]}: does not apply to draft and verify (AR greedy decoding)"
      )
    if args.kind == "padir":
      parser.error("argument --kind: draft and verify needs an AR --checkpoint, not 'padir'")
    if args.shift_variants and not args.reuse_drafts:
      parser.error("argument --shift_variants: needs --reuse_drafts")
    if args.verify != "tolerant":
      given = [k for k in TOLERANT_OPTIONS if getattr(args, k) is not None]
      if given:
        parser.error(f"argument --{given[0]}: needs --verify tolerant")
  if not os.path.isdir(args.checkpoint):
    parser.error(f"argument --checkpoint: directory not found: {args.checkpoint}")
  cli.check_output_path(
      parser,
      "--output",
      args.output,
      inputs={
          "--input": args.input,
          "--vocab": args.vocab,
          "--gin_file": args.gin_file,
          "--draft_gin_file": args.draft_gin_file,
      },
  )
  if args.input is None and cli.stdin_is_closed():
    parser.error("standard input is closed: pass --input FILE")

  prog = "translate"
  cache = default_compilation_cache() if args.compilation_cache is None else args.compilation_cache
  exported_dir = None
  try:
    cache = enable_compilation_cache(cache)
    if cache:  # the traced programs beside the compiled ones: a warm run neither traces nor lowers
      exported_dir = os.path.join(cache, EXPORTED_SUBDIR)
  except OSError as e:  # an unwritable cache directory costs compile time, not the run
    print(f"{prog}: warning: no compilation cache: {e}", file=sys.stderr)
  try:
    name = args.input or "<stdin>"
    if args.input is None:
      lines = [line for _, line in textio.iter_stream_lines(sys.stdin.buffer, name, True)]
    else:
      lines = [line for _, line in textio.iter_text_lines(args.input, allow_empty_lines=True)]
    meta = {"kind": loading.checkpoint_kind(args.checkpoint, args.gin_file)}
    # The Translator's own options (TRANSLATOR_OPTIONS), the same for both kinds of run.
    own = {"batch_size": args.batch_size, "seed": args.seed, "strict": args.strict}
    own["exported_dir"] = exported_dir
    if args.draft_checkpoint is not None:
      return _draft_verify_main(parser, args, lines, meta["kind"], own)
    decoder_flags = AR_OPTIONS if meta["kind"] == "ar" else PADIR_OPTIONS
    options = {k: getattr(args, k) for k in decoder_flags if getattr(args, k) is not None}
    if args.kind is None:
      other = PADIR_OPTIONS if meta["kind"] == "ar" else AR_OPTIONS
      given = [k for k in other if getattr(args, k) is not None]
      if given:
        model = "an AR" if meta["kind"] == "ar" else "a PaDIR"
        parser.error(
            f"argument --{given[0]}: does not apply to {model} model "
            f"({_described_file(args.checkpoint)})"
        )
    load_start = time.perf_counter()
    translator = Translator.from_checkpoint(
        args.checkpoint,
        vocab_path=args.vocab,
        kind=args.kind,
        gin_file=args.gin_file,
        dtype=args.dtype,
        **own,
        **options,
    )
    load_seconds = time.perf_counter() - load_start
    return _translate_and_write(args, translator, lines, load_seconds)
  except (CheckpointError, textio.CorpusFileError, TranslationInputError, ValueError) as e:
    # CheckpointError, CorpusFileError and TranslationInputError are ValueErrors; others (a
    # length beam the model cannot decode) are too: one line, no traceback.
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 1


def _draft_verify_main(parser, args, lines: list[str], kind: str, own: dict) -> int:
  """main() with --draft_checkpoint: kind checks (exit 2), then load both and translate; `own`
  is main's Translator options (batch_size, seed, strict, exported_dir).

  Raises what main() turns into exit status 1 (CheckpointError, ...).
  """
  if kind != "ar":
    parser.error(
        f"argument --draft_checkpoint: needs an AR --checkpoint to verify the drafts, but "
        f"{_described_file(args.checkpoint)} holds a PaDIR model"
    )
  draft_kind = loading.checkpoint_kind(args.draft_checkpoint, args.draft_gin_file)
  if draft_kind != "padir":
    parser.error(
        f"argument --draft_checkpoint: needs a PaDIR checkpoint, but "
        f"{_described_file(args.draft_checkpoint)} holds an AR model"
    )
  options = {k: getattr(args, k) for k in PADIR_OPTIONS if getattr(args, k) is not None}
  verify = {k: getattr(args, k) for k in VERIFY_OPTIONS if getattr(args, k) is not None}
  load_start = time.perf_counter()
  translator = Translator.draft_verify_from_checkpoints(
      args.checkpoint,
      args.draft_checkpoint,
      vocab_path=args.vocab,
      gin_file=args.gin_file,
      draft_gin_file=args.draft_gin_file,
      **own,
      **verify,
      **options,
  )
  return _translate_and_write(args, translator, lines, time.perf_counter() - load_start)


def _translate_and_write(args, translator: Translator, lines: list[str], load_seconds: float):
  """Translates `lines`, writes the output and the summary line; returns the exit status."""
  prog = "translate"
  name = args.input or "<stdin>"
  progress = _progress_bar if args.input is not None and not args.no_progress else None
  translations, report = translator.translate_with_report(lines, name, progress)
  if report.truncated_lines:
    message = truncation_warning(report.truncated_lines, translator.max_input_length, name)
    print(f"{prog}: warning: {message}", file=sys.stderr)
  if args.details:
    rows = [
        f"{t.text}\t{'' if t.score is None else f'{t.score:.4f}'}\t{t.length}\t{t.passes}"
        for t in translations
    ]
  else:
    rows = [t.text for t in translations]
  data = "".join(row + "\n" for row in rows).encode("utf-8")
  if args.output is None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
  else:
    textio.write_atomically(args.output, data)
  print(f"{prog}: {report.line()} (model load {load_seconds:.1f} s)", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
