"""The WMT recipe end to end under t5x (issue 31 item 5; slow, needs t5x).

Every experiment gin of the paper's six directions, raw and distilled (gin/experiments/
{padir,ar}_wmt{14,16,17}_*.gin, 24 files), trains STEPS steps with the `python -m t5x.train`
command its header gives, in a subprocess; the run ends with the recipe's inference evaluation
(SacreBLEU on the validation split) and a checkpoint. On the checkpoints of EVAL_AND_INFER, one
direction per language pair, for each kind (PaDIR, AR) and raw/distilled (12 of the 24),
`t5x.eval` runs with the header's "Test-set SacreBLEU" command and `t5x.infer` with its decoding
analogue (the same gin files with recipe/infer.gin for recipe/eval.gin and INFER_OUTPUT_DIR for
EVAL_OUTPUT_DIR, as padir_t5x.distill's teacher runs and test_gin's parse test use it). The
headers' commands are read from the gin files and run as written, with the `/path/to/...`
placeholders filled in and only the overrides below appended.

About 30 minutes on a shared 2-core CPU (2026-12-06): a run that hits the compilation cache
trains in 35-50 s, eval plus infer add about 50 s; both on all 24 checkpoints would take about
40 minutes, hence the 12.

What stands in for the real thing, and nothing else:

* TFDS: `tfds.testing.mock_data` entered inside each t5x process (tests/t5x_mock_launcher.py),
  NUM_EXAMPLES random examples per split, nothing downloaded;
* the 32k vocabularies: conftest's 200-piece SentencePiece model (built on the fly from the
  synthetic corpus, PaDIR's special ids) as $PADIR_VOCAB_DIR/{de_en,ro_en,zh_en}.32k.model, so
  VOCAB_SIZE = 256;
* the distilled corpora: JSON-lines shards written by padir_t5x.data.textio.write_distilled_shards,
  the writer padir_t5x.distill ends with, under $PADIR_DISTILLED_DIR/wmt{..}_{src}_{tgt}/. Every
  target is longer than the training target length, so the task's truncation count
  ("... train: 1 of 1 examples truncated ...") shows that training read the shards;
* sizes: a 1+1-layer d=16 network, batch 8, 32-token features, STEPS steps, a fixed seed (the
  train step's compiled code embeds the seed: fixed, it is compiled once per model kind and
  served from a JAX compilation cache shared by the module's runs).
"""

import json
import os
import pathlib
import re
import shlex
import shutil

import pytest

pytest.importorskip(
    "t5x", reason="runs t5x.train, t5x.eval and t5x.infer (setup.cfg's 't5x' extra)"
)

import t5x_subprocess  # noqa: E402  (tests/t5x_subprocess.py)

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = pathlib.Path(__file__).resolve().parent
EXPERIMENTS = REPO / "gin" / "experiments"
NAME_RE = re.compile(r"^(padir|ar)_wmt(\d\d)_([a-z]{2})_([a-z]{2})(_distilled)?\.gin$")
WMT_GINS = sorted(p.name for p in EXPERIMENTS.glob("*_wmt*.gin") if NAME_RE.match(p.name))
# One direction per language pair, X->English and English->X both covered, and en->zh for
# SacreBLEU's 'zh' tokenizer; each for PaDIR and AR, raw and distilled.
EVAL_AND_INFER = {
    f"{kind}_wmt{pair}{suffix}.gin"
    for kind in ("padir", "ar")
    for pair in ("14_de_en", "16_en_ro", "17_en_zh")
    for suffix in ("", "_distilled")
}

