"""Runs the speed benchmark and writes benchmarks/speed.md + speed.csv (docs/benchmarks.md, protocol B)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from tqdm.auto import tqdm

from benchtools import kernels as kernels_module
from benchtools import report
from benchtools import targets as targets_module
from benchtools.speed import SpeedSetup, step_table
from wdistill.io import atomic_write_text
from wdistill.losses.recipes import LABELS, RECIPES

NUMPY_IMPLS = ("POT",)  # NumPy allocations are invisible to the torch allocator profile


def run_speed(out: str | Path = "benchmarks", methods: list[str] | None = None, setup: SpeedSetup | None = None,
              kernel_shapes: dict | None = None, command: list[str] | None = None, log=print) -> dict:
    """Measure everything, write ``out/speed.md`` and ``out/speed.csv``; returns the raw results.

    kernel_shapes: smaller shapes for tests, keys ``wkd_l`` (list of (B, C)), ``lckt`` (B, d),
    ``wkd_f`` (B, C, H), ``crd`` (B, K, N), ``aug`` (batch, size), ``aug_imagenet`` (batch, stored,
    crop), ``steps``.
    """
    setup = setup or SpeedSetup()
    kernels = kernels_module
    methods = methods or [m for m in RECIPES if m != "vanilla"]
    ks = {"wkd_l": [(64, 100), (256, 1000)], "lckt": (64, 128), "wkd_f": (64, 256, 8), "crd": (64, 16384, 50_000),
          "aug": (64, 32), "aug_imagenet": (64, 256, 224), "steps": setup.steps} | (kernel_shapes or {})
    bar = tqdm(total=len(methods) + 6, desc="speed", unit="item")

    def tick(name):
        bar.set_postfix_str(name)
        bar.update(1)

    bound, rows = step_table(methods, setup, progress=tick)
    result = {"setup": setup, "bound": bound, "rows": rows, "kernels": [], "augment": None, "augment_imagenet": None,
              "stamp": report.stamp(command=command)}
    n = ks["steps"]
    kern = []
    for B, C in ks["wkd_l"]:
        # the per-sample reference at B=256, C=1000 moves GBs per call: fewer repeats there
        big = B * C * C >= 10 ** 8
        kern += kernels.wkd_l_rows(B, C, 1 if big else n, 0 if big else 1)
    tick("lckt")
    kern += kernels.lckt_rows(*ks["lckt"], steps=n)
    tick("wkd_f")
    kern += kernels.wkd_f_rows(*ks["wkd_f"], steps=n)
    tick("crd")
    kern += kernels.crd_rows(*ks["crd"], steps=max(1, n // 2), warmup=1)
    tick("augment")
    aug = kernels.augment_throughput(*ks["aug"])
    aug["share"] = aug["batch_s"] / bound["lower_bound"]
    tick("augment imagenet")
    aug_in = kernels.imagenet_augment_share(*ks["aug_imagenet"], steps=max(1, min(n, 5)))
    bar.close()
    result.update(kernels=kern, augment=aug, augment_imagenet=aug_in)
    return _write(result, out)


def _write(result: dict, out: str | Path) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(speed_markdown(result), out / "speed.md")
    atomic_write_text(speed_csv(result), out / "speed.csv")
    return result


def _pairs(kern: list[dict]) -> list[tuple[dict, dict]]:
    """(ours, straightforward) pairs: consecutive rows of the same kernel and shape."""
    by: dict[tuple, list[dict]] = {}
    for k in kern:
        by.setdefault((k["kernel"], k["shape"]), []).append(k)
    return [(v[0], v[-1]) for v in by.values() if len(v) >= 2]


def misses(result: dict) -> list[str]:
    """Every project target the measurements miss (benchtools.targets; none without it)."""
    targets = targets_module
    return targets.misses(result) if targets else []


def speed_markdown(res: dict) -> str:
    lines = [
        "# Speed (CIFAR-100 shapes, synthetic tensors)\n",
        report.stamp_markdown(res["stamp"]),
        _setup_text(res["setup"]),
        *_step_section(res),
        *_kernel_section(res["kernels"]),
        *_data_section(res),
        "## Targets missed\n",
    ]
    miss = misses(res)
    lines += [f"- {m}" for m in miss] if miss else ["None."]
    return "\n".join(lines) + "\n"


def _setup_text(s: SpeedSetup) -> str:
    """What was measured and how, with any deviation from the protocol's step counts."""
    return (
        f"Teacher {s.teacher}, student {s.student}, batch {s.batch}, {s.channels}x{s.image}x{s.image}, "
        f"{s.classes} classes; median of {s.steps} timed steps after {s.warmup} warm-up steps; each method "
        f"built through the same Distiller/term.setup path as training (CRD/WCoRD: N={s.num_samples:,}, K=16,384). "
        "A step = teacher no-grad forward + student forward + loss terms + backward + SGD step. "
        "The machine was shared with other jobs while this ran: absolute times are inflated and noisy, "
        "ratios come from the same run."
        + (
            ""
            if (s.steps, s.warmup) == (20, 3)
            else f" **Deviation:** {s.steps} timed steps after {s.warmup} warm-up instead of the protocol's 20 after "
            "3, to fit the run into the time available on the loaded machine; medians of so few steps are "
            "noisier."
        )
        + "\n"
    )


