"""Mutation check: plant each known bug of ``tests/mutations.yaml`` in a copy of the package, run
the tests named for it, and fail if any mutant survives (its tests still pass).

Why a curated list and not mutmut or cosmic-ray: those generate thousands of operator swaps and
run a test command per mutant; with this suite's real-data tests that is hours on two cores, and
most random swaps are equivalent or irrelevant. Here every entry is a plausible bug with the tests
that must catch it, so the run takes minutes and the list grows with every bug found.

    python scripts/mutation.py                 # all mutations (progress bar; results in .mutation/)
    python scripts/mutation.py --only kd_t_squared crd_z_sum
    python scripts/mutation.py --resume        # skip mutations already killed in the last run
    python scripts/mutation.py --baseline      # first, the same tests on an unplanted copy must pass
    python scripts/mutation.py --jobs 1        # one mutant at a time (default: one per core, at most 4)

A kill only counts if the tests pass without the bug: ``--baseline`` runs each venv's selected tests once on
an unplanted copy and stops if any fails there (a file the copy lacks, say), since every kill would be false.

An entry with ``venv: tv`` runs its tests in the torchvision venv (``$TV_VENV``, default ``.venv-tv``,
as ``scripts/tv_venv.sh`` builds it) with WDISTILL_REQUIRE_TV=1, so they fail rather than skip there.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import yaml
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]


def apply(tree: Path, m: dict) -> None:
    path = tree / m["file"]
    text = path.read_text()
    count = text.count(m["find"])
    if count != 1:
        raise SystemExit(f"mutation {m['id']}: the text to replace occurs {count} times in {m['file']} (must be "
                         "exactly once): update tests/mutations.yaml")
    path.write_text(text.replace(m["find"], m["replace"]))


@functools.cache
def has_xdist(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import xdist"], capture_output=True).returncode == 0
    except FileNotFoundError:  # no such interpreter: the run itself says so
        return False


def run_one(m: dict, timeout: int, workers: int = 1) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"mut-{m['id']}-") as tmp:
        tree = Path(tmp)
        for part in ("wdistill", "benchtools", "tests", "scripts", "pyproject.toml"):
            src = ROOT / part
            if src.is_dir():
                shutil.copytree(src, tree / part, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy(src, tree / part)
        if "find" in m:  # the baseline plants nothing
            apply(tree, m)
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        python = sys.executable
        if m.get("venv") == "tv":
            python = str(Path(os.environ.get("TV_VENV", ROOT / ".venv-tv")) / "bin" / "python")
            env["WDISTILL_REQUIRE_TV"] = "1"
        selection = [arg for t in m["tests"] for arg in shlex.split(t)]
        # pytest-xdist, as `make test` runs the suite, where the venv has it (a tv venv built before it may not)
        parallel = ["-n", str(workers)] if workers > 1 and has_xdist(python) else []
        cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *parallel, *selection]
        start = time.time()
        try:
            proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
            code, tail = proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()[-1:]
        except subprocess.TimeoutExpired:
            code, tail = -1, ["timeout"]
        except FileNotFoundError:
            code, tail = -2, [f"no interpreter {python}: build the tv venv (scripts/tv_venv.sh) or set TV_VENV"]
    # pytest: 0 all passed (survived), 1 a test failed (killed); 2-5 are errors of the run itself
    status = {0: "SURVIVED", 1: "killed"}.get(code, f"error (pytest exit {code})")
    return {
        "id": m["id"],
        "status": status,
        "seconds": round(time.time() - start, 1),
        "last_line": tail[0] if tail else "",
    }


def baseline(todo: list[dict], timeout: int, workers: int) -> bool:
    """Run each venv's tests of ``todo`` on an unplanted copy (``workers`` pytest-xdist workers); True (and a
    message) if any fails."""
    failed = False
    for venv in sorted({m.get("venv", "main") for m in todo}):
        tests = sorted({t for m in todo if m.get("venv", "main") == venv for t in m["tests"]})
        # node ids together; a selection with options (``-k``) alone, as one -k would override another
        groups = [[t for t in tests if " " not in t]] + [[t] for t in tests if " " in t]
        for group in filter(None, groups):
            r = run_one({"id": f"baseline-{venv}", "tests": group, "venv": venv}, timeout * 4,
                        workers if len(group) > 1 else 1)
            print(f"baseline ({venv} venv, {' '.join(group) if len(group) == 1 else f'{len(group)} test selections'}"
                  f", {r['seconds']} s): {r['last_line']}")
            if r["status"] != "SURVIVED":  # on the unplanted copy every test must pass
                print(f"the unplanted copy fails these tests ({r['status']}): their kills would be false; "
                      "fix that first")
                failed = True
    return failed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", default=str(ROOT / "tests" / "mutations.yaml"))
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--baseline", action="store_true", help="first run the selected tests on an unplanted copy")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                   help="mutants tested at once, each in its own copy with one thread per test process")
    args = p.parse_args()
    mutations = yaml.safe_load(Path(args.list).read_text())
    ids = [m["id"] for m in mutations]
    if len(set(ids)) != len(ids):
        raise SystemExit("duplicate mutation ids in the list")
    if args.only:
        unknown = set(args.only) - set(ids)
        if unknown:
            raise SystemExit(f"unknown mutation ids {sorted(unknown)}")
        mutations = [m for m in mutations if m["id"] in args.only]
    out = ROOT / ".mutation" / "results.json"
    done = json.loads(out.read_text()) if args.resume and out.exists() else {}
    for m in mutations:  # a list entry that no longer applies fails before any test runs
        apply_check = (ROOT / m["file"]).read_text().count(m["find"])
        if apply_check != 1:
            raise SystemExit(f"mutation {m['id']}: its text occurs {apply_check} times in {m['file']}")
    todo = [m for m in mutations if done.get(m["id"], {}).get("status") != "killed"]
    if args.baseline and baseline(todo, args.timeout, args.jobs):
        return 1
    with ThreadPoolExecutor(max(1, args.jobs)) as pool, tqdm(total=len(todo), desc="mutations", unit="mutant") as bar:
        running = {pool.submit(run_one, m, args.timeout): m for m in todo}
        for future in as_completed(running):  # each result is saved as it comes, so --resume loses none
            m, r = running[future], future.result()
            done[m["id"]] = r
            out.parent.mkdir(exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(done, indent=1))
            os.replace(tmp, out)
            bar.update()
            tqdm.write(f"{r['status']:>8}  {m['id']}  ({r['seconds']} s)  {m['why']}")
    bad = [i for i in ids if i in done and done[i]["status"] != "killed" and (not args.only or i in args.only)]
    total = sum(r["seconds"] for r in done.values())
    print(f"\n{len(done) - len(bad)} of {len(done)} mutations killed, {total:.0f} s of tests; results in {out}")
    if bad:
        print("not killed: " + ", ".join(f"{i} ({done[i]['status']})" for i in bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
