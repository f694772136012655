"""The documentation ships and cannot rot: the site builds in strict mode (a broken link, a missing
page or a renamed function documented by mkdocstrings fails it), the docstring examples run
(doctest), every code block of docs/python.md runs, and no document points outside the repository."""
from __future__ import annotations

import doctest
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Modules whose docstrings carry >>> examples: the OT solvers, distill and models.create.
DOCTESTED = ["wdistill.ot.sinkhorn", "wdistill.ot.ipot", "wdistill.ot.gaussian", "wdistill.models.registry",
             "wdistill.api"]
OUTSIDE = re.compile(r"(?<![\w/])(REFERENCE|BENCHMARK|DESIGN|PROTOCOL)\.md")


def test_site_builds_in_strict_mode(tmp_path):
    run = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env={"PATH": str(BIN), "NO_MKDOCS_2_WARNING": "1",
                                                                        "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for page in ("methods", "python", "config", "benchmarks", "architecture", "reference/ot"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page
    assert "sinkhorn_log2" in (tmp_path / "site" / "reference" / "ot" / "index.html").read_text()


@pytest.mark.parametrize("module", DOCTESTED)
def test_docstring_examples_run(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module} has no >>> example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {module} failed (output above)"


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks(ROOT / "docs" / "python.md"))))
def test_python_page_examples_run(index, tmp_path):
    code = _python_blocks(ROOT / "docs" / "python.md")[index]
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"example {index} of docs/python.md failed:\n{code}\n{run.stderr[-3000:]}"


def test_a_broken_example_would_fail():
    run = subprocess.run([sys.executable, "-c", "from wdistill import no_such_name"], capture_output=True, text=True)
    assert run.returncode != 0 and "cannot import name 'no_such_name'" in run.stderr


def test_no_document_points_outside_the_repository():
    files = [*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "benchmarks").glob("*.md"),
             *(ROOT / "wdistill").rglob("*.py"), *(ROOT / "benchtools").rglob("*.py"),
             *(ROOT / "wdistill").rglob("*.yaml")]
    found = [f"{f.relative_to(ROOT)}: {m.group(0)}" for f in files for m in OUTSIDE.finditer(f.read_text())]
    assert found == [], found
    assert OUTSIDE.search("see BENCHMARK.md, section A") and not OUTSIDE.search("docs/benchmarks.md")


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if not t.startswith(("http", "#"))]
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert targets and missing == [], missing
