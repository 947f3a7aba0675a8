"""Tests of padir_t5x/cli.py: FIELD=VALUE overrides of the core configs, and the commands that use
them rejecting bad values before any work."""

import argparse
import pathlib

import pytest

from padir_t5x import cli
from padir_t5x.core import network_config
from padir_t5x import quickstart
from padir_t5x.decoders.decoding_config import DecodingConfig
from padir_t5x.core.loss_config import PadirLossConfig
from padir_t5x.core.modes import FillMode

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_values_parse_by_the_field_type():
  overrides = cli.parse_overrides(
      DecodingConfig,
      [
          "length_beam=3",
          "length_penalty_alpha=0.8",
          "add_length_log_prob=false",
          "init=mask",
          "vocab_high=none",
          "length_buckets=8,16",
      ],
  )
  assert overrides == {
      "length_beam": 3,
      "length_penalty_alpha": 0.8,
      "add_length_log_prob": False,
      "init": FillMode.MASK,
      "vocab_high": None,
      "length_buckets": (8, 16),
  }
  assert cli.parse_overrides(PadirLossConfig, ["loss_normalizing_factor=none"]) == {
      "loss_normalizing_factor": None
  }
  # Fixed-size tuples (corruption_mix is (keep, random, mask)) and variable ones side by side.
  assert cli.parse_overrides(
      PadirLossConfig, ["corruption_mix=0.1,0.1,0.8", "unmasking_rate_range=0,1"]
  ) == {"corruption_mix": (0.1, 0.1, 0.8), "unmasking_rate_range": (0.0, 1.0)}
  assert cli.parse_overrides(network_config.TransformerConfig, ["dtype=bfloat16"]) == {
      "dtype": "bfloat16"
  }


@pytest.mark.parametrize(
    "item, message",
    [
        ("length_beam", "is not FIELD=VALUE"),
        ("beam=3", "unknown field 'beam'; DecodingConfig has length_beam, max_passes"),
        ("length_beam=three", "length_beam: expected an integer"),
        ("add_length_log_prob=maybe", "add_length_log_prob: expected true or false"),
        ("remask=sometimes", "remask: unknown value 'sometimes'; expected one of"),
    ],
)
def test_bad_items_name_the_field(item, message):
  with pytest.raises(ValueError, match=message):
    cli.parse_overrides(DecodingConfig, [item])


