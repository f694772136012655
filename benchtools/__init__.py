"""The project's benchmarks and their tooling, kept beside the package and not installed with it
(run them from a checkout: ``python -m benchtools --help``; protocols: docs/benchmarks.md).

- ``accuracy`` / ``tuning`` / ``protocol``: FMNIST-KD v1 (protocol A) and its tuning budget;
- ``settings``: ensembles, privileged information, cross-modal, self-distillation (protocol C);
- ``detection`` / ``det_protocol`` / ``det_report`` / ``det_diagnostics`` / ``det_merge``: FMNIST-Det (protocol D);
- ``auto``: ``wdistill auto`` on held-out data (protocol E); ``gpu`` / ``gpu_report``: the GPU check;
- ``runs``: a run as the tables read it (finished, diverged, or not run);
- ``speed`` / ``speed_report`` / ``kernels`` / ``measure``: step times, OT kernels beside a
  straightforward formulation and POT, CRD scoring, augmentation throughput (protocol B);
- ``diagnostics``: CRD's class-correlation difference and WKD-L's cost heatmaps;
- ``targets``: the issue targets the results are checked against; ``stamp``: the git commit;
- ``teacher_agreement``, ``gradient_probe``, ``full_schedule_probe``, ``step_trace``: investigations quoted in
  the results' notes.
"""
