"""The ``data:`` section of a run config: which data set, its batches, augmentation and loading."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from wdistill.data.registry import DATASETS
from wdistill.data.registry import options as dataset_options


class Strict(BaseModel):
    """A config section: an unknown key is an error naming the valid ones."""

    model_config = ConfigDict(extra="forbid")


class DataSection(Strict):
    name: str = Field("fmnist_sample", description="Data set: one of `wdistill list` (fmnist_sample is the "
                      "Fashion-MNIST sample bundled in the package), image_folder, or python (with factory).")
    root: str | None = Field(None, description="Directory (or archive) of the data set; not needed for "
                             "fmnist_sample.")
    train_subset: int | None = Field(None, gt=0, description="Keep only the first N training images.")
    test_subset: int | None = Field(None, gt=0, description="Keep only the first N test images.")
    batch_size: int = Field(64, gt=0, description="Global batch of one optimiser step: under torchrun each of N "
                            "processes takes batch_size / N rows (it must divide).")
    eval_batch_size: int = Field(256, gt=0, description="Batch size of evaluation and of statistics passes "
                                 "(e.g. the WKD-L cost), split over processes.")
    crop_padding: int | None = Field(None, ge=0, description="Training augmentation: pad by this many pixels, then "
                                     "random crop back to size (0: no crop). None: the data set's own recipe "
                                     "(the run log states it).")
    flip: bool | None = Field(None, description="Training augmentation: random horizontal flip. None: the data "
                              "set's own recipe.")
    random_resized_crop: int | None = Field(None, gt=0, description="ImageNet recipe: RandomResizedCrop to "
                                            "this size in training, centre crop in evaluation (needs "
                                            "crop_padding: 0; store or resize the images larger, e.g. "
                                            "options.size 256 with 224 here).")
    rrc_scale: tuple[float, float] = Field((0.08, 1.0), description="RandomResizedCrop area range.")
    rrc_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop aspect-ratio range.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options of the data set's loader "
                                    "(`wdistill list` shows each data set's), e.g. {protocol: kd_v1}.")
    loader: Literal["auto", "memory", "stream"] = Field(
        "auto", description="memory: uint8 tensors in RAM with batched augmentation (fast path); stream: "
        "DataLoader workers decode and crop; auto: memory when the decoded split fits in memory_limit_gb.")
    memory_limit_gb: float = Field(4.0, gt=0, description="auto loader: largest decoded data kept in memory.")
    workers: int | None = Field(None, ge=0, description="Streaming worker processes (None: the CPU cores, at "
                                "most 8, divided over processes).")
    prefetch_factor: int = Field(2, gt=0, description="Batches each streaming worker prepares ahead.")
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="An image that cannot be read (truncated, empty, not an image). error: stop, "
        "naming every bad file found so far (the in-memory path checks all before training; a streamed run "
        "writes last.pt first, so --resume continues after the fix). skip: use the next readable sample in its "
        "place (deterministic), count it (metrics: skipped_images) and name the file in the log. `wdistill data "
        "check CONFIG` lists every bad file in one pass.")
    factory: str | None = Field(None, description="name: python -- 'pkg.module:function' returning (train, test) "
                                "torch Datasets of (image, target).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the factory.")
    num_classes: int | None = Field(None, gt=0, description="Class count of a user Dataset that has no "
                                    "`classes` or `targets`.")
    holdout: float | None = Field(None, gt=0, lt=1, description="Hold out this fraction of the training split "
                                  "(stratified by class, seed holdout_seed) and evaluate on it instead of the test "
                                  "split: model selection that never sees the test images (`wdistill auto`).")
    holdout_seed: int = Field(0, ge=0, description="Seed of the data.holdout draw.")
    mean: tuple[float, ...] | None = Field(None, description="User data: per-channel mean of uint8/PIL images, "
                                           "in [0, 1] units (give std too).")
    std: tuple[float, ...] | None = Field(None, description="User data: per-channel std, in [0, 1] units.")

    @model_validator(mode="after")
    def _one_crop(self):
        if self.random_resized_crop is not None and self.crop_padding:
            raise ValueError(f"data.crop_padding={self.crop_padding} and data.random_resized_crop="
                             f"{self.random_resized_crop} both crop: set data.crop_padding: 0 for the ImageNet recipe")
        if self.factory is not None and self.name != "python":
            raise ValueError(f"data.factory is for data.name: python (got name {self.name!r})")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give data.mean and data.std together (per-channel values in [0, 1] units)")
        return self

    @model_validator(mode="after")
    def _options_fit_the_data_set(self):
        # Checked here, before any work: a preset written for one data set (configs/fmnist/* set
        # protocol/quick/eval_split) must not fail deep inside the loader when data.name changes.
        if self.name not in DATASETS and self.name != "python":
            raise ValueError(f"unknown data set {self.name!r}; available: {', '.join(sorted(DATASETS))}, or python "
                             "(a user factory); `wdistill list` shows their options")
        if self.name in DATASETS:
            unknown = sorted(set(self.options) - set(dataset_options(self.name)))
            if unknown:
                raise ValueError(
                    f"data.options sets {', '.join(unknown)}, which data set {self.name!r} does not take (its "
                    f"options: {', '.join(dataset_options(self.name)) or 'none'}). They come from the config file, "
                    f"which was written for another data set: delete them there, or override the whole mapping on the "
                    f"command line, e.g. data.options={{}}")
        return self

    def crop_kwargs(self) -> dict[str, Any]:
        """The resized-crop settings every BatchLoader of a run takes (eval loaders centre-crop)."""
        return dict(resized_crop=self.random_resized_crop, rrc_scale=self.rrc_scale, rrc_ratio=self.rrc_ratio)
