"""The detection task's configuration (task: detection): what it refuses when the config is checked,
the COCO presets, the detection recipes, and the pieces of the detection engine that need neither
torchvision nor pycocotools (so these run in the main suite; the detectors, data and terms on real
detection outputs: tests/test_detection_engine.py, in the tv venv)."""
import pytest
import torch
import yaml

from wdistill.cli import main as cli_main
from wdistill.config import load_config
from wdistill.config.presets import list_presets
from wdistill.engine.build import check_config
from wdistill.engine.det_trainer import warmup_factor
from wdistill.errors import ConfigError
from wdistill.losses import get
from wdistill.losses.fitnet import _same_size
from wdistill.losses.recipes import detection_recipe, detection_rows

DET = {"task": "detection", "data": {"name": "coco", "root": "/nowhere"},
       "student": {"model": "detection:resnet18"}, "loss": [{"name": "det"}]}


def _cfg(**changes):
    raw = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v) for k, v in DET.items()}
    raw.update(changes)
    return raw


@pytest.mark.parametrize("changes, needle", [
    ({"loss": [{"name": "det"}, {"name": "crd"}]}, "loss term 'crd' (crd) cannot apply to detection"),
    ({"loss": [{"name": "ce"}]}, "terms for detection: det, dkd, fitnet, kd, wkd_f, wkd_l"),
    ({"data": {"name": "fashion_mnist"}}, "data.name=fashion_mnist with task=detection"),
    ({"student": {"model": "resnet8"}}, "student.model=resnet8 with task=detection"),
    ({"data": {"name": "coco", "root": "/x", "crop_padding": 4}}, "data.crop_padding is not used by detection"),
    ({"teachers": [{"model": "detection:resnet50"}, {"model": "detection:resnet50"}]}, "from one teacher"),
])
def test_what_detection_cannot_honour_is_refused_when_the_config_is_read(changes, needle):
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(**changes))
    assert needle in str(e.value)


def test_the_gpu_speed_settings_are_accepted_for_detection():
    cfg = load_config(_cfg(train={"channels_last": True, "compile": True, "sync_bn": True}))
    assert cfg.train.channels_last and cfg.train.compile and cfg.train.sync_bn


def test_a_detection_term_or_model_in_a_classification_run_is_refused():
    with pytest.raises(ConfigError, match="loss term 'det' \\(det\\) cannot apply to classification"):
        load_config({"student": {"model": "resnet8"}, "loss": [{"name": "det"}]})
    with pytest.raises(ConfigError, match="student.model=detection:resnet18 with task=classification"):
        load_config({"student": {"model": "detection:resnet18"}})
    with pytest.raises(ConfigError, match="data.name=coco with task=classification"):
        load_config({"student": {"model": "resnet8"}, "data": {"name": "coco", "root": "/x"}})


def test_config_check_refuses_a_term_that_cannot_apply_to_detection(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_cfg(loss=[{"name": "det"}, {"name": "vid"}])))
    assert cli_main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "loss term 'vid' (vid) cannot apply to detection" in err and "Traceback" not in err
    good = tmp_path / "good.yaml"
    (tmp_path / "teacher.pt").write_bytes(b"")  # config check looks for the file, it does not read it
    teacher = {"model": "detection:resnet50", "checkpoint": str(tmp_path / "teacher.pt")}
    good.write_text(yaml.safe_dump(_cfg(loss=[{"name": "det"}, {"name": "kd", "T": 1}], teacher=teacher)))
    assert cli_main(["config", "check", str(good)]) == 0
    assert "task" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="detection:<backbone> with backbone one of resnet18"):
        check_config(load_config(_cfg(student={"model": "detection:resnet19"})))


def test_terms_declare_their_tasks():
    both = {"kd", "dkd", "fitnet", "wkd_l", "wkd_f"}
    for name in both:
        assert get(name).tasks == ("classification", "detection"), name
    assert get("det").tasks == ("detection",) and get("det").supervised and not get("det").requires_teacher
    assert get("ce").tasks == ("classification",) and get("ce").supervised
    assert all(get(n).tasks == ("classification",) for n in ("crd", "vid", "at", "wcord", "rkd"))


