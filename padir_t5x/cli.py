"""What every command line of the package shares: flag types, one-line errors, config overrides.

* Flag types (`positive_int`, `non_negative_int`, `probability`, `int_range(lo, hi)`, ...): argparse
  `type=` callables whose error names the allowed range, so a bad value ends the command with
  status 2 and one line, "PROG: error: argument --batch_size: must be an integer >= 1, got -1",
  before any work starts.
* `entry_point` wraps every `main(argv=None)`, and `ArgumentParser` adds `--verbose` to its
  parser: an error while working ends the command with one line, 'PROG: error: MESSAGE', last on
  stderr (the traceback before it with --verbose), status 1; `UsageError` (a bad flag found after
  parsing) gives status 2, as argparse's own errors; Ctrl-C gives 130.
* `check_output_path`: every command's output flags are checked before any work (the directory
  exists and is writable, a file is not a directory, an output is not one of the inputs), so a
  run never ends by failing to save, nor writes over its own input.
* Overrides of the core configs: `--loss FIELD=VALUE`, `--decoding FIELD=VALUE`, ...

The quickstart and the budget trainer expose every field of `loss_config.PadirLossConfig`,
`decoding_config.DecodingConfig` and `network_config.TransformerConfig` through one repeatable flag
per config, so that a new option is sweepable from the command line the moment it is a config
field, with no new flag to add. Values are parsed by the field's annotated type; a wrong field
name, a value of the wrong type or a value the config rejects ends the command with status 2 and
one line naming the flag, before any work starts (each command builds its configs up front and
passes the error to argparse's `parser.error`).

    python -m padir_t5x.quickstart --loss unmasking_rate=0.5 --decoding remask=none
"""

from __future__ import annotations

import argparse
import contextvars
import dataclasses
import enum
import functools
import io
import math
import os
import sys
import traceback
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from padir_t5x.stages import StageError

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
    elements = typing.get_args(annotation) or (str, Ellipsis)
    items = [item.strip() for item in text.split(",") if item.strip()]
    if len(elements) == 2 and elements[1] is Ellipsis:
      return tuple(_parse_value(item, elements[0]) for item in items)
    # A fixed-size tuple (corruption_mix's (keep, random, mask)): one comma-separated item each.
    if len(items) != len(elements):
      raise ValueError(
          f"expected {len(elements)} comma-separated values, got {len(items)}: {text!r}"
      )
    return tuple(_parse_value(item, element) for item, element in zip(items, elements))
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


# ---------------------------------------------------------------------------------------------
# Flags declared on config fields. A config field that a command exposes carries its flag in its
# metadata, dataclasses.field(default=..., metadata={"help": ..., "min": ..., "max": ...}), so
# that translate, the quickstart and the benchmarks generate the same flag from one declaration:
# one help text, one range, one default (the field's). The config modules stay free of argparse.


def _flag_type(annotation: Any, metadata: Mapping[str, Any], where: str) -> dict[str, Any]:
  """argparse keywords (type=, choices= or action=) for a field of type `annotation`."""
  if typing.get_origin(annotation) in (typing.Union, types.UnionType):
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(options) != 1:
      raise TypeError(f"{where}: a flag needs one type, {annotation} has {len(options)}")
    annotation = options[0]
  low, high = metadata.get("min"), metadata.get("max")
  if annotation is bool:
    return {"action": argparse.BooleanOptionalAction}
  if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
    return {"choices": [member.value for member in annotation]}
  if annotation is int:
    return {"type": int_range(low, high)}
  if annotation is float:
    return {"type": float_range(low, high, high_open=metadata.get("high_open", False))}
  if typing.get_origin(annotation) is tuple and typing.get_args(annotation)[0] is int:
    return {"type": int_list(low, high)}
  if annotation is str:
    return {"type": str}
  raise TypeError(f"{where}: fields of type {annotation} cannot be flags")


