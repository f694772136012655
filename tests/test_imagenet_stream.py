"""The ImageNet resnet34 -> resnet18 preset, end to end on a generated folder of real JPEG files,
through the streaming DataLoader path (a few steps, then evaluation)."""
from __future__ import annotations

import json

import torch

from wdistill import cli, models
from wdistill.data.synthetic import make_image_folder


def test_imagenet_r34_r18_preset_streams_a_jpeg_folder(tmp_path, capsys):
    root = make_image_folder(tmp_path / "imagenet", 6, classes=4, size=(96, 80), seed=1)  # 24 train, 8 val JPEGs
    torch.manual_seed(0)
    teacher = tmp_path / "resnet34.pth"
    torch.save(models.create("resnet34", num_classes=4).state_dict(), teacher)
    argv = ["distill", "configs/imagenet/resnet34-resnet18/wkd_lf.yaml", f"data.root={root}",
            f"teacher.checkpoint={teacher}", f"run.out_dir={tmp_path / 'runs'}", "run.device=cpu",
            "data.loader=stream", "data.workers=1", "data.batch_size=8", "data.eval_batch_size=8",
            "data.random_resized_crop=64", "data.options.size=72", "optim.epochs=1", "train.progress=false",
            "loss.2.grid=1"]  # 64 px images give 2x2 final feature maps
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "stream path (data.loader=stream): torch DataLoader, 1 worker" in out
    assert "augmentation: RandomResizedCrop 64" in out and "horizontal flip" in out
    run = tmp_path / "runs" / "imagenet" / "resnet34-resnet18" / "wkd_lf"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 1 and 0 <= summary["final_top1"] <= 100 and summary["teacher_top1"] is not None
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "test_top1" in rows[0] and "train_wkd_l" in rows[0]
    student = torch.load(run / "student.pt", weights_only=True)
    assert student["num_classes"] == 4 and student["model"]["fc.weight"].shape == (4, 512)
