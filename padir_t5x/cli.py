"""Command-line overrides of the core configs: `--loss FIELD=VALUE`, `--decoding FIELD=VALUE`, ...

The quickstart and the budget trainer expose every field of `losses.PadirLossConfig`,
`decoding.DecodingConfig` and `network.TransformerConfig` through one repeatable flag per config,
so that a new option is sweepable from the command line the moment it is a config field, with no
new flag to add. Values are parsed by the field's annotated type; a wrong field name, a value of
the wrong type or a value the config rejects ends the command with status 2 and one line naming
the flag, before any work starts (each command builds its configs up front and passes the
error to argparse's `parser.error`).

    python -m padir_t5x.quickstart --loss unmasking_rate=0.5 --decoding remask=none
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import types
import typing
from collections.abc import Sequence
from typing import Any

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def _parse_value(text: str, annotation: Any) -> Any:
  """`text` as a value of `annotation` (bool, int, float, str, enums, X | None, tuple[X, ...])."""
  origin = typing.get_origin(annotation)
  if origin in (typing.Union, types.UnionType):
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if text.lower() == "none" and len(options) < len(typing.get_args(annotation)):
      return None
    errors = []
    for option in options:
      try:
        return _parse_value(text, option)
      except ValueError as error:
        errors.append(str(error))
    raise ValueError("; ".join(errors))
  if origin is tuple:
    element, *rest = typing.get_args(annotation) or (str,)
    if rest and rest != [Ellipsis]:
      raise ValueError(f"fixed-size tuple annotations are not supported: {annotation}")
    items = [item for item in text.split(",") if item.strip()]
    return tuple(_parse_value(item.strip(), element) for item in items)
  if annotation is bool:
    if text.lower() in _TRUE:
      return True
    if text.lower() in _FALSE:
      return False
    raise ValueError(f"expected true or false, got {text!r}")
  if annotation is int:
    try:
      return int(text)
    except ValueError:
      raise ValueError(f"expected an integer, got {text!r}") from None
  if annotation is float:
    try:
      return float(text)
    except ValueError:
      raise ValueError(f"expected a number, got {text!r}") from None
  if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
    return annotation.coerce(text, "value") if hasattr(annotation, "coerce") else annotation(text)
  if annotation is str or annotation is Any:
    return text
  raise ValueError(f"fields of type {annotation} cannot be set from the command line")


def parse_overrides(config_class: type, items: Sequence[str]) -> dict[str, Any]:
  """{field: value} from ['field=value', ...] for the dataclass `config_class`.

  Raises:
    ValueError: an item without '=', an unknown field (the message lists the known ones) or a
      value that does not parse as the field's type; the message names the item.
  """
  hints = typing.get_type_hints(config_class)
  names = [field.name for field in dataclasses.fields(config_class)]
  overrides = {}
  for item in items:
    name, separator, text = item.partition("=")
    name = name.strip()
    if not separator:
      raise ValueError(f"{item!r} is not FIELD=VALUE")
    if name not in names:
      raise ValueError(f"unknown field {name!r}; {config_class.__name__} has {', '.join(names)}")
    try:
      overrides[name] = _parse_value(text.strip(), hints[name])
    except ValueError as error:
      raise ValueError(f"{name}: {error}") from None
  return overrides


def add_override_flag(parser: argparse.ArgumentParser, flag: str, config_class: type) -> None:
  """A repeatable `flag FIELD=VALUE` that sets a field of `config_class`."""
  parser.add_argument(
      flag,
      action="append",
      default=[],
      metavar="FIELD=VALUE",
      help=f"set a field of {config_class.__module__}.{config_class.__name__} (repeatable)",
  )
