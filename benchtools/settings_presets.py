"""The example configs shipped with the package, wdistill/config/presets/fmnist/settings/*.yaml
(``configs/fmnist/settings``): seed 0 of a row of each setting of `python -m benchtools settings`,
in the benchmark's own run directories. ``python -m benchtools.settings_presets`` rewrites them;
tests/test_bench_settings.py checks that the shipped files are what it writes."""
from __future__ import annotations

import yaml

from benchtools import settings_spec as spec
from benchtools.runs import teacher_sections
from benchtools.settings import _section, _student, plan
from wdistill.config.presets import PRESETS_DIR
from wdistill.io import atomic_write_text

PRESETS = {  # file stem: (setting, row of the plan, what it is)
    "ensemble_kd": ("ensemble", "kd n=4", "KD from an ensemble of 4 resnet32 teachers (mean distribution)"),
    "ensemble_crd": (
        "ensemble",
        "crd n=4",
        "CRD from 4 resnet32 teachers (one memory bank and head per teacher, weighted 1/4)",
    ),
    "ensemble_wkd_l": (
        "ensemble",
        "wkd_l n=4",
        "WKD-L from 4 resnet32 teachers (mean distributions, mean of the teachers' CKA costs)",
    ),
    "privileged_crd": (
        "privileged",
        "crd",
        "privileged information: the teacher sees 28x28, the resnet8 student "
        "the same crop 2x average-pooled to 14x14; CRD",
    ),
    "privileged_wcord_kd": ("privileged", "wcord_kd", "privileged information (student on 14x14); WCoRD+KD"),
    "crossmodal_teacher": (
        "crossmodal",
        "teacher",
        "cross-modal: the resnet32 teacher trained on the lowpass view (5x5 box blur)",
    ),
    "crossmodal_crd": (
        "crossmodal",
        "crd",
        "cross-modal: lowpass teacher, highpass student (image minus the blur); CRD",
    ),
    "crossmodal_wcord": ("crossmodal", "wcord", "cross-modal: lowpass teacher, highpass student; WCoRD"),
    "selfdistill_teacher": (
        "selfdistill",
        "teacher (resnet8, CE)",
        "self-distillation: the resnet8 teacher, trained by cross-entropy on the student schedule (A's vanilla row)",
    ),
    "selfdistill_kd": ("selfdistill", "kd gen1", "self-distillation: born-again resnet8 generations by KD"),
    "selfdistill_wkd_l": ("selfdistill", "wkd_l gen1", "self-distillation: born-again resnet8 generations by WKD-L"),
}


def _how(row: str) -> str:
    """The command that runs a preset: teachers are trained, students distilled, chains generated."""
    if row.startswith("teacher"):
        return "wdistill train"
    return f"wdistill distill --generations {spec.GENERATIONS}" if row.endswith(" gen1") else "wdistill distill"


def preset_files() -> dict[str, str]:
    """{path under configs/: YAML text} of the shipped example configs, seed 0 of the benchmark's
    runs (same run directories, so `python -m benchtools settings` reuses what they train)."""
    files = {}
    jobs = {(s, row): cfg for s in spec.SETTINGS for row, seed, cfg in plan(s, [0]) if seed in (0, None)}
    for stem, (setting, row, what) in PRESETS.items():
        how = _how(row)
        if "--generations" in how:  # the chain's own config: generation 1's teacher, the base name
            m = row.split()[0]
            cfg = _student(m, 0, f"selfdistill/{m}/seed0", "runs/bench", None)
            cfg["teacher"] = _section(jobs[(setting, "teacher (resnet8, CE)")])
        else:
            cfg = jobs[(setting, row)]
        teachers = teacher_sections(cfg)
        header = [
            f"# FMNIST-KD v1, {what}.",
            "# An example config of docs/benchmarks.md, protocol C (`python -m benchtools settings --setting "
            f"{setting}` runs every row); written by benchtools.settings_presets.preset_files.",
            f"# Run: {how} configs/fmnist/settings/{stem}.yaml",
        ]
        if teachers:
            header.append(
                "# Needs the teacher checkpoint(s) "
                + ", ".join(t["checkpoint"] for t in teachers)
                + ": `python -m benchtools settings` (or `wdistill train` of the teacher's config) trains them."
            )
        files[f"fmnist/settings/{stem}.yaml"] = "\n".join(header) + "\n" + yaml.safe_dump(cfg, sort_keys=False)
    return files


if __name__ == "__main__":  # python -m benchtools.settings_presets: rewrite the shipped example configs
    for rel, text in preset_files().items():
        atomic_write_text(text, PRESETS_DIR / rel)
        print(f"wrote {PRESETS_DIR / rel}")
