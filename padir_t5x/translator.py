"""`Translator`: a loaded model, its decoder and settings; source lines in, translations out.

The library behind `python -m padir_t5x.translate` (the command line lives there):

    from padir_t5x.translator import Translator   # also importable from padir_t5x.translate
    translator = Translator.from_checkpoint("models/caption_ar_teacher", beam_size=5)
    translator.translate(["Ein Hund läuft über den Strand."])   # -> ['A dog runs across ...']

A Translator only batches (sentences sorted by length, rows padded to a few fixed shapes so that
each compiles once, INPUT_WIDTHS[kind] x {batch_size, SMALL_BATCH_ROWS}), calls its `decoders.Decoder`
and detokenises. Checkpoints are read by `loading.load`; JAX's persistent compilation cache and
the compile-time clock of the closing report line are here too.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from padir_t5x import EOS_ID
from padir_t5x import PAD_ID
from padir_t5x.core import checkpoints
from padir_t5x.core import loading

# The PaDIR decoding fields the translator exposes (flags of the same names).
PADIR_OPTIONS = ("length_beam", "max_passes", "init", "remask", "dedup", "stutter_unit")
PADIR_OPTIONS += ("inits_per_length", "length_offsets", "prediction")  # candidates; summing
PADIR_OPTIONS += ("score",)  # which candidate wins
PADIR_OPTIONS += ("refine_top_k",)  # candidate pruning after the first pass
AR_OPTIONS = ("beam_size", "alpha")
# Draft-and-verify flags (with --draft_checkpoint): DraftVerifyConfig's verify, top_k, margin,
# redraft_passes, reuse_drafts, shift_variants, verify_candidates.
VERIFY_OPTIONS = ("verify", "verify_top_k", "verify_margin", "redraft_passes")
VERIFY_OPTIONS += ("reuse_drafts", "shift_variants", "verify_candidates")
# The flags whose DraftVerifyConfig field has another name.
VERIFY_FIELDS = {"verify_top_k": "top_k", "verify_margin": "margin"}
TOLERANT_OPTIONS = ("verify_top_k", "verify_margin")
# Encoder input widths per decoder kind (Translator.report_kind): a batch is padded to the
# smallest that holds its longest sentence (one compile per width used), capped at the model's
# input length. PaDIR compiles a refinement loop per length bucket (~9 s a width for the caption
# student on the 2-core CPU) while the padded source positions cost only its encoder and
# cross-attention, so it uses one width up to 64: on the 1,014 Multi30k captions (4-51 pieces)
# widths (16, 64) -> (64) took cold compile 19.3 s -> 8.6 s and warm decode 14.9 s -> 14.2 s
# (l=5). AR compiles in ~1.5 s a width but pays cross-attention at every step: widths (16, 64)
# beat (64) warm, 8.7 s against 10.7 s (beam 5, batch 32, load 1.6-1.8; issue 30).
# Draft-and-verify keeps the AR widths (not measured).
AR_WIDTHS = (16, 64, 256, 1024)
INPUT_WIDTHS = {"padir": (64, 256, 1024), "ar": AR_WIDTHS, "draft_verify": AR_WIDTHS}
# Row counts of a batch besides batch_size: a last batch of n < batch_size sentences is padded to
# the smallest that holds it (or to batch_size), so that any file compiles the same few shapes
# (at most three row counts per width) and a second run finds them in the compilation cache.
SMALL_BATCH_ROWS = (1, 8)
# JAX's persistent compilation cache: --compilation_cache, else $PADIR_COMPILATION_CACHE, else
# this directory under padir_t5x.data.shared_data.padir_cache_dir(); '' turns it off.
COMPILATION_CACHE_SUBDIR = "jax_cache"
# translate keeps its exported (traced and lowered) programs here, under the compilation cache.
EXPORTED_SUBDIR = "exported"
COMPILATION_CACHE_VARIABLE = "PADIR_COMPILATION_CACHE"


class TranslationInputError(ValueError):
  """An input line cannot be translated as asked (e.g. too long under --strict)."""


@dataclasses.dataclass(frozen=True)
class Translation:
  """One translated line.

  Attributes:
    text: the translation ('' for an empty input line).
    score: the best hypothesis's score (PaDIR: DecodingConfig.score; AR: length-penalised
      log-prob); None for an empty line.
    length: output tokens with EOS (PaDIR: the decoded length, before de-duplication); 0 for an
      empty line.
    passes: PaDIR refinement passes for this sentence; AR: decoder steps its batch ran;
      draft-and-verify: sequential calls (verify calls + PaDIR passes); 0 for an empty line.
    truncated: the source was cut to the model's input length.
    candidates: every hypothesis the decode kept, best first, as (text, score), when the
      Translator keeps them (`keep_candidates`): AR, the beam's hypotheses that ended (the alive
      ones where none ended); PaDIR, every length and initialisation candidate. () otherwise.
  """

  text: str
  score: float | None
  length: int
  passes: int
  truncated: bool = False
  candidates: tuple[tuple[str, float], ...] = ()


@dataclasses.dataclass
class Report:
  """What a run did: the one-line summary the command prints on stderr."""

  kind: str
  sentences: int = 0
  empty: int = 0
  truncated_lines: list[int] = dataclasses.field(default_factory=list)
  source_tokens: int = 0
  target_tokens: int = 0
  seconds: float = 0.0
  total_passes: int = 0
  compile_seconds: float = 0.0  # JAX tracing, lowering and compiling (or cache reads), in seconds

  @property
  def mean_passes(self) -> float:
    decoded = self.sentences - self.empty
    return self.total_passes / decoded if decoded else 0.0

  def line(self) -> str:
    rate = self.sentences / self.seconds if self.seconds > 0 else 0.0
    passes = {
        "padir": "mean passes",
        "draft_verify": "mean sequential calls (verify + PaDIR passes)",
    }.get(self.kind, "mean decoder steps")
    return (
        f"translated {self.sentences} sentences ({self.empty} empty, "
        f"{len(self.truncated_lines)} truncated), {self.source_tokens} source and "
        f"{self.target_tokens} target tokens in {self.seconds:.2f} s (compile "
        f"{self.compile_seconds:.1f} s): {rate:.2f} sentences/s, {passes} {self.mean_passes:.2f}"
    )


def truncation_warning(lines: Sequence[int], max_length: int, name: str) -> str:
  shown = ", ".join(str(n) for n in lines[:10]) + (", ..." if len(lines) > 10 else "")
  return (
      f"{len(lines)} line(s) of {name} longer than the model's input length ({max_length} "
      f"tokens with EOS) were truncated: line(s) {shown} (--strict makes this an error)"
  )


# The Translator's own keyword options (the rest of from_checkpoint's are decoding options).
TRANSLATOR_OPTIONS = ("batch_size", "seed", "strict", "keep_candidates", "exported_dir")


def _split_options(options: dict, kind: str, where: str) -> dict:
  """Pops the Translator's own options (TRANSLATOR_OPTIONS) out of
  `options` and returns them; the rest must be decoding options of a `kind` model (ValueError
  naming `where`)."""
  own = {k: options.pop(k) for k in TRANSLATOR_OPTIONS if k in options}
  if kind == "padir":
    wrong = sorted(set(options) & set(AR_OPTIONS))
  else:
    wrong = sorted(set(options) - set(AR_OPTIONS))
  if wrong:
    model = "a PaDIR" if kind == "padir" else "an AR"
    raise ValueError(f"{', '.join(wrong)} do(es) not apply to {model} model ({where})")
  return own


def _smallest_at_least(value: int, sizes: Sequence[int], cap: int) -> int:
  return min([s for s in sizes if value <= s < cap] + [cap])


def default_compilation_cache() -> str:
  """$PADIR_COMPILATION_CACHE if set ('' = none), else $PADIR_CACHE_DIR/jax_cache (default
  ~/.cache/padir_t5x/jax_cache)."""
  from padir_t5x.data import shared_data  # pylint: disable=g-import-not-at-top

  if COMPILATION_CACHE_VARIABLE in os.environ:
    return os.environ[COMPILATION_CACHE_VARIABLE]
  return os.path.join(shared_data.padir_cache_dir(), COMPILATION_CACHE_SUBDIR)


def enable_compilation_cache(directory: str | None) -> str | None:
  """Turns on JAX's persistent compilation cache in `directory` (created), for every compile of
  this process from now on, however short (CPU compiles too); None or '' leaves JAX as it is.

  Process-wide, so only the command calls it (a Translator does not change JAX's configuration);
  a program can call it before building its Translator. Returns the directory used, or None.
  """
  if not directory:
    return None
  import jax  # pylint: disable=g-import-not-at-top

  directory = os.path.abspath(os.path.expanduser(directory))
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


# The jax.monitoring events whose time spans are compile time: tracing to a jaxpr, lowering to
# MLIR, and XLA's compile (or the persistent cache's read, which replaces it).
COMPILE_EVENTS = frozenset(
    (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )
)


class CompileClock:
  """Wall seconds JAX spends compiling while `running` (the union of the COMPILE_EVENTS' time
  spans, so that a trace nested in another counts once), from jax.monitoring."""

  _listening = False
  _active: list[CompileClock] = []

  def __init__(self):
    self.spans: list[tuple[float, float]] = []

  @classmethod
  def _record(cls, event: str, start: float, end: float, **kwargs) -> None:
    del kwargs
    if event in COMPILE_EVENTS:
      cls.record_span(start, end)

  @classmethod
  def record_span(cls, start: float, end: float) -> None:
    """Counts [start, end] (time.perf_counter seconds) as compile time: reading a program that
    JAX does not time itself (decoders/exported.py)."""
    for clock in cls._active:
      clock.spans.append((start, end))

  @property
  def seconds(self) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in sorted(self.spans):
      if end > reach:
        total += end - max(start, reach)
        reach = end
    return total

  def __enter__(self) -> CompileClock:
    if not CompileClock._listening:
      from jax import monitoring  # pylint: disable=g-import-not-at-top

      monitoring.register_event_time_span_listener(CompileClock._record)
      CompileClock._listening = True
    CompileClock._active.append(self)
    return self

  def __exit__(self, *exc) -> None:
    CompileClock._active.remove(self)


@dataclasses.dataclass(frozen=True)
class Drafter:
  """The PaDIR drafter of draft-and-verify decoding: its network, params and the
  draft_verify.DraftVerifyConfig (the drafter's DecodingConfig inside)."""

  module: Any
  params: Any
  config: Any


class Translator:
  """A loaded model and its decoding settings; `translate` maps source lines to translations."""

  def __init__(
      self,
      module,
      params: Any,
      processor,
      kind: str,
      vocab_high: int,
      decoding_config=None,
      beam_size: int | None = None,
      alpha: float | None = None,
      batch_size: int = 32,
      seed: int = 0,
      strict: bool = False,
      drafter: Drafter | None = None,
      keep_candidates: bool = False,
      exported_dir: str | None = None,
  ):
    if kind not in checkpoints.KINDS:
      raise ValueError(f"kind must be one of {checkpoints.KINDS}, got {kind!r}")
    if drafter is not None and kind != "ar":
      raise ValueError("a drafter (draft-and-verify) needs an AR model to verify its drafts")
    if drafter is not None and keep_candidates:
      raise ValueError("draft-and-verify keeps one hypothesis per sentence: no candidates to keep")
    from padir_t5x.decoders import decoders  # pylint: disable=g-import-not-at-top

    # The AR defaults are ArBeamDecoder's fields (declared once, the --beam_size/--alpha flags' too).
    ar_defaults = {f.name: f.default for f in dataclasses.fields(decoders.ArBeamDecoder)}
    beam_size = ar_defaults["beam_size"] if beam_size is None else beam_size
    alpha = ar_defaults["alpha"] if alpha is None else alpha
    for name, value in (("batch_size", batch_size), ("beam_size", beam_size)):
      if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    self.module = module
    self.params = params
    self.processor = processor
    self.kind = kind
    self.vocab_high = vocab_high
    self.decoding_config = decoding_config
    self.beam_size = beam_size
    self.alpha = alpha
    self.batch_size = batch_size
    self.seed = seed
    self.strict = strict
    self.drafter = drafter
    self.keep_candidates = keep_candidates
    self.exported_dir = exported_dir
    self.decoder = self._build_decoder()  # its settings are checked now, not at the first batch
    self.max_input_length = self.decoder.max_input_length
    self.max_decode_length = self.decoder.max_decode_length

  def _build_decoder(self):
    """The `decoders.Decoder` of this model and its settings."""
    from padir_t5x.decoders import decoders  # pylint: disable=g-import-not-at-top
    from padir_t5x.decoders import draft_verify  # pylint: disable=g-import-not-at-top
    from padir_t5x.decoders import exported  # pylint: disable=g-import-not-at-top

    if self.drafter is not None:
      decoder = decoders.DraftVerifyDecoder(
          draft_verify.PadirDrafter(self.drafter.module),
          self.drafter.params,
          self.module,
          self.params,
          self.drafter.config,
      )
    elif self.kind == "padir":
      decoder = decoders.PadirDecoder(self.module, self.params, config=self.decoding_config)
    else:
      decoder = decoders.ArBeamDecoder(
          self.module,
          self.params,
          beam_size=self.beam_size,
          alpha=self.alpha,
          vocab_high=self.vocab_high,
      )
    if self.exported_dir:  # a later process reads the traced programs instead of tracing
      decoder = exported.ExportedDecoder(decoder, self.exported_dir, CompileClock.record_span)
    return decoder

  @classmethod
  def from_checkpoint(
      cls,
      path: str,
      vocab_path: str | None = None,
      kind: str | None = None,
      gin_file: str | None = None,
      dtype: str | None = None,
      **options,
  ) -> Translator:
    """Loads a core checkpoint directory, or a T5X one (needs t5x).

    Args:
      path: a core checkpoint directory (params.npz, config.json, vocab.model); or a T5X
        `checkpoint_N` directory, or a T5X model directory (its latest checkpoint_N).
      gin_file: T5X only: the gin config that builds the model (default: the config.gin that
        t5x.train wrote into the model directory).
      vocab_path: a SentencePiece model to use instead of the checkpoint's.
      kind: 'padir' or 'ar' to insist on one (CheckpointError naming config.json otherwise).
      dtype: the activation dtype to decode in, 'float32' or 'bfloat16' (on an accelerator);
        None keeps the checkpoint's. Parameters stay float32 either way.
      **options: length_beam, max_passes, init, remask, dedup, stutter_unit, inits_per_length,
        length_offsets, prediction, score, refine_top_k (PaDIR; any other DecodingConfig field
        too), beam_size, alpha (AR), batch_size, seed, strict, keep_candidates, exported_dir
        (a directory of exported programs, decoders/exported.py; None: trace each run). PaDIR
        decoding defaults are the checkpoint's recorded "decoding" fields, then
        DecodingConfig's; vocab_high and word_starts come from the vocabulary.
    """
    if not loading.is_t5x(path, gin_file):
      # A core checkpoint's kind and the options are checked before its weights are read.
      found = loading.checkpoint_kind(path, expected=kind)
      _split_options(dict(options), found, os.path.join(path, checkpoints.CONFIG_FILE))
    return cls.from_loaded(loading.load(path, vocab_path, kind, gin_file, dtype), **options)

  @classmethod
  def from_loaded(cls, loaded: loading.LoadedModel, **options) -> Translator:
    """A Translator of a loaded checkpoint (loading.load); options as from_checkpoint's (PaDIR
    decoding options override the checkpoint's defaults, `loaded.decoding`)."""
    where = os.path.join(loaded.path, checkpoints.CONFIG_FILE) if loaded.meta else loaded.path
    own = _split_options(options, loaded.kind, where)
    model = (loaded.module, loaded.params, loaded.vocabulary, loaded.kind, loaded.vocab_high)
    if loaded.kind == "padir":
      return cls(*model, dataclasses.replace(loaded.decoding, **options), **own)
    return cls(*model, **options, **own)

  @classmethod
  def draft_verify_from_checkpoints(
      cls,
      checkpoint: str,
      draft_checkpoint: str,
      vocab_path: str | None = None,
      gin_file: str | None = None,
      draft_gin_file: str | None = None,
      verify: str = "strict",
      verify_top_k: int | None = None,
      verify_margin: float | None = None,
      redraft_passes: int | None = None,
      reuse_drafts: bool = False,
      shift_variants: bool = False,
      verify_candidates: bool = False,
      **options,
  ) -> Translator:
    """An AR checkpoint that decodes greedily with the PaDIR checkpoint's drafts (draft_verify).

    Each checkpoint is loaded as `from_checkpoint` loads it (core or T5X), the AR one with
    kind='ar', the PaDIR one with kind='padir'; they must share their vocabulary.

    Args:
      checkpoint: the AR verifier.
      draft_checkpoint: the PaDIR drafter.
      vocab_path: a SentencePiece model to use for both instead of the checkpoints'.
      gin_file / draft_gin_file: T5X only, as from_checkpoint's gin_file.
      verify: 'strict' or 'tolerant' (modes.VerifyMode).
      verify_top_k / verify_margin: 'tolerant' only (DraftVerifyConfig's top_k, margin).
      redraft_passes: passes of every draft after the first (default: the first's).
      reuse_drafts / shift_variants: DraftVerifyConfig's (re-verify the last draft with the AR
        token in place, also shifted by one either way, before re-drafting).
      verify_candidates: DraftVerifyConfig's (verify every drafter candidate, not only its
        best-scoring one, in the same AR call).
      **options: batch_size, seed, strict, and the drafter's PaDIR decoding options (as
        from_checkpoint's; max_passes is the first draft's).
    """
    from padir_t5x.decoders import draft_verify  # pylint: disable=g-import-not-at-top

    own = {k: options.pop(k) for k in TRANSLATOR_OPTIONS if k in options}
    wrong = sorted(set(options) & set(AR_OPTIONS))
    if wrong:
      raise ValueError(
          f"{', '.join(wrong)} do(es) not apply to draft-and-verify decoding (AR greedy)"
      )
    verifier = loading.load(checkpoint, vocab_path, "ar", gin_file)
    drafter_model = loading.load(draft_checkpoint, vocab_path, "padir", draft_gin_file)
    loading.check_same_vocabulary(verifier, drafter_model, ": a drafter must share its verifier's")
    drafter = cls.from_loaded(drafter_model, **options)
    tolerant = {"top_k": verify_top_k, "margin": verify_margin}
    config = draft_verify.DraftVerifyConfig(
        decoding=drafter.decoding_config,
        redraft_passes=redraft_passes,
        verify=verify,
        reuse_drafts=reuse_drafts,
        shift_variants=shift_variants,
        verify_candidates=verify_candidates,
        **{k: v for k, v in tolerant.items() if v is not None},
    )
    return cls(
        verifier.module,
        verifier.params,
        verifier.vocabulary,
        "ar",
        verifier.vocab_high,
        drafter=Drafter(drafter.module, drafter.params, config),
        **own,
    )

  @property
  def report_kind(self) -> str:
    """'padir', 'ar' or 'draft_verify' (what Report.line names the passes after)."""
    return "draft_verify" if self.drafter is not None else self.kind

  # ---------------------------------------------------------------------------------------------
  def translate(self, lines: Sequence[str], details: bool = False) -> list:
    """Translations of `lines`, in order: strings, or `Translation`s with `details`.

    Warns (UserWarning) when lines were truncated; raises TranslationInputError under `strict`.
    """
    translations, report = self.translate_with_report(lines)
    if report.truncated_lines:
      warnings.warn(
          truncation_warning(report.truncated_lines, self.max_input_length, "the input"),
          stacklevel=2,
      )
    return translations if details else [t.text for t in translations]

  def encode(self, lines: Sequence[str], name: str = "the input"):
    """(token lists without EOS, 1-based numbers of truncated lines); an empty line gives []."""
    limit = self.max_input_length - 1  # room for EOS
    encoded, truncated = [], []
    for number, line in enumerate(lines, start=1):
      if "\n" in line:
        raise TranslationInputError(f"{name}: line {number} contains a newline")
      ids = self.processor.encode(line) if line.strip() else []
      if len(ids) > limit:
        if self.strict:
          raise TranslationInputError(
              f"{name}: line {number} has {len(ids) + 1} tokens with EOS, more than the "
              f"model's input length {self.max_input_length} (--strict)"
          )
        ids = ids[:limit]
        truncated.append(number)
      encoded.append(ids)
    return encoded, truncated

  def translate_with_report(
      self,
      lines: Sequence[str],
      name: str = "the input",
      progress: Callable[[int], tuple[Callable[[int], None], Callable[[], None]]] | None = None,
  ) -> tuple[list[Translation], Report]:
    """(translations in input order, Report).

    `progress(total)`, called once the lines are encoded (so that an input error comes before
    any progress output) with the number of sentences to decode, returns (update(k), close()):
    update after each batch of k sentences, close at the end.
    """
    start = time.perf_counter()
    encoded, truncated = self.encode(lines, name)
    update, close = progress(sum(1 for ids in encoded if ids)) if progress else (None, None)
    try:
      results, report = self._translate_encoded(encoded, truncated, update)
    finally:
      if close is not None:
        close()
    report.seconds = time.perf_counter() - start
    return results, report

  def _translate_encoded(self, encoded, truncated, update):
    report = Report(kind=self.report_kind, sentences=len(encoded), truncated_lines=truncated)
    results: list[Translation | None] = [None] * len(encoded)
    order = [i for i, ids in enumerate(encoded) if ids]
    for i, ids in enumerate(encoded):
      if not ids:
        results[i] = Translation("", None, 0, 0)
        report.empty += 1
    # Longest first: the largest shapes compile (and fail, if memory is short) first.
    order.sort(key=lambda i: (-len(encoded[i]), i))
    truncated_set = set(truncated)
    with CompileClock() as clock:  # compile seconds of the batches' new shapes
      for batch_index, begin in enumerate(range(0, len(order), self.batch_size)):
        rows = order[begin : begin + self.batch_size]
        texts, scores, lengths, passes, counts, candidates = self._decode_batch(
            [encoded[i] for i in rows], batch_index
        )
        for row, i in enumerate(rows):
          results[i] = Translation(
              texts[row],
              scores[row],
              lengths[row],
              passes[row],
              (i + 1) in truncated_set,
              candidates[row],
          )
          report.source_tokens += len(encoded[i])
          report.target_tokens += counts[row]
          report.total_passes += passes[row]
        if update is not None:
          update(len(rows))
    report.compile_seconds = clock.seconds
    return results, report

  def _decode_batch(self, sequences: list[list[int]], batch_index: int):
    """Decodes one batch: per row (texts, scores, lengths, passes, output token counts, candidates).

    candidates: per row, () or (with keep_candidates) every kept hypothesis, best first.
    """
    from padir_t5x.decoders import decoders  # pylint: disable=g-import-not-at-top
    from padir_t5x import vocab  # pylint: disable=g-import-not-at-top

    n = len(sequences)
    # Pad rows to batch_size (a last small batch to SMALL_BATCH_ROWS) and columns to an input
    # width, so that every file compiles the same few shapes; padding rows are EOS-only sources,
    # dropped afterwards.
    num_rows = _smallest_at_least(n, SMALL_BATCH_ROWS, self.batch_size)
    width = _smallest_at_least(
        max(len(s) for s in sequences) + 1, INPUT_WIDTHS[self.report_kind], self.max_input_length
    )
    tokens = np.zeros((num_rows, width), np.int32)
    tokens[:, 0] = EOS_ID
    for row, ids in enumerate(sequences):
      tokens[row, : len(ids)] = ids
      tokens[row, len(ids)] = EOS_ID
    hypotheses = self.decoder.decode(tokens, decoders.batch_rng(self.seed, batch_index))
    best = np.asarray(hypotheses.best)[:n]
    if hypotheses.scores is None:  # one hypothesis without a score (greedy, draft-and-verify)
      scores, candidates = [None] * n, [()] * n
    else:
      scores = np.asarray(hypotheses.scores)[:n, -1].tolist()
      candidates = self._candidates(hypotheses.sequences, hypotheses.scores, n)
    lengths = np.asarray(hypotheses.lengths)[:n, -1].tolist()
    passes = np.asarray(hypotheses.steps)[:n].tolist()
    ended = np.cumsum((best == EOS_ID) | (best == PAD_ID), axis=1) > 0
    counts = (~ended).sum(axis=1).tolist()  # tokens before the first EOS (or PAD)
    texts = vocab.ids_to_text(self.processor, best)
    return texts, scores, lengths, passes, counts, candidates

  def _candidates(self, sequences, scores, n: int) -> list[tuple[tuple[str, float], ...]]:
    """Per row of the first n, its hypotheses as (text, score), best first; () unless kept.

    sequences: [rows, c, t] int ids, scores: [rows, c], both increasing along c (t5x's order, as
    both decoders return them). A score at or below NEG_INF / 2 marks an AR beam slot that no
    hypothesis reached; it is left out.
    """
    if not self.keep_candidates:
      return [()] * n
    from padir_t5x.decoders import ar_decoding  # pylint: disable=g-import-not-at-top
    from padir_t5x import vocab  # pylint: disable=g-import-not-at-top

    sequences = np.asarray(sequences)[:n, ::-1, :]  # [n, c, t], best first
    scores = np.asarray(scores)[:n, ::-1].astype(float)  # [n, c]
    c = sequences.shape[1]
    texts = vocab.ids_to_text(self.processor, sequences.reshape(n * c, -1))
    return [
        tuple(
            (texts[row * c + j], float(scores[row, j]))
            for j in range(c)
            if scores[row, j] > ar_decoding.NEG_INF / 2
        )
        for row in range(n)
    ]