def _step_section(res: dict) -> list[str]:
    """Each method's step time against its interleaved lower bound, and the project's targets."""
    b = res["bound"]
    lines = [
        "## Training step\n",
        "Each method's step is timed interleaved with its own lower bound (student CE-only step + "
        "teacher no-grad forward), one of each in turn, so both see the same machine load; ratio = "
        "median step / (median CE step + median teacher forward). Median bound over the methods: "
        f"{1e3 * b['student_ce_step']:.0f} + {1e3 * b['teacher_forward']:.0f} = "
        f"**{1e3 * b['lower_bound']:.0f} ms** (per-method bounds ranged {1e3 * b['min']:.0f}-"
        f"{1e3 * b['max']:.0f} ms as the load changed). FLOP ratio: the step's matrix-multiply and "
        "convolution FLOPs (forward and backward, torch.utils.flop_counter) over the bound's, i.e. the ratio "
        "the method's own arithmetic sets before any overhead; a time ratio near it is limited by that "
        "arithmetic, one well above it by overhead (elementwise work, memory traffic, Python).\n",
        "| method | step ms | its bound ms | ratio | FLOP ratio | target | met |",
        "|---|---:|---:|---:|---:|---:|:-:|",
    ]
    for r in res["rows"]:
        target = "n/a" if r["target"] is None else f"<= {r['target']:.2f}"
        met = "n/a" if r["met"] is None else "yes" if r["met"] else "NO"
        lines.append(
            f"| {LABELS.get(r['method'], r['method'])} | {1e3 * r['step_s']:.0f} | {1e3 * r['bound_s']:.0f} | "
            f"{r['ratio']:.2f} | {r['flop_ratio']:.3f} | {target} | {met} |"
        )
    return lines + [
        "",
        "AB and FSP train their connectors / the student in an init stage; their main stage is CE only, "
        "so their step is the bound plus the zero term.\n",
    ]


def _kernel_section(kernels: list[dict]) -> list[str]:
    """Each kernel implementation's time, peak memory and value, then ours against the baseline."""
    lines = [
        "## Kernels\n",
        "Time: median ms per call. The WKD-L, LCKT and CRD pairs (ours beside the baseline) are timed "
        "interleaved, so both see the same machine load, for at least 1 s: millisecond kernels in blocks of "
        "4 calls whose first call is not timed (warm caches after the other kernel), kernels of a second "
        "or more one call at a time. "
        "Peak memory: torch.profiler(profile_memory=True) allocator events of the call (allocations minus "
        "frees, running sum in time order, maximum), tensors only; NumPy (POT) memory is not visible to it "
        "and is shown as n/a. Values: the loss each implementation returns (pairs must agree).\n",
        "| kernel | shape | implementation | ms | peak MB | value |",
        "|---|---|---|---:|---:|---:|",
    ]
    for k in kernels:
        mem = "n/a" if k["impl"].startswith(NUMPY_IMPLS) else f"{k['peak_mb']:.2f}"
        lines.append(f"| {k['kernel']} | {k['shape']} | {k['impl']} | {k['ms']:.2f} | {mem} | {k['value']:.6g} |")
    lines += [
        "",
        "Speed-up = baseline ms / ours ms; memory saving = baseline peak / ours peak (> 1: ours is better).\n",
        "| ours vs baseline | speed-up | memory saving |",
        "|---|---:|---:|",
    ]
    for a, b2 in _pairs(kernels):
        mem = "n/a" if b2["impl"].startswith(NUMPY_IMPLS) else f"{b2['peak_mb'] / max(a['peak_mb'], 1e-9):.1f}x"
        lines.append(f"| {a['kernel']} {a['shape']}: {a['impl']} vs {b2['impl']} | {b2['ms'] / a['ms']:.2f}x | {mem} |")
    return lines


