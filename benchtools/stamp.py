"""The git commit of the checkout a benchmark result was produced from."""
from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git_commit(root: Path = ROOT) -> str:
    """``HEAD``'s short hash, with the paths of uncommitted changes to tracked files if any."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout  # "XY path" lines
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    paths = [line[3:] for line in dirty.splitlines() if line.strip()]
    listed = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return (head or "unknown") + (f" (with uncommitted changes to {listed})" if paths else "")
