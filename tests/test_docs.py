"""The documentation: links that resolve, numbers from the results page, the project's own words."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                              if f.endswith(".md"))
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _text(path):
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    return f.read()


@pytest.mark.parametrize("path", DOCS)
def test_relative_links_resolve(path):
  folder = os.path.dirname(os.path.join(ROOT, path))
  missing = [t for t in LINK.findall(_text(path)) if "://" not in t
             and not os.path.exists(os.path.join(folder, t))]
  assert not missing, f"{path} links to files that do not exist: {missing}"


def test_readme_fits_on_a_few_screens():
  assert len(_text("README.md").splitlines()) <= 250


def _project_files():
  for top in ("README.md", "launch.py", "pyproject.toml", "jaxddpm", "configs", "tests", "bench",
              "docs"):
    full = os.path.join(ROOT, top)
    if os.path.isfile(full):
      yield top
    for folder, _, names in os.walk(full):
      for name in names:
        if name.endswith((".py", ".md", ".sh", ".toml")):
          yield os.path.relpath(os.path.join(folder, name), ROOT)


def test_the_project_speaks_of_itself_only():
  """Work history lives in git: the project's text names no work periods, tracker
  entries or people's roles (pytest's fixture scope is the one use allowed). The
  words are assembled here so that this file passes its own check."""
  words = ["sess" + "ion", r"\biss" + r"ue #?[0-9]", r"the le" + r"ad\b"]
  history = re.compile("|".join(words), re.IGNORECASE)
  hits = []
  for path in _project_files():
    for n, line in enumerate(_text(path).splitlines(), 1):
      if history.search(line.replace('scope="session"', "")):
        hits.append(f"{path}:{n}: {line.strip()[:80]}")
  assert not hits, "\n".join(hits)


def test_readme_numbers_are_in_the_results_page():
  """Every measured number the README quotes (a decimal or a percentage) is in
  docs/results.md, where its command, machine and date are."""
  measured = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?(?:%|x\b)|(?<![\w.])\d+\.\d+(?![\w.])")
  readme = re.sub(r"```.*?```", "", _text("README.md"), flags=re.DOTALL)  # Not commands.
  readme = re.sub(r"`[^`]*`", "", readme)
  results = _text(os.path.join("docs", "results.md"))
  missing = sorted({n for n in measured.findall(readme) if n not in results})
  assert not missing, f"README numbers not in docs/results.md: {missing}"
