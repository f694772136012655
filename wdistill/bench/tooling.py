"""The project's benchmark tooling (issue targets, kernel comparisons, git stamps) lives in
``benchtools/`` beside the package, in a wdistill checkout, and is not installed. The benchmark
commands use it when it is there and say how to get it when it is not."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

CHECKOUT = Path(__file__).resolve().parents[2]  # the checkout root when wdistill runs from one
HOW = ("the project's benchmark tooling (benchtools/: kernel comparisons, issue targets, git stamps) is "
       "not installed with the package; run from a wdistill checkout (git clone the repository, then "
       "`python -m wdistill.cli bench ...` in it) to include it")


def load(name: str) -> ModuleType | None:
    """``benchtools.<name>`` if importable (on the path, or in the checkout this package runs from)."""
    try:
        return importlib.import_module(f"benchtools.{name}")
    except ModuleNotFoundError as e:
        if e.name not in ("benchtools", f"benchtools.{name}"):
            raise  # benchtools is there but something it imports is not: say so, do not hide it
    if (CHECKOUT / "benchtools" / "__init__.py").is_file() and str(CHECKOUT) not in sys.path:
        sys.path.append(str(CHECKOUT))
        return load(name)
    return None
