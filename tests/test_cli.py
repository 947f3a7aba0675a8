"""Tests of padir_t5x/cli.py: FIELD=VALUE overrides of the core configs, and the commands that use
them rejecting bad values before any work."""

import pytest

from padir_t5x import cli
from padir_t5x import decoding
from padir_t5x import losses
from padir_t5x import network
from padir_t5x import quickstart
from padir_t5x.modes import FillMode


def test_values_parse_by_the_field_type():
  overrides = cli.parse_overrides(
      decoding.DecodingConfig,
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
  assert cli.parse_overrides(losses.PadirLossConfig, ["loss_normalizing_factor=none"]) == {
      "loss_normalizing_factor": None
  }
  assert cli.parse_overrides(network.TransformerConfig, ["dtype=bfloat16"]) == {"dtype": "bfloat16"}


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
    cli.parse_overrides(decoding.DecodingConfig, [item])


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
