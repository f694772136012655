"""Project tooling of the wdistill benchmarks, kept beside the package and not installed with it.

- ``kernels``: OT kernels beside a straightforward formulation and POT, CRD scoring, augmentation
  throughput (the kernel section of `wdistill bench speed`);
- ``targets``: the issue targets the benchmark results are checked against (step-time ratios,
  kernel speed-ups, the FMNIST-KD v1 reference numbers);
- ``stamp``: the git commit a result was produced from.

`wdistill bench ...` imports these when run from a checkout (``benchtools.tooling``) and says
how to get them when they are missing.
"""