def test_a_fixed_size_tuple_needs_every_value():
  with pytest.raises(ValueError, match="corruption_mix: expected 3 comma-separated values, got 2"):
    cli.parse_overrides(PadirLossConfig, ["corruption_mix=0.5,0.5"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--decoding", "remask=sometimes"], "--decoding: remask: unknown value"),
        (["--loss", "unmasking_rate=1.5"], "--loss: unmasking_rate must lie in [0, 1]"),
        (["--network", "num_heads=x"], "--network: num_heads: expected an integer"),
        (["--decoding", "max_passes=0"], "--decoding: max_passes must be >= 1"),
    ],
)
def test_quickstart_rejects_bad_overrides_before_any_work(argv, message, capsys, monkeypatch):
  def no_run(_):
    raise AssertionError("trained despite a bad flag")

  monkeypatch.setattr(quickstart, "run", no_run)
  with pytest.raises(SystemExit) as exit_info:
    quickstart.main(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_quickstart_overrides_reach_every_config():
  config = quickstart.QuickstartConfig(
      loss=("unmasking_rate=0.5",),
      decoding=("remask=none", "max_passes=7"),
      network=("num_heads=2",),
  )
  net_config, loss_config, decoding_config = quickstart.build_configs(config, real_vocab=200)
  assert net_config.num_heads == 2 and net_config.vocab_size == 256
  assert loss_config.unmasking_rate == 0.5 and loss_config.vocab_high == 200
  assert decoding_config.remask.value == "none" and decoding_config.max_passes == 7
  assert decoding_config.length_beam == config.length_beam


# ---------------------------------------------------------------------------------------------
# Flag types and entry points (issue 15): a bad value is one line naming the flag and the range.
@pytest.mark.parametrize(
    "flag_type, text, message",
    [
        (cli.positive_int, "0", "must be an integer >= 1, got 0"),
        (cli.positive_int, "x", "must be an integer >= 1, got 'x'"),
        (cli.non_negative_int, "-3", "must be an integer >= 0, got -3"),
        (cli.seed_int, "-1", "must be an integer in [0, 4294967295], got -1"),
        (cli.probability, "1.5", "must be a number in [0, 1], got 1.5"),
        (cli.positive_float, "0", "must be a number > 0, got 0"),
        (cli.non_negative_float, "nan", "must be a number >= 0, got nan"),
        (cli.float_range(0.0, 1.0, high_open=True), "1", "must be a number in [0, 1), got 1"),
        (cli.int_list(1), "1,0", "each item must be an integer >= 1, got 0"),
        (cli.int_list(1), ",", "expected comma-separated integers, got ','"),
    ],
)
def test_flag_types_name_the_allowed_range(flag_type, text, message):
  with pytest.raises(argparse.ArgumentTypeError) as raised:
    flag_type(text)
  assert str(raised.value) == message


def test_flag_types_accept_their_range():
  assert cli.positive_int("3") == 3 and cli.non_negative_int("0") == 0
  assert cli.probability("1") == 1.0 and cli.int_list(1)("1, 5,") == [1, 5]


def _failing_main(error):
  @cli.entry_point
  def main(argv=None):
    parser = cli.ArgumentParser()
    parser.parse_args(argv)
    raise error

  return main


@pytest.mark.parametrize(
    "error, status, last_line",
    [
        (ValueError("train.de: line 3 is empty"), 1, "error: train.de: line 3 is empty"),
        (FileNotFoundError("no such file: x.de"), 1, "error: no such file: x.de"),
        (
            cli.UsageError("argument --run_dir: not found: r"),
            2,
            "error: argument --run_dir: not found: r",
        ),
        (
            ZeroDivisionError("division by zero"),
            1,
            "error: ZeroDivisionError: division by zero (rerun with --verbose for the traceback)",
        ),
    ],
)
def test_entry_point_ends_an_error_with_one_line(error, status, last_line, capsys):
  with pytest.raises(SystemExit) as exit_info:
    _failing_main(error)([])
  assert exit_info.value.code == status
  err = capsys.readouterr().err
  assert err.strip().splitlines()[-1].endswith(last_line) and "Traceback" not in err
  assert err.startswith("python -m test_cli: error: ")  # the module that defines main()


def test_entry_point_verbose_prints_the_traceback_then_the_message(capsys):
  with pytest.raises(SystemExit) as exit_info:
    _failing_main(ZeroDivisionError("division by zero"))(["--verbose"])
  assert exit_info.value.code == 1
  lines = capsys.readouterr().err.strip().splitlines()
  assert lines[0].startswith("Traceback") and "raise error" in "\n".join(lines)
  assert lines[-1].endswith(": error: ZeroDivisionError: division by zero")


def test_entry_point_ctrl_c_is_one_line_and_status_130(capsys):
  with pytest.raises(SystemExit) as exit_info:
    _failing_main(KeyboardInterrupt())([])
  assert exit_info.value.code == 130
  assert capsys.readouterr().err.strip().endswith(": interrupted")


def test_entry_point_passes_the_return_value_and_argparse_exits():
  @cli.entry_point
  def main(argv=None):
    cli.ArgumentParser().parse_args(argv)
    return 0

  assert main([]) == 0
  with pytest.raises(SystemExit) as exit_info:
    main(["--nope"])
  assert exit_info.value.code == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num_steps", "0"], "argument --num_steps: must be an integer >= 1, got 0"),
        (["--num_steps", "-5"], "argument --num_steps: must be an integer >= 1, got -5"),
        (["--batch_size", "-1"], "argument --batch_size: must be an integer >= 1, got -1"),
        (["--batch_size", "0"], "argument --batch_size: must be an integer >= 1, got 0"),
        (["--num_heads", "0"], "argument --num_heads: must be an integer >= 1, got 0"),
        (["--num_heads", "65"], "argument --num_heads: must be <= --emb_dim (64), got 65"),
        (["--seed", "-1"], "argument --seed: must be an integer in [0, 4294967295], got -1"),
        # Used only after the training: checked before it.
        (["--length_beam", "0"], "argument --length_beam: must be an integer >= 1, got 0"),
        (["--length_beam", "40"], "argument --length_beam: 40 target lengths"),
        (["--max_passes", "0"], "argument --max_passes: must be an integer >= 1, got 0"),
        (["--max_eval", "0"], "argument --max_eval: must be an integer >= 1, got 0"),
        (["--eval_split", "train"], "argument --eval_split: invalid choice: 'train'"),
    ],
)
def test_quickstart_flags_exit_2_before_any_work(argv, message, capsys, monkeypatch):
  monkeypatch.setattr(quickstart, "run", lambda config: pytest.fail("ran despite a bad flag"))
  with pytest.raises(SystemExit) as exit_info:
    quickstart.main(argv)
  assert exit_info.value.code == 2
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last.startswith("python -m padir_t5x.quickstart: error: ") and message in last


