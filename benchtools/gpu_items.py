"""The GPU benchmark as a list of items, each measured once and written at once.

A device session is short and its machine can go away: ``run_items`` starts no new item once its time budget is
spent (the rest stays ``pending`` in gpu.json), and a later run given that gpu.json (``--resume``) keeps every
item it measured and runs only what is missing or failed, on a machine of the same kind."""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from wdistill.errors import ConfigError

# The slots that hold one row per item; any other slot holds one section.
ROWS = ("parity", "solvers", "steps", "kernels", "e2e", "detection")
# What must match for a resumed run's figures to sit beside the earlier ones.
SAME = ("device", "gpu", "torch", "cuda")


@dataclass(frozen=True)
class Item:
    key: str  # unique within a run, and what its error is filed under: "parity kd", "step kd B=64", "ddp"
    slot: str  # res[slot]: a list in ROWS its row joins, else the section's whole result
    fn: Callable[[], Any]
    failed: Any = None  # what stands in for the result when fn raises (a dict gets the error added)


def cell(text) -> str:
    """One line of text that a markdown table cell can hold."""
    return " ".join(str(text).split()).replace("|", "\\|")


def step_label(row: dict) -> str:
    """A step row's name in the report: its method, and what it runs in another form."""
    return row["method"] + (", train.compile" if row.get("compiled") else "") + \
        (f", kernel {row['kernel']}" if row.get("kernel") else "")


def guarded(res: dict, what: str, fn, failed):
    """``fn()``; if it raises, the error is appended to ``res["errors"]`` and ``failed`` (with the error, when
    it is a dict) is returned in its place: one broken method must not cost a device session the rest."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - recorded in the results and in the report, not hidden
        error = f"{what}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        res["errors"].append({"what": what, "error": error, "traceback": traceback.format_exc()[-3000:]})
        tqdm.write(f"FAILED {error}")
        return failed | {"error": error} if isinstance(failed, dict) else failed


def _failed(value) -> bool:
    return isinstance(value, dict) and "error" in value


def done(res: dict, item: Item) -> bool:
    """Measured already, without an error."""
    if item.slot in ROWS:
        return any(r.get("key") == item.key and not _failed(r) for r in res[item.slot])
    return item.slot in res and not _failed(res[item.slot])


def _record(res: dict, item: Item, value) -> None:
    """The item's result in its slot; a row replaces the same item's failed row, in its place."""
    if item.slot not in ROWS:
        res[item.slot] = value
        return
    value = value | {"key": item.key}
    rows = res[item.slot]
    at = next((i for i, r in enumerate(rows) if r.get("key") == item.key), None)
    if at is None:
        rows.append(value)
    else:
        rows[at] = value


def run_items(res: dict, items: list[Item], write: Callable[[dict], None], budget_s: float | None = None) -> list[str]:
    """Each item not yet done, in order, its result written as soon as it is in; once ``budget_s`` seconds have
    passed no new item starts. Returns the keys left (also ``res["pending"]``; empty when all are done)."""
    start = time.monotonic()
    res.pop("pending", None)  # a resumed run's list: this run makes its own
    todo = [item for item in items if not done(res, item)]
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="gpu benchmark", unit="item")
    for i, item in enumerate(todo):
        if budget_s is not None and time.monotonic() - start > budget_s:
            res["pending"] = [it.key for it in todo[i:]]
            tqdm.write(f"time budget of {budget_s:.0f} s spent: {len(todo) - i} items left for --resume")
            break
        bar.set_postfix_str(item.key)
        # A retry: its old errors go (a section's own rows file theirs under "KEY row").
        res["errors"] = [e for e in res["errors"] if e["what"] != item.key and not e["what"].startswith(item.key + " ")]
        _record(res, item, guarded(res, item.key, item.fn, item.failed))
        write(res)
        bar.update()
    bar.close()
    write(res)
    return res.get("pending", [])


def resume_from(folder: str | Path, res: dict) -> dict:
    """The results in ``folder``/gpu.json, to go on from, if they were measured with the same setup on the same
    kind of device and software as ``res`` (this run's fresh start); their command joins ``res``'s as ``resumed``."""
    path = Path(folder) / "gpu.json"
    if not path.is_file():
        raise ConfigError(f"--resume {folder}: no gpu.json there; give the folder a previous run wrote (its --out)")
    try:
        old = json.loads(path.read_text())
        env, setup = old["environment"], old["setup"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--resume: {path} is not a GPU benchmark's results ({e}); "
                          "start afresh without --resume") from None
    here = json.loads(json.dumps(res["setup"]))  # tuples as JSON gives them back
    if setup != here:
        raise ConfigError(f"--resume: {path} was measured with another setup ({setup}, this run: {here}); "
                          "rerun with its options or start afresh without --resume")
    moved = [k for k in SAME if env.get(k) != res["environment"].get(k)]
    if moved:
        what = ", ".join(f"{k} {env.get(k)} there, {res['environment'].get(k)} here" for k in moved)
        raise ConfigError(f"--resume: {path} was measured elsewhere ({what}); its figures would not compare with "
                          "this machine's: start afresh without --resume")
    old["resumed"] = old.get("resumed", []) + [{"command": res["command"], "date": res["date"]}]
    for slot in ROWS:  # results from before a slot existed
        old.setdefault(slot, [])
    return old
