"""Latency / quality benchmark of an AR and a PaDIR checkpoint on a dev set.

    python -m benchmarks.latency --ar_checkpoint runs/budget/ar \
        --padir_checkpoint runs/budget/padir --num_sentences 500 --out_dir runs/bench

Both flags repeat, each as [NAME=]DIR, so that several models share one run (one machine
load, the same sentences): `--ar_checkpoint teacher=models/caption_ar_teacher
--ar_checkpoint student=models/caption_ar_student --padir_checkpoint ...`. Each row names its
model (the name, or its kind when none is given).

For every setting (AR: cached beam search, beam 1 and 5; PaDIR: max passes T in 1, 2, 4, 10 x
length beam l in 1, 3, 5) it measures, on the first `num_sentences` dev pairs that fit the
models' position tables:

* latency per sentence at batch 1 (one jitted call per sentence, inputs padded to one shape so
  there is one compilation, timed to block_until_ready), after `warmup` calls: median, p90,
  p99, mean (ms);
* compile time, apart: the first call's wall time (for bucketed PaDIR: compiling every bucket
  first) minus the median steady-state latency;
* throughput (sentences/s) over the same sentences at the largest batch that fits, or where
  doubling it stops paying: from `throughput_batch`, halved on RESOURCE_EXHAUSTED until it
  fits, then doubled up to `max_throughput_batch` while sentences/s still grow by 5% (every
  batch tried is in results.json; on a CPU, memory is never the limit, the cores are);
* SacreBLEU and the word-level stutter rate of the batch-1 outputs;
* decoder passes per sentence: PaDIR's passes after early stop, AR's decoder steps (its output
  length in tokens, EOS included, plus any steps the beam ran on after the best hypothesis ended,
  t5x's stopping rule: until no alive hypothesis can still beat the worst finished one).

PaDIR decodes as the library does by default: each batch refines only the smallest of
--length_buckets (default DecodingConfig.length_buckets) that holds its predicted lengths, chosen
inside jit. With --full_table T:l those settings also run over the whole position table (no
buckets, setting suffix ',full table'): the cost of the one decoding inefficiency this benchmark
found, refining every position every pass.

Writes results.json, results.md (a markdown table) and pareto.png (BLEU against median latency,
the Pareto front joined) under --out_dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks.timing import environment
from benchmarks.timing import latency_summary
from padir_t5x import EOS_ID
from padir_t5x import cli
from padir_t5x.decoders import decoders
from padir_t5x.core import loading
from padir_t5x.data import metrics as metrics_lib
from padir_t5x.data import shared_data
from padir_t5x.decoders.decoding_config import DecodingConfig

RESULT_KEYS = (
    "model",
    "system",
    "setting",
    "params",
    "num_sentences",
    "bleu",
    "stutter_rate",
    "latency_ms",
    "compile_s",
    "throughput_sent_per_s",
    "throughput_batch",
    "decoder_passes_per_sentence",
    "mean_output_tokens",
)
LATENCY_KEYS = ("median", "p90", "p99", "mean")


def output_length(row: np.ndarray) -> int:
  """Tokens of an output row up to and including its first EOS (all non-PAD if none)."""
  row = np.asarray(row)
  eos = np.flatnonzero(row == EOS_ID)
  return int(eos[0]) + 1 if eos.size else int(np.sum(row != 0))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
  """Indices of the (latency, bleu) points no other point beats on both (lower latency, higher
  BLEU), sorted by latency."""
  order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
  front, best = [], -np.inf
  for i in order:
    if points[i][1] > best:
      front.append(i)
      best = points[i][1]
  return front


@dataclasses.dataclass
class System:
  """A decoder to benchmark: decode(tokens [B, s]) -> (best ids [B, t], passes [B])."""

  name: str
  setting: str
  params: dict
  decode: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
  # Compiles every shape decode may need for this batch shape (None: decode's first call does).
  precompile: Callable[[np.ndarray], None] | None = None


def ar_system(
    module, params, beam: int, max_decode_length: int, vocab_high: int, alpha: float = 0.6
) -> System:
  decoder = decoders.ArBeamDecoder(
      module,
      params,
      max_decode_length=max_decode_length,
      beam_size=beam,
      alpha=alpha,
      vocab_high=vocab_high,
  )

  def decode(tokens):
    out = jax.block_until_ready(decoder.decode(tokens, None))
    return np.asarray(out.best), np.asarray(out.steps)

  return System("ar", f"beam={beam}", {"beam": beam, "alpha": alpha}, decode)


def padir_system(
    module,
    params,
    passes: int,
    length_beam: int,
    max_decode_length: int,
    vocab_high: int,
    length_buckets: Sequence[int] = DecodingConfig.length_buckets,
    seed: int = 0,
    word_starts: np.ndarray | None = None,
) -> System:
  """PaDIR through decoders.PadirDecoder (decoding.decode_with_network); the passes refine only the smallest of
  `length_buckets` that holds the length beam (chosen inside jit; same hypotheses), or the whole
  table when it is empty. `word_starts`: the vocabulary's word-start table (DecodingConfig.word_starts,
  for the default word-level stutter)."""
  config = DecodingConfig(
      length_beam=length_beam,
      max_passes=passes,
      vocab_high=vocab_high,
      length_buckets=tuple(length_buckets),
      word_starts=word_starts,
  )
  rng = jax.random.PRNGKey(seed)
  decoder = decoders.PadirDecoder(
      module, params, max_decode_length=max_decode_length, config=config
  )

  def decode(tokens):
    out = jax.block_until_ready(decoder.decode(jnp.asarray(tokens), rng))
    return np.asarray(out.best), np.asarray(out.steps)

  setting = {
      "max_passes": passes,
      "length_beam": length_beam,
      "length_buckets": list(length_buckets),
  }
  return System(
      "padir",
      f"T={passes},l={length_beam}" + ("" if length_buckets else ",full table"),
      setting,
      decode,
  )


def _is_oom(error: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or isinstance(error, MemoryError)


def measure(
    system: System,
    source_ids: np.ndarray,
    warmup: int,
    throughput_batch: int,
    log=print,
    max_throughput_batch: int = 512,
) -> dict:
  """Runs the batch-1 latency loop and the throughput pass; returns timings and outputs."""
  n = source_ids.shape[0]
  start = time.perf_counter()
  if system.precompile is not None:
    system.precompile(source_ids[:1])
  system.decode(source_ids[:1])
  first_call = time.perf_counter() - start
  for i in range(warmup):
    system.decode(source_ids[i % n : i % n + 1])
  seconds, outputs, passes = [], [], []
  for i in range(n):
    start = time.perf_counter()
    ids, used = system.decode(source_ids[i : i + 1])
    seconds.append(time.perf_counter() - start)
    outputs.append(ids[0])
    passes.append(int(used[0]))
  latency = latency_summary(seconds)

  by_batch = measure_throughput(system, source_ids, throughput_batch, max_throughput_batch, log)
  best = max(by_batch, key=by_batch.get) if by_batch else None
  return {
      "latency_ms": latency,
      "compile_s": max(0.0, first_call - latency["median"] / 1e3),
      "first_call_s": first_call,
      "throughput_sent_per_s": by_batch[best] if best else None,
      "throughput_batch": best,
      "throughput_by_batch": by_batch,
      "outputs": np.stack(outputs),
      "passes": passes,
  }


def _throughput_at(system: System, source_ids: np.ndarray, batch: int) -> float:
  """Sentences per second decoding all of source_ids in batches of `batch` (after warm-up)."""
  n = source_ids.shape[0]
  # Pad the last batch with copies of row 0, so one shape (one compile) serves all.
  num_batches = -(-n // batch)
  padded = np.concatenate([source_ids, np.repeat(source_ids[:1], num_batches * batch - n, 0)])
  if system.precompile is not None:
    system.precompile(padded[:batch])
  system.decode(padded[:batch])  # compile + warm-up
  start = time.perf_counter()
  for j in range(num_batches):
    system.decode(padded[j * batch : (j + 1) * batch])
  return n / (time.perf_counter() - start)


def measure_throughput(
    system: System,
    source_ids: np.ndarray,
    start_batch: int,
    max_batch: int,
    log=print,
    min_gain: float = 0.05,
) -> dict[int, float]:
  """{batch: sentences/s}: the largest batch that fits, or where doubling stops paying.

  From `start_batch`, halves on out-of-memory until a batch fits, then doubles (up to
  `max_batch` and the number of sentences) while the throughput still grows by `min_gain`.
  The best entry is the reported throughput.
  """
  n = source_ids.shape[0]
  batch = max(1, min(start_batch, n))
  by_batch: dict[int, float] = {}
  limit = min(max_batch, n)  # lowered to (the smallest batch that did not fit) - 1
  while True:
    try:
      by_batch[batch] = _throughput_at(system, source_ids, batch)
    except Exception as e:  # pylint: disable=broad-except
      if not _is_oom(e):
        raise
      log(f"  batch {batch} does not fit ({type(e).__name__})")
      limit = batch - 1
      if by_batch or batch == 1:
        break  # the previous (smaller) batch was the largest that fits
      batch //= 2
      continue
    previous = by_batch.get(batch // 2)
    if previous is not None and by_batch[batch] < previous * (1 + min_gain):
      break
    if batch * 2 > limit:
      break
    batch *= 2
  return {b: round(v, 2) for b, v in sorted(by_batch.items())}


def score(processor, references: list[str], output_ids: np.ndarray) -> dict:
  hypotheses = common.ids_to_text(processor, output_ids)
  return {
      "bleu": metrics_lib.corpus_bleu(references, hypotheses),
      "stutter_rate": metrics_lib.stutter_rate(references, hypotheses)["stutter_rate"],
      "hypotheses": hypotheses,
  }


def named_checkpoints(specs: str | Sequence[str] | None, kind: str) -> list[tuple[str, str]]:
  """[(name, dir)] of '[NAME=]DIR' specs (one string, several, or None); the name defaults to
  the kind."""
  if specs is None:
    return []
  if isinstance(specs, str):
    specs = [specs]
  named = []
  for spec in specs:
    name, _, path = spec.rpartition("=")
    named.append((name or kind, path))
  return named


def run_benchmark(
    ar_checkpoint: str | Sequence[str] | None,
    padir_checkpoint: str | Sequence[str] | None,
    data_dir: str,
    out_dir: str,
    num_sentences: int = 500,
    warmup: int = 10,
    ar_beams: Sequence[int] = (1, 5),
    passes: Sequence[int] = (1, 2, 4, 10),
    length_beams: Sequence[int] = (1, 3, 5),
    throughput_batch: int = 64,
    max_throughput_batch: int = 512,
    full_table: Sequence[tuple[int, int]] = (),
    length_buckets: Sequence[int] = DecodingConfig.length_buckets,
    log=print,
    split: str = "dev",
) -> dict:
  """Benchmarks every setting of every model; writes results.json, results.md, pareto.png;
  returns the JSON.

  ar_checkpoint / padir_checkpoint: one '[NAME=]DIR' or several (`named_checkpoints`).
  `split`: the de-en/{split}.{de,en} files of data_dir to translate.
  """
  models = [
      (name, kind, path)
      for kind, specs in (("ar", ar_checkpoint), ("padir", padir_checkpoint))
      for name, path in named_checkpoints(specs, kind)
  ]
  if not models:
    raise ValueError("give at least one of ar_checkpoint / padir_checkpoint")
  names = [name for name, _, _ in models]
  if len(set(names)) != len(names):
    raise ValueError(f"model names must differ (NAME=DIR), got {names}")
  loaded = {name: loading.load(path, kind=kind) for name, kind, path in models}
  first = next(iter(loaded.values()))
  for model in loaded.values():
    loading.check_same_vocabulary(first, model)
  processor, vocab_high = first.vocabulary, first.vocab_high
  # One shape for every system: the smallest position table of the loaded models.
  max_length = min(
      min(m.module.config.max_input_length, m.module.config.max_target_length)
      for m in loaded.values()
  )
  sources, references, source_ids, kept = common.load_dev_set(
      data_dir, processor, num_sentences, max_length, split
  )
  log(
      f"{len(sources)} {split} sentences (first {num_sentences} with source and reference "
      f"<= {max_length} pieces; last line used: {kept[-1] + 1 if kept else 0})"
  )

  systems = []  # (model name, System)
  for name, kind, _ in models:
    module, params = loaded[name].module, loaded[name].params
    if kind == "ar":
      systems += [(name, ar_system(module, params, k, max_length, vocab_high)) for k in ar_beams]
      continue
    words = {"word_starts": loading.vocabulary_fields(processor)["word_starts"]}
    systems += [
        (name, padir_system(module, params, t, l, max_length, vocab_high, length_buckets, **words))
        for t in passes
        for l in length_beams
    ]
    systems += [
        (name, padir_system(module, params, t, l, max_length, vocab_high, (), **words))
        for t, l in full_table
    ]

  results = []
  os.makedirs(out_dir, exist_ok=True)
  for model, system in systems:
    measured = measure(system, source_ids, warmup, throughput_batch, log, max_throughput_batch)
    scored = score(processor, references, measured["outputs"])
    lengths = [output_length(row) for row in measured["outputs"]]
    entry = {
        "model": model,
        "system": system.name,
        "setting": system.setting,
        "params": system.params,
        "num_sentences": len(sources),
        "bleu": round(scored["bleu"], 2),
        "stutter_rate": round(scored["stutter_rate"], 4),
        "latency_ms": {k: round(v, 3) for k, v in measured["latency_ms"].items()},
        "compile_s": round(measured["compile_s"], 2),
        "throughput_sent_per_s": (
            round(measured["throughput_sent_per_s"], 2)
            if measured["throughput_sent_per_s"]
            else None
        ),
        "throughput_batch": measured["throughput_batch"],
        "throughput_by_batch": measured["throughput_by_batch"],
        "decoder_passes_per_sentence": round(float(np.mean(measured["passes"])), 2),
        "mean_output_tokens": round(float(np.mean(lengths)), 2),
    }
    results.append(entry)
    log(
        f"{model} {system.name:5s} {system.setting:10s} BLEU {entry['bleu']:6.2f}  "
        f"median {entry['latency_ms']['median']:8.2f} ms  p99 {entry['latency_ms']['p99']:8.2f}"
        f" ms  compile {entry['compile_s']:.1f}s  passes {entry['decoder_passes_per_sentence']}"
        f"  {entry['throughput_sent_per_s']} sent/s @ {entry['throughput_batch']}"
    )
    with open(
        os.path.join(
            out_dir,
            f"hyps.{model}.{system.name}.{system.setting}.txt".replace(",", "_").replace("=", ""),
        ),
        "w",
        encoding="utf-8",
    ) as f:
      f.write("\n".join(scored["hypotheses"]) + "\n")

  report = {
      "results": results,
      "environment": environment(),
      "data": {
          "data_dir": data_dir,
          "split": split,
          "num_sentences": len(sources),
          "max_length": max_length,
          "dev_line_indices_first_last": [kept[0], kept[-1]] if kept else [],
      },
      "checkpoints": {
          name: {"kind": kind, "path": path, "train": loaded[name].meta.get("train", {})}
          for name, kind, path in models
      },
      "warmup": warmup,
  }
  with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
    f.write(markdown_table(results) + "\n")
  plot_pareto(results, os.path.join(out_dir, "pareto.png"))
  return report


def markdown_table(results: Sequence[dict]) -> str:
  header = (
      "| model | system | setting | BLEU | stutter | median ms | p90 ms | p99 ms | compile s | "
      "sent/s (batch) | decoder passes/sent | output tokens |"
  )
  lines = [header, "|" + "---|" * 12]
  for r in results:
    lat = r["latency_ms"]
    throughput = (
        f"{r['throughput_sent_per_s']:.1f} ({r['throughput_batch']})"
        if r["throughput_sent_per_s"]
        else "n/a"
    )
    lines.append(
        f"| {r.get('model', r['system'])} | {r['system']} | {r['setting']} | {r['bleu']:.2f} | "
        f"{100 * r['stutter_rate']:.2f}% | {lat['median']:.1f} | {lat['p90']:.1f} | "
        f"{lat['p99']:.1f} | {r['compile_s']:.1f} | {throughput} | "
        f"{r['decoder_passes_per_sentence']:.2f} | {r['mean_output_tokens']:.1f} |"
    )
  return "\n".join(lines)


def plot_pareto(results: Sequence[dict], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 4.5))
  points = [(r["latency_ms"]["median"], r["bleu"]) for r in results]
  for system, marker in (("ar", "s"), ("padir", "o")):
    xs = [p for p, r in zip(points, results) if r["system"] == system]
    if xs:
      ax.scatter([x for x, _ in xs], [y for _, y in xs], marker=marker, label=system.upper())
  for (x, y), r in zip(points, results):
    label = (
        r["setting"]
        if r.get("model", r["system"]) == r["system"]
        else f"{r['model']} {r['setting']}"
    )
    ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
  front = pareto_front(points)
  ax.plot(
      [points[i][0] for i in front],
      [points[i][1] for i in front],
      "k--",
      lw=0.8,
      label="Pareto front",
  )
  ax.set_xscale("log")
  ax.set_xlabel("median latency per sentence, batch 1 (ms, log scale)")
  ax.set_ylabel("SacreBLEU")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _passes_and_beams(text: str) -> list[tuple[int, int]]:
  """'4:5,10:3' -> [(4, 5), (10, 3)]: PaDIR settings T:l, each a positive integer."""
  settings = []
  for item in (part.strip() for part in text.split(",")):
    if not item:
      continue
    passes, _, beam = item.partition(":")
    try:
      setting = (int(passes), int(beam))
    except ValueError:
      setting = (0, 0)
    if min(setting) < 1:
      raise argparse.ArgumentTypeError(f"expected T:l pairs of positive integers, got {item!r}")
    settings.append(setting)
  return settings


@cli.entry_point
def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--ar_checkpoint", action="append", metavar="[NAME=]DIR", help="repeatable")
  parser.add_argument(
      "--padir_checkpoint", action="append", metavar="[NAME=]DIR", help="repeatable"
  )
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--out_dir", default="runs/bench")
  parser.add_argument(
      "--split",
      default="dev",
      help="de-en/{split}.{de,en} of the data dir: dev (newstest2013) or "
      "dev-multi30k (Multi30k validation)",
  )
  parser.add_argument("--num_sentences", type=cli.positive_int, default=500)
  parser.add_argument("--warmup", type=cli.non_negative_int, default=10)
  parser.add_argument("--ar_beams", type=cli.int_list(1), default=[1, 5])
  parser.add_argument("--passes", type=cli.int_list(1), default=[1, 2, 4, 10])
  parser.add_argument("--length_beams", type=cli.int_list(1), default=[1, 3, 5])
  parser.add_argument(
      "--throughput_batch",
      type=cli.positive_int,
      default=64,
      help="first batch size of the throughput search",
  )
  parser.add_argument("--max_throughput_batch", type=cli.positive_int, default=512)
  parser.add_argument(
      "--full_table",
      type=_passes_and_beams,
      default=[],
      help="PaDIR T:l settings also run over the whole position table (no length buckets), "
      "comma-separated",
  )
  parser.add_argument(
      "--length_buckets",
      type=cli.int_list(1, allow_empty=True),
      default=list(DecodingConfig.length_buckets),
      help="PaDIR's length buckets, comma-separated ('' refines the whole table)",
  )
  args = parser.parse_args(argv)
  full_table = args.full_table
  # The flags' own errors first: a clash of names is reported with or without data.
  names = [
      name
      for kind in ("ar", "padir")
      for name, _ in named_checkpoints(getattr(args, f"{kind}_checkpoint"), kind)
  ]
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    parser.error(
        f"argument --ar_checkpoint/--padir_checkpoint: the model name {repeated[0]!r} is given "
        "twice; name each model (NAME=DIR)"
    )
  data_dir = shared_data.data_dir_or_error(parser, args.data_dir)
  cli.check_output_path(
      parser,
      "--out_dir",
      args.out_dir,
      inputs={
          "--data_dir": data_dir,
          "--ar_checkpoint": [p for _, p in named_checkpoints(args.ar_checkpoint, "ar")],
          "--padir_checkpoint": [p for _, p in named_checkpoints(args.padir_checkpoint, "padir")],
      },
      kind="dir",
      make_parents=True,
  )
  report = run_benchmark(
      args.ar_checkpoint,
      args.padir_checkpoint,
      data_dir,
      args.out_dir,
      args.num_sentences,
      args.warmup,
      args.ar_beams,
      args.passes,
      args.length_beams,
      args.throughput_batch,
      args.max_throughput_batch,
      full_table,
      args.length_buckets,
      split=args.split,
  )
  print(markdown_table(report["results"]))


if __name__ == "__main__":
  main()
