"""The README's commands are the ones CI and users run."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def _bash_blocks(markdown: str) -> list[str]:
  return re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)


def _section(markdown: str, heading: str) -> str:
  match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, flags=re.S | re.M)
  assert match, f"README.md has no '## {heading}' section"
  return match.group(1)


def test_ci_runs_the_readme_test_command():
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  blocks = _bash_blocks(_section(readme, "Run the tests"))
  assert len(blocks) == 1, "the 'Run the tests' section should hold exactly one command"
  command = blocks[0].strip()
  ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
  assert command in ci_lines, f".ci/run does not run the README test command: {command}"


def test_main_job_command_runs_the_quickstart_module():
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  blocks = _bash_blocks(_section(readme, "Quickstart: train and evaluate on the embedded corpus"))
  assert blocks and "python -m padir_t5x.quickstart" in blocks[0]
  assert (REPO / "padir_t5x" / "quickstart.py").is_file()


def test_quickstart_section_shows_the_command_the_quickstart_prints():
  from padir_t5x import quickstart

  readme = (REPO / "README.md").read_text(encoding="utf-8")
  blocks = _bash_blocks(_section(readme, "Quickstart: train and evaluate on the embedded corpus"))
  commands = [line for block in blocks for line in block.splitlines()]
  printed = quickstart.translate_command(
      quickstart.QuickstartConfig().output_dir, "du willst achtundvierzig große hunde kaufen."
  )
  assert printed in commands