def test_detection_recipes_follow_the_published_dkd_setting_and_start_from_det():
    assert [p.method for p in detection_rows()] == ["vanilla", "kd", "dkd", "fitnet", "wkd_l", "wkd_f", "wkd_lf"]
    for p in detection_rows():
        assert p.terms[0] == {"name": "det", "weight": 1.0}
    dkd = detection_recipe("dkd")[1]  # mdistiller detection/model/config.py: ALPHA 1, BETA 0.25, T 1
    assert (dkd["alpha"], dkd["beta"], dkd["T"], dkd["warmup"], dkd["weight"]) == (1.0, 0.25, 1.0, 0, 1.0)
    lf = detection_recipe("wkd_lf")
    assert lf[1] == detection_recipe("wkd_l")[1] and lf[2] == detection_recipe("wkd_f")[1]
    assert detection_recipe("wkd_f")[1]["projector"] == "conv" and detection_recipe("wkd_f")[1]["grid"] == 1


PAIRS = {"resnet101-resnet18": ("resnet101", "resnet18"), "resnet101-resnet50": ("resnet101", "resnet50"),
         "resnet50-mobilenet_v3_large": ("resnet50", "mobilenet_v3_large")}


def test_coco_presets_hold_the_recipe_of_every_row_for_the_three_pairs():
    names = [n for n in list_presets() if n.startswith("coco/") and not n.startswith("coco/models/")]
    assert sorted(names) == sorted(f"coco/{pair}/{p.method}" for pair in PAIRS for p in detection_rows())
    teachers = {n for n in list_presets() if n.startswith("coco/models/")}
    assert teachers == {"coco/models/resnet101", "coco/models/resnet50"}
    for name in names:
        cfg = load_config(name)
        _, pair, method = name.split("/")
        teacher, student = PAIRS[pair]
        assert cfg.task == "detection" and cfg.student.model == f"detection:{student}"
        # mdistiller's schedule: 180k iterations of batch 8 (12.2 COCO epochs), lr 0.01, x0.1 at 120k and 160k
        assert (cfg.data.batch_size, cfg.optim.lr, cfg.optim.epochs, cfg.optim.milestones) == (8, 0.01, 12, [8, 11])
        assert cfg.data.options["train_split"] == "train2017" and cfg.data.options["eval_split"] == "val2017"
        terms = [t.model_dump(exclude={"id"}) for t in cfg.loss]
        for got, want in zip(terms, detection_recipe(method)):
            assert {k: got[k] for k in want} == want, name
        if method != "vanilla":  # the teacher is the coco/models/<teacher> preset's run
            assert cfg.teacher.model == f"detection:{teacher}"
            assert cfg.teacher.checkpoint == load_config(f"coco/models/{teacher}").run.out_dir + \
                f"/coco/models/{teacher}/student.pt"


def test_warmup_is_linear_from_the_factor_to_one():
    assert warmup_factor(0, 100, 0.001) == pytest.approx(0.001)
    assert warmup_factor(50, 100, 0.001) == pytest.approx(0.001 * 0.5 + 0.5)
    assert warmup_factor(100, 100, 0.001) == warmup_factor(10_000, 100, 0.001) == 1.0


def test_fitnet_pairs_fpn_levels_of_the_same_size():
    t = [torch.zeros(1, 256, s, s) for s in (24, 12, 6, 3)]  # strides 4, 8, 16, 32
    same = [torch.zeros(1, 256, s, s) for s in (24, 12, 6, 3)]
    assert [_same_size(same, t, i) for i in range(4)] == [0, 1, 2, 3]
    coarse = [torch.zeros(1, 256, s, s) for s in (12, 6, 3, 3)]  # MobileNetV3-FPN at strides 8, 16, 32, 32
    assert [_same_size(coarse, t, i) for i in range(4)] == [1, 2, 3, 3]
    with pytest.raises(ConfigError, match="no teacher level has that size"):
        _same_size([torch.zeros(1, 256, 5, 5)], t, 0)
