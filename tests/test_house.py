"""The house rules (docs/architecture.md), each checked here and each shown to fail on a planted
violation:

1. imports only run downward (import-linter's contracts in pyproject.toml);
2. nothing imports the command line, and a command module is its argparse definition and one call;
3. the installed package never imports the benchmark tooling, never edits sys.path, never writes
   into its own directory;
4. one home per concept: the run directory's file names in engine/rundir/names.py, the error classes in
   errors.py, the preset directory in config/presets.py; imports inside functions only for optional
   third-party packages;
5. ruff is clean; files at most 300 lines and functions at most 60 (docstring excluded; exceptions
   listed with a reason).
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wdistill"
TOOLS = ROOT / "benchtools"
BIN = Path(sys.executable).parent

# Imported inside functions on purpose: optional extras a user may not have installed.
OPTIONAL = ("timm", "torchvision", "torch.utils.tensorboard", "pycocotools", "optuna")
# The run directory's file names: spelled out only in engine/rundir/names.py.
RUN_FILE_NAMES = {"student.pt", "last.pt", "best.pt", "summary.json", "config.yaml", "metrics.jsonl",
                  "metrics.csv", "student.safetensors", ".lock"}
# Size limits and their listed exceptions: path (or path::function) -> reason.
MAX_FILE_LINES, MAX_FUNCTION_LINES = 300, 60
SIZE_EXCEPTIONS: dict[str, str] = {}
WRITERS = {"atomic_save", "atomic_write_text", "atomic_write_bytes", "write_text", "write_bytes", "mkdir", "save",
           "save_file", "unlink", "rmtree", "copy", "copyfile", "replace", "rename", "touch", "write_student",
           "savefig"}


def _sources(*roots: Path):
    for root in roots:
        for f in sorted(root.rglob("*.py")):
            yield f, ast.parse(f.read_text(), str(f))


def _rel(f: Path) -> str:
    return f.relative_to(ROOT).as_posix() if f.is_relative_to(ROOT) else f.name


# ---- 1. layers -----------------------------------------------------------------------------------
def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd), "PATH": str(BIN)})


def test_imports_run_downward_and_a_planted_upward_import_is_caught(tmp_path):
    ok = _lint_imports(ROOT)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Contracts: 3 kept, 0 broken." in ok.stdout
    for part in ("wdistill", "benchtools", "pyproject.toml"):
        src = ROOT / part
        (shutil.copytree(src, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy(src, tmp_path / part))
    planted = tmp_path / "wdistill" / "ot" / "costs.py"  # the bottom floor reaching up into the engine
    planted.write_text(planted.read_text() + "\nfrom wdistill.engine import trainer  # noqa\n")
    (tmp_path / "wdistill" / "models" / "taps.py").write_text(
        (tmp_path / "wdistill" / "models" / "taps.py").read_text() + "\nimport benchtools  # noqa\n")
    bad = _lint_imports(tmp_path)
    assert bad.returncode != 0
    assert "imports only run downward" in bad.stdout and "BROKEN" in bad.stdout
    assert "wdistill.ot.costs -> wdistill.engine.trainer" in bad.stdout
    assert "never imports the benchmark tooling BROKEN" in bad.stdout


# ---- 2. command modules ---------------------------------------------------------------------------
def _command_logic(tree: ast.Module) -> list[str]:
    """cmd_* functions of a CLI module with branching logic beyond printing one call's result:
    loops, or more than one call into the library besides print/json."""
    out = []
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef) and fn.name.startswith("cmd_"):
            loops = [n for n in ast.walk(fn) if isinstance(n, (ast.For, ast.While, ast.comprehension))]
            if len(loops) > 1 or len(fn.body) > 12:
                out.append(fn.name)
    return out


def test_command_modules_are_a_parser_and_one_call():
    for f, tree in _sources(PACKAGE / "cli"):
        assert _command_logic(tree) == [], f"{_rel(f)}: command functions with their own logic"
    planted = ast.parse("def cmd_x(args):\n" + "".join(f"    for i in range({k}):\n        print(i)\n" for k in (2, 3)))
    assert _command_logic(planted) == ["cmd_x"]


# ---- 3. the package and its own directory ----------------------------------------------------------
def _touches_sys_path(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "path" and isinstance(n.value, ast.Name)
               and n.value.id == "sys" for n in ast.walk(tree))


def _writes_into_package(tree: ast.Module) -> list[int]:
    """Lines where a name bound (at module level) from ``__file__`` reaches a writing call, or is the
    default value of a parameter (a default destination the caller may write to)."""
    own = set()
    for node in tree.body:  # in order, so PRESETS_DIR / "fmnist" is the package's too
        if isinstance(node, ast.Assign) and any(isinstance(n, ast.Name) and n.id in own | {"__file__"}
                                                for n in ast.walk(node.value)):
            own |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defaults = node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
            lines += [d.lineno for d in defaults if any(isinstance(n, ast.Name) and n.id in own for n in ast.walk(d))]
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            touched = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            if name in WRITERS and own & touched:
                lines.append(node.lineno)
    return lines


def test_package_never_edits_sys_path_nor_writes_into_its_own_directory():
    for f, tree in _sources(PACKAGE):
        assert not _touches_sys_path(tree), f"{_rel(f)} edits sys.path"
        assert _writes_into_package(tree) == [], f"{_rel(f)} writes into the package directory"
    planted = ast.parse("import sys\nfrom pathlib import Path\nHERE = Path(__file__).parent\nSUB = HERE / 's'\n"
                        "def f(x):\n    (HERE / 'x').write_text(x)\n"
                        "def g(x, out=SUB):\n    save(x, out)\n")
    assert sorted(_writes_into_package(planted)) == [6, 7]
    assert _touches_sys_path(ast.parse("import sys\nsys.path.append('.')\n"))


# ---- 4. one home per concept ------------------------------------------------------------------------
def _function_imports(tree: ast.Module) -> list[str]:
    out = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or "."] if isinstance(node, ast.ImportFrom) else [])
                out += [f"{n} (line {node.lineno})" for n in names
                        if not any(n == o or n.startswith(o + ".") for o in OPTIONAL)]
    return out


def test_imports_inside_functions_only_for_optional_packages():
    for f, tree in _sources(PACKAGE):
        assert _function_imports(tree) == [], f"{_rel(f)} imports inside a function"
    planted = ast.parse("def f():\n    import timm\n    from wdistill.engine import Trainer\n")
    assert _function_imports(planted) == ["wdistill.engine (line 3)"]


def _string_constants(tree: ast.Module) -> set[str]:
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings}


def test_run_directory_file_names_live_only_in_rundir():
    for f, tree in _sources(PACKAGE):
        if _rel(f) != "wdistill/engine/rundir/names.py":
            assert not (_string_constants(tree) & RUN_FILE_NAMES), f"{_rel(f)} spells out a run file name"
    assert _string_constants(ast.parse("'''doc: student.pt'''\nX = 'last.pt'\n")) & RUN_FILE_NAMES == {"last.pt"}


def _error_classes(tree: ast.Module) -> list[str]:
    return [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
            and any(getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception")) for b in n.bases)]


def test_error_classes_live_only_in_errors_py():
    for f, tree in _sources(PACKAGE):
        if _rel(f) != "wdistill/errors.py":
            assert _error_classes(tree) == [], f"{_rel(f)} defines an error class"
    from wdistill import errors
    assert {"ConfigError", "FileLoadError", "NonFiniteLoss"} <= set(vars(errors))
    assert _error_classes(ast.parse("class Oops(ValueError):\n    pass\n")) == ["Oops"]


# ---- 5. lint and sizes ------------------------------------------------------------------------------
def test_ruff_is_clean():
    run = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:]


def _oversized(f: Path, tree: ast.Module) -> list[str]:
    out = []
    n = len(f.read_text().splitlines())
    if n > MAX_FILE_LINES and _rel(f) not in SIZE_EXCEPTIONS:
        out.append(f"{_rel(f)}: {n} lines")
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            doc = node.body[0]
            if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
                length -= doc.end_lineno - doc.lineno + 1  # a docstring is documentation, not length
            key = f"{_rel(f)}::{node.name}"
            if length > MAX_FUNCTION_LINES and key not in SIZE_EXCEPTIONS:
                out.append(f"{key}: {length} lines")
    return out


@pytest.mark.parametrize("root", [PACKAGE, TOOLS], ids=["wdistill", "benchtools"])
def test_files_and_functions_stay_small(root):
    found = [problem for f, tree in _sources(root) for problem in _oversized(f, tree)]
    assert found == [], "split these (or list them in SIZE_EXCEPTIONS with the reason): " + "; ".join(found)
    for key in SIZE_EXCEPTIONS:
        assert (ROOT / key.split("::")[0]).is_file(), f"stale size exception {key}"


def test_a_long_function_is_caught(tmp_path):
    f = tmp_path / "long.py"
    f.write_text("def f():\n" + "    x = 1\n" * 70)
    assert _oversized(f, ast.parse(f.read_text()))[0].endswith("::f: 71 lines")
