"""Detection transforms (wdistill.data.det_transforms): boxes move with the pixels. Torch only, so
they run in the main suite."""
import torch

from wdistill.data.det_transforms import Compose, RandomHorizontalFlip, Resize, detection_transforms


def test_flip_and_resize_move_boxes_with_the_pixels():
    image = torch.zeros(3, 20, 30)
    image[:, 4:9, 2:12] = 1.0  # rows 4..8, columns 2..11: box (2, 4, 12, 9)
    target = {"boxes": torch.tensor([[2.0, 4.0, 12.0, 9.0]]), "labels": torch.tensor([1])}
    flipped, t = RandomHorizontalFlip(p=1.0)(image, target)
    rows, cols = flipped[0].nonzero(as_tuple=True)
    assert t["boxes"].tolist() == [[float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]]
    resized, t = Resize((40, 90))(image, target)  # factors 3 across, 2 down
    assert resized.shape == (3, 40, 90) and t["boxes"].tolist() == [[6.0, 8.0, 36.0, 18.0]]
    assert Resize(10, max_size=12)(image, target)[0].shape == (3, 8, 12)  # short side 10 would make 15 > 12


def test_pipeline_flips_only_in_training():
    train, test = detection_transforms(True, size=(40, 90)), detection_transforms(False, size=(40, 90))
    assert isinstance(train.transforms[-1], RandomHorizontalFlip) and len(test.transforms) == 1
    assert isinstance(Compose([]), Compose) and Compose([])(1, 2) == (1, 2)
