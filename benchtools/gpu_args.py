"""``python -m benchtools gpu``'s options (issue 26), beside the command in ``benchtools/__main__.py``."""
from __future__ import annotations


def add_gpu_parser(bs, func) -> None:
    g = bs.add_parser("gpu", help="issue 26: parity of every method on the device, host syncs, step times against "
                                  "their bound, the WKD-L kernel; benchmarks/gpu.md (--device cpu --quick: the test)")
    g.add_argument("--device", default="cuda")
    g.add_argument("--quick", action="store_true", help="small shapes and three methods (the CPU test)")
    g.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--warmup", type=int, default=10)
    g.add_argument("--compile", action="store_true",
                   help="also time the torch.compile'd WKD-L kernel, and KD's step with the student compiled as "
                   "train.compile does")
    g.add_argument("--ddp", action="store_true", help="also a one-process torchrun through DDP (NCCL on a GPU)")
    g.add_argument("--e2e", action="store_true", help="also the FMNIST-KD v1 teacher and 4 students on the device")
    g.add_argument("--official", metavar="PATH", default=None,
                   help="a checkout of the official WKD repository: also its step (KD, DKD, WKD-L, WKD-F) and a "
                        "CIFAR-100 WKD-L epoch side by side with ours (the epoch needs torchvision)")
    g.add_argument("--official-workers", type=int, default=8, help="DataLoader workers of the official epoch")
    g.add_argument("--detection", action="store_true", help="also protocol D's detectors, small, on the device: every "
                                                            "row's step time and a finite run (needs torchvision, "
                                                            "pycocotools and Fashion-MNIST)")
    g.add_argument("--out", default="benchmarks")
    g.add_argument("--resume", metavar="DIR", default=None,
                   help="a folder holding an earlier run's gpu.json (same options, same kind of device): keep what "
                        "it measured, run what is missing or failed")
    g.add_argument("--budget-s", type=float, default=None,
                   help="start nothing new after this many seconds; what is left is listed as pending (exit status "
                        "3) for --resume")
    g.add_argument("--threads", type=int, default=None)
    g.set_defaults(func=func)