def _default_text(value: Any) -> str:
  if isinstance(value, enum.Enum):
    return str(value.value)
  if isinstance(value, tuple):
    return ",".join(str(v) for v in value)
  return str(value)


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,  # pylint: disable=protected-access
    config_class: type,
    names: Sequence[str],
    flag_names: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    unset: bool = False,
) -> None:
  """One `--NAME` flag per field of `config_class` in `names`, declared by the field's metadata.

  Args:
    parser: the parser or argument group to add the flags to.
    config_class: a dataclass whose fields in `names` carry {"help", and optionally "min", "max",
      "high_open"} metadata; the type comes from the field's annotation (enums: their values as
      choices; bools: --NAME / --no-NAME; tuples of ints: comma-separated).
    names: the fields to expose, in order.
    flag_names: field -> flag name where they differ (draft-and-verify's 'top_k' is
      --verify_top_k); the parsed value lands under the flag's name.
    defaults: field -> a command's own default where it documents why it differs from the field's.
    unset: default None (the flag was not given: the checkpoint's setting applies); the help still
      names the config's default.

  Raises:
    TypeError: a field without flag metadata, or of a type no flag can carry (a programming error,
      raised when the parser is built).
  """
  hints = typing.get_type_hints(config_class)
  fields = {field.name: field for field in dataclasses.fields(config_class)}
  for name in names:
    field = fields[name]
    where = f"{config_class.__name__}.{name}"
    if "help" not in field.metadata:
      raise TypeError(f"{where} declares no flag (field metadata 'help')")
    default = (defaults or {}).get(name, field.default)
    shown = f"{config_class.__name__} default {_default_text(field.default)}"
    if default is not field.default:
      shown = f"default {_default_text(default)}; {shown}"
    parser.add_argument(
        f"--{(flag_names or {}).get(name, name)}",
        default=None if unset else default,
        help=f"{field.metadata['help']} ({shown})",
        **_flag_type(hints[name], field.metadata, where),
    )


# ---------------------------------------------------------------------------------------------
# Flag types: argparse `type=` callables whose message names the allowed range. argparse prints
# "PROG: error: argument --batch_size: must be an integer >= 1, got -1" and exits 2.
def int_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
  """A `type=` for integers in [low, high] (either bound may be None: unbounded)."""
  if low is not None and high is not None:
    allowed = f"an integer in [{low}, {high}]"
  elif low is not None:
    allowed = f"an integer >= {low}"
  elif high is not None:
    allowed = f"an integer <= {high}"
  else:
    allowed = "an integer"

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
      raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
    return value

  parse.__name__ = "int"  # what argparse's usage errors call the type
  return parse