def _data_section(res: dict) -> list[str]:
    """Augmentation throughput and its share of a training step (CIFAR, and ImageNet when measured)."""
    aug = res["augment"]
    lines = [
        "",
        "## Data\n",
        f"Augmentation (crop pad 4 + flip + normalise, uint8 64x3x32x32 batches, CPU): "
        f"**{aug['images_per_s']:,.0f} images/s** ({1e3 * aug['batch_s']:.2f} ms per batch) = "
        f"{100 * aug['share']:.2f}% of the lower-bound step.\n",
    ]
    a = res.get("augment_imagenet")
    if a:
        lines += [
            f"ImageNet augmentation (RandomResizedCrop + flip + normalise, {a['shape']}, CPU): "
            f"**{a['images_per_s']:,.0f} images/s** ({1e3 * a['batch_s']:.1f} ms per batch) = "
            f"{100 * a['share']:.2f}% of a {a['model']} CE training step on that batch "
            f"({1e3 * a['step_s']:.0f} ms, same run).\n"
        ]
    return lines


def speed_csv(res: dict) -> str:
    buf = io.StringIO()
    buf.write("".join(f"# {k}: {v}\n" for k, v in res["stamp"].items()))
    w = csv.writer(buf)
    w.writerow(["section", "name", "shape", "impl", "ms", "peak_mb", "value_or_ratio"])
    b = res["bound"]
    for key in ("student_ce_step", "teacher_forward", "lower_bound"):
        w.writerow(["step", f"median {key}", "", "", f"{1e3 * b[key]:.3f}", "", ""])
    for r in res["rows"]:
        w.writerow(["step", r["method"], "", "method step", f"{1e3 * r['step_s']:.3f}", "", f"{r['ratio']:.4f}"])
        w.writerow(["step", r["method"], "", "its bound", f"{1e3 * r['bound_s']:.3f}", "", ""])
        w.writerow(["step", r["method"], "", "FLOP ratio", "", "", f"{r['flop_ratio']:.4f}"])
    for k in res["kernels"]:
        mem = "" if k["impl"].startswith(NUMPY_IMPLS) else f"{k['peak_mb']:.3f}"
        w.writerow(["kernel", k["kernel"], k["shape"], k["impl"], f"{k['ms']:.3f}", mem, f"{k['value']:.6g}"])
    a = res["augment"]
    if a is None:
        return buf.getvalue()
    w.writerow(
        [
            "data",
            "augment",
            "64x3x32x32 uint8",
            "crop+flip+normalise",
            f"{1e3 * a['batch_s']:.4f}",
            "",
            f"{a['images_per_s']:.0f}",
        ]
    )
    a = res.get("augment_imagenet")
    if a:
        w.writerow(
            [
                "data",
                "augment_imagenet",
                a["shape"],
                "rrc+flip+normalise",
                f"{1e3 * a['batch_s']:.4f}",
                "",
                f"{a['images_per_s']:.0f}",
            ]
        )
        w.writerow(
            [
                "data",
                f"{a['model']} ce step",
                a["shape"],
                "share of step",
                f"{1e3 * a['step_s']:.3f}",
                "",
                f"{a['share']:.4f}",
            ]
        )
    return buf.getvalue()
