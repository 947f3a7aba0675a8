"""The README and docs/ hold together: links resolve, commands exist, the results table is current.

* every relative link of README.md, benchmarks/README.md and docs/**/*.md names an existing file,
  and an existing heading when it has an #anchor (GitHub's heading slugs);
* README.md stays a front door: at most MAX_README_BYTES;
* the README's results table is what `python -m benchmarks.results_table` generates;
* every `python -m MODULE` in a bash block of those files names a module that exists (t5x's only
  where t5x is installed).
"""

import importlib.util
import os
import pathlib
import re

import pytest

from benchmarks import results_table

REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_README_BYTES = 15_000
TABLE_FILES = ("README.md", "docs/benchmarks.md")


def _markdown_files() -> list[pathlib.Path]:
  files = [REPO / "README.md", REPO / "benchmarks" / "README.md"]
  files += sorted((REPO / "docs").rglob("*.md"))
  return files


def _ids(path: pathlib.Path) -> str:
  return os.path.relpath(path, REPO)


def _without_code(markdown: str) -> str:
  """The text outside fenced code blocks and inline code spans."""
  markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
  return re.sub(r"`[^`\n]*`", "", markdown)


def _headings(markdown: str) -> list[str]:
  markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
  return re.findall(r"^#{1,6} +(.+?) *#* *$", markdown, flags=re.M)


def slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  text = re.sub(r"`([^`]*)`", r"\1", heading)
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
  text = re.sub(r"[^\w\- ]", "", text.strip().lower())
  return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
  """Every heading anchor of a page; repeated headings get -1, -2, ... as on GitHub."""
  found, seen = set(), {}
  for heading in _headings(markdown):
    base = slug(heading)
    count = seen.get(base, 0)
    seen[base] = count + 1
    found.add(base if count == 0 else f"{base}-{count}")
  return found


def links(markdown: str) -> list[str]:
  """The targets of the page's markdown links and images, outside code."""
  return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _without_code(markdown))


def test_slugs_follow_github():
  assert slug("Quickstart: train and evaluate on the embedded corpus") == (
      "quickstart-train-and-evaluate-on-the-embedded-corpus"
  )
  assert slug("Decoding efficiency (`decoding_profile`, T=4, l=3)") == (
      "decoding-efficiency-decoding_profile-t4-l3"
  )
  assert slug("Cost of the paper's recipe") == "cost-of-the-papers-recipe"
  assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_there_are_docs_to_check():
  names = {_ids(p) for p in _markdown_files()}
  for name in ("docs/training.md", "docs/decoding.md", "docs/data.md", "docs/benchmarks.md"):
    assert name in names


@pytest.mark.parametrize("path", _markdown_files(), ids=_ids)
def test_relative_links_resolve(path):
  markdown = path.read_text(encoding="utf-8")
  broken = []
  for target in links(markdown):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
      continue
    file_part, _, anchor = target.partition("#")
    resolved = (path.parent / file_part).resolve() if file_part else path
    if not resolved.exists():
      broken.append(f"{target} (no such file)")
      continue
    if anchor and resolved.suffix == ".md":
      if anchor not in anchors(resolved.read_text(encoding="utf-8")):
        broken.append(f"{target} (no heading #{anchor} in {_ids(resolved)})")
  assert not broken, f"{_ids(path)}: broken links: {broken}"


def test_readme_is_a_front_door():
  size = len((REPO / "README.md").read_bytes())
  assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_readme_links_every_docs_page():
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  targets = {t.partition("#")[0] for t in links(readme)}
  for page in sorted((REPO / "docs").glob("*.md")):
    assert _ids(page) in targets, f"README.md does not link {_ids(page)}"
  assert "docs/experiments/README.md" in targets


@pytest.mark.parametrize("name", TABLE_FILES)
def test_results_table_is_current(name):
  generated = results_table.table(results_table.load_quality(results_table.DEFAULT_QUALITY))
  text = (REPO / name).read_text(encoding="utf-8")
  assert (
      results_table.embedded_table(text) == generated
  ), f"{name}'s results table is stale: python -m benchmarks.results_table --write {name}"


def test_results_table_check_fails_on_a_stale_table(tmp_path):
  page = tmp_path / "page.md"
  page.write_text(f"x\n{results_table.START}\n| stale |\n{results_table.END}\n", encoding="utf-8")
  assert results_table.main(["--check", str(page)]) == 1
  assert results_table.main(["--write", str(page)]) == 0
  assert results_table.main(["--check", str(page)]) == 0
  assert page.read_text(encoding="utf-8").startswith("x\n")


def _module_commands() -> list[tuple[str, str]]:
  found = []
  for path in _markdown_files():
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S):
      for module in re.findall(r"\bpython3? -m ([A-Za-z_][\w.]*)", block):
        found.append((_ids(path), module))
  return sorted(set(found))


def test_docs_name_commands():
  modules = {m for _, m in _module_commands()}
  assert {"padir_t5x.quickstart", "padir_t5x.translate", "t5x.train"} <= modules


@pytest.mark.parametrize("page, module", _module_commands())
def test_python_m_modules_exist(page, module):
  top = module.split(".")[0]
  if top == "t5x" and importlib.util.find_spec("t5x") is None:
    pytest.skip("t5x is not installed")
  spec = importlib.util.find_spec(module)
  assert spec is not None, f"{page}: `python -m {module}`: no such module"
  if spec.submodule_search_locations is not None:  # a package runs its __main__
    assert importlib.util.find_spec(f"{module}.__main__"), f"{page}: {module} has no __main__"