STEPS = 2
NUM_EXAMPLES = 16  # per TFDS split; with batch 8, two batches in eval and infer
BATCH = 8
LENGTH = 32  # every feature length; the mock strings (<= 19 characters) fit
VOCAB_SIZE = 256  # the 200-piece vocabulary, padded to a multiple of 128
FEATURES = f"{{'inputs': {LENGTH}, 'targets': {LENGTH}}}"
NETWORK = [
    f"--gin.padir_t5x.network.TransformerConfig.{k}={v}"
    for k, v in dict(
        emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=1, num_decoder_layers=1
    ).items()
]
MODEL_OVERRIDES = [f"--gin.VOCAB_SIZE={VOCAB_SIZE}", *NETWORK]
TRAIN_OVERRIDES = [
    *MODEL_OVERRIDES,
    f"--gin.TRAIN_STEPS={STEPS}",
    f"--gin.BATCH_SIZE={BATCH}",
    f"--gin.TASK_FEATURE_LENGTHS={FEATURES}",
    f"--gin.INFER_EVAL_FEATURE_LENGTHS={FEATURES}",
    f"--gin.INFER_EVAL_BATCH_SIZE={BATCH}",
    "--gin.RANDOM_SEED=0",
]
EVAL_OVERRIDES = [
    *MODEL_OVERRIDES,
    f"--gin.TASK_FEATURE_LENGTHS={FEATURES}",
    f"--gin.EVAL_BATCH_SIZE={BATCH}",
]
INFER_OVERRIDES = [
    *MODEL_OVERRIDES,
    f"--gin.TASK_FEATURE_LENGTHS={FEATURES}",
    f"--gin.INFER_BATCH_SIZE={BATCH}",
]


def test_the_24_wmt_gins_are_found():
  assert len(WMT_GINS) == 24, WMT_GINS
  assert EVAL_AND_INFER <= set(WMT_GINS)


def _parse_name(name):
  kind, year, src, tgt, distilled = NAME_RE.match(name).groups()
  task = f"padir_wmt{year}_{src}_{tgt}" + (distilled or "")
  return kind, f"wmt{year}_{src}_{tgt}", task, tgt, bool(distilled)


def _header_command(name, module):
  """The `python -m MODULE ...` command of the gin file's opening comments, as argv after
  `python -m` (continuation lines joined, shell quoting undone)."""
  lines = []
  for line in (EXPERIMENTS / name).read_text().splitlines():
    if not line.startswith("#"):
      break
    lines.append(line[1:].strip())
  text = "\n".join(lines)
  match = re.search(rf"python -m {re.escape(module)} (?:[^\n]*\\\n)*[^\n]*", text)
  assert match, f"{name}: no `python -m {module}` command in its header"
  return shlex.split(match.group(0).replace("\\\n", " "))[2:]


def _fill(args, name, value):
  """Replaces the `/path/to/...` placeholder of binding `name` in `args` with `value`."""
  flag = f"--gin.{name}="
  found = [i for i, arg in enumerate(args) if arg.startswith(flag)]
  assert len(found) == 1, f"{name} is bound {len(found)} times in {args}"
  assert args[found[0]].startswith(f"{flag}'/path/to/"), args[found[0]]
  return [*args[: found[0]], f"{flag}'{value}'", *args[found[0] + 1 :]]


def _infer_from_eval(args):
  """The eval command's decoding analogue: t5x.infer, recipe/infer.gin, INFER_OUTPUT_DIR."""
  eval_gin = "--gin_file=gin/experiments/recipe/eval.gin"
  assert args[0] == "t5x.eval" and args.count(eval_gin) == 1, args
  args = [a.replace("recipe/eval.gin", "recipe/infer.gin") if a == eval_gin else a for a in args]
  args = [a.replace("--gin.EVAL_OUTPUT_DIR=", "--gin.INFER_OUTPUT_DIR=") for a in args]
  return ["t5x.infer", *args[1:]]


@pytest.fixture(scope="module")
def wmt_env(tmp_path_factory, tiny_vocab_path):
  """Environment of the t5x subprocesses: vocabularies, distilled shards, a compilation cache."""
  from padir_t5x import corpus, vocab
  from padir_t5x.data import textio

  root = tmp_path_factory.mktemp("wmt")
  vocab_dir = root / "vocab"
  vocab_dir.mkdir()
  for pair in ("de_en", "ro_en", "zh_en"):
    shutil.copy(tiny_vocab_path, vocab_dir / f"{pair}.32k.model")

  # Targets of five sentences each: longer than LENGTH tokens, so that the truncation count
  # tells that the training data came from these shards (the mock strings are never that long).
  processor = vocab.load_vocabulary(tiny_vocab_path)
  sentences = [s for pair in corpus.generate_pairs(96, seed=3) for s in pair]
  pairs = [
      (sentences[i], " ".join(sentences[i + 1 : i + 6])) for i in range(0, len(sentences) - 6, 6)
  ]
  assert all(len(processor.encode(target)) > LENGTH for _, target in pairs)
  distilled_dir = root / "distilled"
  for name in WMT_GINS:
    _, corpus_name, _, _, distilled = _parse_name(name)
    if distilled:
      textio.write_distilled_shards(str(distilled_dir / corpus_name), "train", pairs, num_shards=2)

  env = dict(os.environ)
  env.update(
      JAX_PLATFORMS="cpu",
      PADIR_VOCAB_DIR=str(vocab_dir),
      PADIR_DISTILLED_DIR=str(distilled_dir),
      JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
      PYTHONPATH=os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p),
  )
  return env