def _main_of(module_name):
  import importlib

  return importlib.import_module(module_name).main


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("padir_t5x.corpus", ["--output_dir", "{tmp}", "--num_train", "0"], "--num_train: must be"),
        ("padir_t5x.translate", ["--checkpoint", "{tmp}", "--batch_size", "0"], "--batch_size: must"),
        ("padir_t5x.translate", ["--checkpoint", "{tmp}", "--seed", "-1"], "--seed: must be an"),
        ("padir_t5x.research.ising.__main__", ["--output_dir", "{tmp}/file"], "--output_dir: not a directory"),
        ("benchmarks.attention_analysis", ["--padir_checkpoint", "{tmp}", "--max_passes", "0"], "--max_passes: must be"),
        ("benchmarks.decoding_profile", ["--batch_sizes", "1,0"], "--batch_sizes: each item must be an integer >= 1"),
        ("benchmarks.distill_budget", ["--teacher", "{tmp}", "--out", "{tmp}/o", "--beam_size", "0"], "--beam_size: must be"),
        ("benchmarks.draft_verify", ["--ar_checkpoint", "{tmp}", "--padir_checkpoint", "{tmp}", "--tolerant", "3:x"], "--tolerant: '3:x'"),
        ("benchmarks.latency", ["--ar_beams", "0"], "--ar_beams: each item must be an integer >= 1, got 0"),
        ("benchmarks.latency", ["--ar_checkpoint", "{tmp}", "--padir_checkpoint", "ar={tmp}"], "the model name 'ar' is given twice"),
        ("benchmarks.quality", ["--padir", "{tmp}", "--batch_size", "0"], "--batch_size: must be"),
        ("benchmarks.train_budget", ["--out", "{tmp}/o", "--num_heads", "0"], "--num_heads: must be"),
        ("benchmarks.train_budget", ["--out", "{tmp}/o", "--dropout_rate", "1"], "--dropout_rate: must be a number in [0, 1)"),
    ],
)  # fmt: skip
def test_every_command_rejects_a_bad_flag_with_status_2(module, argv, message, tmp_path, capsys):
  (tmp_path / "file").write_text("")
  main = _main_of(module)
  with pytest.raises(SystemExit) as exit_info:
    main([arg.replace("{tmp}", str(tmp_path)) for arg in argv])
  assert exit_info.value.code == 2
  last = capsys.readouterr().err.strip().splitlines()[-1]
  command = "python -m " + module.removesuffix(".__main__")
  assert last.startswith(f"{command}: error: argument ") and message in last
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written