def float_range(
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
  """A `type=` for finite numbers in [low, high] (an open end with `low_open` / `high_open`)."""
  if low is not None and high is not None:
    allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
  elif low is not None:
    allowed = f"a number {'>' if low_open else '>='} {low:g}"
  elif high is not None:
    allowed = f"a number {'<' if high_open else '<='} {high:g}"
  else:
    allowed = "a finite number"

  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or too_low or too_high:
      raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
    return value

  parse.__name__ = "float"
  return parse


def int_list(
    low: int | None = None, high: int | None = None, allow_empty: bool = False
) -> Callable[[str], list[int]]:
  """A `type=` for a comma-separated list of integers, each in [low, high]; non-empty unless
  `allow_empty` (then '' is [])."""
  item = int_range(low, high)

  def parse(text: str) -> list[int]:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items and not allow_empty:
      raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    try:
      return [item(part) for part in items]
    except argparse.ArgumentTypeError as error:
      raise argparse.ArgumentTypeError(f"each item {error}") from None

  parse.__name__ = "int list"
  return parse


positive_int = int_range(1)
non_negative_int = int_range(0)
# Seeds: numpy and jax take any integer in [0, 2**32).
seed_int = int_range(0, 2**32 - 1)
positive_float = float_range(0.0, low_open=True)
non_negative_float = float_range(0.0)
probability = float_range(0.0, 1.0)


def check_at_most(parser: argparse.ArgumentParser, args, name: str, bound_name: str) -> None:
  """Exits 2 (parser.error) unless args.<name> <= args.<bound_name>, naming both flags."""
  value, bound = getattr(args, name), getattr(args, bound_name)
  if value > bound:
    parser.error(f"argument --{name}: must be <= --{bound_name} ({bound}), got {value}")


# ---------------------------------------------------------------------------------------------
# Output paths: checked before any work, so that a run never ends by failing to save what it did,
# and never writes over its own input.
def check_output_path(
    parser: argparse.ArgumentParser,
    flag: str,
    path: str | None,
    inputs: Mapping[str, str | Sequence[str] | None] | None = None,
    kind: str = "file",
    make_parents: bool = False,
    replaces: bool = False,
) -> None:
  """Exits 2 (parser.error, one line naming `flag`) unless the command can write `path`.

  Every command calls this for each of its output flags before it does any work. Checked:
  the path is not a directory where a file is meant (kind 'file'), nor a file where a directory
  is (kind 'dir'); its parent directory exists (with `make_parents`, the nearest existing
  ancestor, as the command creates the rest) and is writable (os.access), as is an existing
  output itself; and it is not any of `inputs` ({flag: path or paths}, None skipped): the same
  file by os.path.samefile where both exist, or the same real path. With `replaces` (a
  'dir' output whose whole contents the command replaces), an input inside it is refused too.
  None (the flag not given) passes.
  """
  if path is None:
    return
  if kind not in ("file", "dir"):
    raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")

  def fail(message: str) -> None:
    parser.error(f"argument {flag}: {message}")

  if not path:
    fail("empty path")
  path = os.fspath(path)
  if kind == "file" and os.path.isdir(path):
    fail(f"{path} is a directory, not a file")
  if kind == "dir" and os.path.lexists(path) and not os.path.isdir(path):
    fail(f"{path} exists and is not a directory")
  parent = os.path.dirname(os.path.abspath(path))
  existing = parent
  while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    fail(f"directory of {path} does not exist ({existing} is not a directory)")
  if existing != parent and not make_parents:
    fail(f"directory of {path} does not exist")
  if not os.access(existing, os.W_OK | os.X_OK):
    if existing == parent:
      fail(f"directory of {path} is not writable")
    fail(f"directory of {path} cannot be created: {existing} is not writable")
  if kind == "dir" and os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
    fail(f"directory {path} is not writable")
  if kind == "file" and os.path.isfile(path) and not os.access(path, os.W_OK):
    fail(f"{path} is not writable")
  real = os.path.realpath(path)
  for name, values in (inputs or {}).items():
    if values is None or isinstance(values, (str, os.PathLike)):
      values = [values]
    for value in values:
      if value is None or not os.fspath(value):
        continue
      value = os.fspath(value)
      same = os.path.realpath(value) == real
      if not same and os.path.exists(value) and os.path.exists(path):
        try:
          same = os.path.samefile(value, path)
        except OSError:
          pass
      if same:
        what = "file" if kind == "file" else "directory"
        fail(f"{path} is the same {what} as {name} {value}: it would be written over")
      if replaces and kind == "dir" and os.path.realpath(value).startswith(real + os.sep):
        fail(f"{name} {value} is inside {path}, which this command replaces")


def stdin_is_closed() -> bool:
  """Whether standard input cannot be read at all: no sys.stdin (the process started with file
  descriptor 0 closed, `<&-`), a closed stream, or a descriptor that is no longer open. A stream
  without a descriptor (a test's io.StringIO, pytest's capture) counts as open."""
  stream = sys.stdin
  if stream is None or getattr(stream, "closed", False):
    return True
  try:
    fd = stream.fileno()
  except io.UnsupportedOperation:
    return False
  except (OSError, ValueError):
    return True
  try:
    os.fstat(fd)
  except OSError:
    return True
  return False


# ---------------------------------------------------------------------------------------------
# Entry points: one-line errors, exit statuses, --verbose.
class UsageError(ValueError):
  """A bad flag or input found after parsing (a missing directory, a module that won't import).

  Under `entry_point` it ends the command like an argparse error: status 2, one line.
  """


# Errors that come from the user's flags, files or data: their message is the whole story, so it
# is printed alone. Any other exception is a bug or an environment problem: its type is printed
# too, and its traceback with --verbose.
EXPECTED_ERRORS = (ValueError, OSError, StageError)
VERBOSE_FLAG = "--verbose"
_PROG: contextvars.ContextVar[str | None] = contextvars.ContextVar("padir_prog", default=None)


class ArgumentParser(argparse.ArgumentParser):
  """argparse.ArgumentParser with `--verbose` (the traceback of an error, see `entry_point`).

  Its default `prog` is the running command's name ("python -m padir_t5x.vocab") when it is
  built inside an `entry_point`, so flag errors and run-time errors name the same command.
  """

  def __init__(self, *args, **kwargs):
    if not args and "prog" not in kwargs and _PROG.get() is not None:
      kwargs["prog"] = _PROG.get()
    super().__init__(*args, **kwargs)
    self.add_argument(
        VERBOSE_FLAG, action="store_true", help="on an error, print its traceback before it"
    )


def command_name(function: Callable) -> str:
  """'python -m MODULE' for the module that defines `function` (the running one for __main__)."""
  module = function.__module__
  if module == "__main__":
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None:
      return os.path.basename(sys.argv[0])
    module = spec.name
  return "python -m " + module.removesuffix(".__main__")


def error_line(prog: str, error: BaseException, verbose: bool) -> str:
  """The last line a command prints for `error`: 'PROG: error: MESSAGE'."""
  if isinstance(error, EXPECTED_ERRORS):
    message = str(error) or type(error).__name__
  else:
    message = f"{type(error).__name__}: {error}"
    if not verbose:
      message += f" (rerun with {VERBOSE_FLAG} for the traceback)"
  return f"{prog}: error: {message}"


def entry_point(main: Callable) -> Callable:
  """Wraps a command's `main(argv=None)`: every error ends it with one line, last, on stderr.

  Exit statuses: 2 for a bad flag (argparse's own errors, `parser.error`, `UsageError`), 1 for
  an error while working (bad data, a failed stage, a bug), 130 for Ctrl-C; otherwise what
  `main` returns. The last line is 'PROG: error: MESSAGE'; with --verbose the traceback comes
  before it. A partial run's files are whatever `main` leaves (the commands write atomically).
  """

  @functools.wraps(main)
  def wrapper(argv: Sequence[str] | None = None):
    verbose = VERBOSE_FLAG in (sys.argv[1:] if argv is None else list(argv))
    prog = command_name(main)
    token = _PROG.set(prog)
    try:
      return main(argv)
    except KeyboardInterrupt:
      print(f"{prog}: interrupted", file=sys.stderr)
      raise SystemExit(130) from None
    except Exception as error:  # pylint: disable=broad-except
      if verbose:
        traceback.print_exc()
      sys.stdout.flush()
      print(error_line(prog, error, verbose), file=sys.stderr)
      raise SystemExit(2 if isinstance(error, UsageError) else 1) from None
    finally:
      _PROG.reset(token)

  return wrapper


# ---------------------------------------------------------------------------------------------
# The user's own seqio tasks.
def add_module_flag(parser: argparse.ArgumentParser) -> None:
  """A repeatable `--module NAME`: a module of yours imported before --task is looked up."""
  parser.add_argument(
      "--module",
      action="append",
      default=[],
      metavar="MODULE",
      help="import this module first, e.g. the one that registers your --task with "
      "tasks.own_corpus.register_parallel_corpus_task (repeatable; dotted name, found on "
      "sys.path, which holds the current directory)",
  )


def import_modules(names: Sequence[str]) -> None:
  """Imports each module of `names`, in order (what `--module` asks for).

  Raises UsageError naming the flag and the module when one cannot be imported (not found, or
  an error inside it; the cause stays chained for --verbose).
  """
  import importlib  # pylint: disable=g-import-not-at-top

  for name in names:
    try:
      importlib.import_module(name)
    except Exception as error:  # pylint: disable=broad-except
      raise UsageError(
          f"argument --module: cannot import {name!r} ({type(error).__name__}: {error})"
      ) from error


def check_registered_task(name: str) -> None:
  """Raises UsageError unless `name` is a registered seqio task or mixture (for --task)."""
  import seqio  # pylint: disable=g-import-not-at-top  # TensorFlow: only commands with --task

  if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
    raise UsageError(
        f"argument --task: no seqio task or mixture {name!r} is registered; register it in a "
        "module of yours and pass --module MODULE (see tasks/own_corpus.py)"
    )