def _run(env, args, log_path):
  """`python -m MODULE ARGS...` under the TFDS mock; returns the log."""
  return t5x_subprocess.run_module(["t5x_mock_launcher", str(NUM_EXAMPLES), *args], log_path, env)


@pytest.mark.parametrize("name", WMT_GINS)
def test_wmt_gin_trains_then_evaluates_and_infers(name, wmt_env, tmp_path):
  kind, _, task, target_language, distilled = _parse_name(name)
  tokenizer = "zh" if target_language == "zh" else "13a"

  model_dir = tmp_path / "model"
  train = _fill(_header_command(name, "t5x.train"), "MODEL_DIR", model_dir)
  assert train[:2] == ["t5x.train", f"--gin_file=gin/experiments/{name}"], train
  log = _run(wmt_env, train + TRAIN_OVERRIDES, tmp_path / "train.log")
  # The recipe's inference evaluation ran on the validation split with the task's metrics.
  assert re.search(rf"{task}/bleu at step {STEPS}: [0-9.]+", log), log[-3000:]
  assert re.search(rf"{task}/bleu_signature at step {STEPS}: \S*tok:{tokenizer}\|", log)
  assert re.search(rf"{task}/chrf at step {STEPS}: [0-9.]+", log)
  # PaDIR's multi-stage loss (AR: t5x's own), on the model the gin file names.
  assert ("stage2/accuracy" in log) == (kind == "padir")
  if distilled:
    assert f"{task} train: 1 of 1 examples truncated to {LENGTH} target tokens" in log
  checkpoint = model_dir / f"checkpoint_{STEPS}"
  assert checkpoint.is_dir(), sorted(p.name for p in model_dir.iterdir())

  if name not in EVAL_AND_INFER:
    return
  header_eval = _header_command(name, "t5x.eval")
  assert f"--gin.MIXTURE_OR_TASK_NAME='{task}'" in header_eval, header_eval
  header_eval = _fill(header_eval, "CHECKPOINT_PATH", checkpoint)

  eval_dir = tmp_path / "eval"
  log = _run(
      wmt_env,
      _fill(header_eval, "EVAL_OUTPUT_DIR", eval_dir) + EVAL_OVERRIDES,
      tmp_path / "eval.log",
  )
  assert re.search(rf"{task}/bleu at step {STEPS}: [0-9.]+", log), log[-3000:]
  (metrics_file,) = eval_dir.rglob(f"{task}-metrics.jsonl")
  record = json.loads(metrics_file.read_text().splitlines()[-1])
  assert record["step"] == STEPS and 0.0 <= float(record["bleu"]) <= 100.0, record
  assert f"tok:{tokenizer}|" in record["bleu_signature"]

  infer_dir = tmp_path / "infer"
  infer = _fill(_infer_from_eval(header_eval), "INFER_OUTPUT_DIR", infer_dir)
  _run(wmt_env, infer + INFER_OVERRIDES, tmp_path / "infer.log")
  outputs = sorted(
      p for p in infer_dir.glob(f"{task}-predict.jsonl-*-of-*") if not p.name.endswith(".COMPLETED")
  )
  assert outputs, sorted(p.name for p in infer_dir.iterdir())
  records = [json.loads(line) for p in outputs for line in p.read_text().splitlines()]
  # The whole test split (the mock's NUM_EXAMPLES), decoded to text.
  assert len(records) == NUM_EXAMPLES
  assert all(isinstance(r["prediction"], str) for r in records)
  assert all(r["inputs"]["inputs_pretokenized"] for r in records)