def test_every_command_has_verbose_and_one_line_errors():
  """Each entry point is wrapped by cli.entry_point and its parser has --verbose."""
  import inspect

  # Every module with a main(): a new command cannot be left out of this list.
  modules = sorted(
      ".".join(path.relative_to(REPO).with_suffix("").parts)
      for folder in ("padir_t5x", "benchmarks")
      for path in (REPO / folder).rglob("*.py")
      if "\ndef main(" in path.read_text(encoding="utf-8")
  )
  assert "benchmarks.accelerator" in modules and "padir_t5x.research.ising.__main__" in modules
  for module in modules:
    main = _main_of(module)
    assert hasattr(main, "__wrapped__"), f"{module}.main is not a cli.entry_point"
    source = inspect.getsource(inspect.getmodule(main))
    assert "argparse.ArgumentParser(" not in source, f"{module}: use cli.ArgumentParser"


def _config_parser(**kwargs) -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(prog="prog")
  names = ("length_beam", "init", "refine_top_k", "length_buckets")
  cli.add_config_flags(parser, DecodingConfig, names, **kwargs)
  return parser


def test_config_flags_take_type_range_help_and_default_from_the_field(capsys):
  args = _config_parser().parse_args([])
  assert (args.length_beam, args.init, args.refine_top_k) == (5, FillMode.RANDOM, None)
  args = _config_parser().parse_args(
      ["--length_beam", "2", "--init", "mask", "--refine_top_k", "1", "--length_buckets", "8,16"]
  )
  config = DecodingConfig(
      length_beam=args.length_beam,
      init=args.init,
      refine_top_k=args.refine_top_k,
      length_buckets=tuple(args.length_buckets),
  )
  assert (config.length_beam, config.init, config.refine_top_k) == (2, FillMode.MASK, 1)
  assert config.length_buckets == (8, 16)
  for argv, message in (
      (["--length_beam", "0"], "must be an integer >= 1, got 0"),
      (["--init", "zeros"], "invalid choice: 'zeros'"),
  ):
    with pytest.raises(SystemExit) as exit_info:
      _config_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
  help_text = _config_parser().format_help()
  assert "target lengths decoded (l) (DecodingConfig default 5)" in " ".join(help_text.split())


def test_config_flags_unset_and_command_defaults():
  assert _config_parser(unset=True).parse_args([]).length_beam is None
  args = _config_parser(defaults={"length_beam": 3}).parse_args([])
  assert args.length_beam == 3
  help_text = " ".join(_config_parser(defaults={"length_beam": 3}).format_help().split())
  assert "(default 3; DecodingConfig default 5)" in help_text


def test_config_flags_refuse_a_field_without_flag_metadata():
  with pytest.raises(TypeError, match="DecodingConfig.vocab_high declares no flag"):
    cli.add_config_flags(argparse.ArgumentParser(), DecodingConfig, ("vocab_high",))


def test_translate_decoding_flags_are_the_configs():
  """translate's PaDIR, AR and draft-and-verify flags are generated from the config fields."""
  import dataclasses

  from padir_t5x.decoders import decoders, draft_verify
  from padir_t5x import translate

  parser = translate.build_parser()
  flags = {action.dest: action for action in parser._actions}  # pylint: disable=protected-access
  for config_class, names in (
      (DecodingConfig, translate.PADIR_OPTIONS),
      (decoders.ArBeamDecoder, translate.AR_OPTIONS),
  ):
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    for name in names:
      assert fields[name].metadata["help"] in flags[name].help
      assert flags[name].default is None  # unset: the checkpoint's setting applies
  top_k = {f.name: f for f in dataclasses.fields(draft_verify.DraftVerifyConfig)}["top_k"]
  assert top_k.metadata["help"] in flags["verify_top_k"].help
