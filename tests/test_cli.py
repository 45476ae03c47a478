"""The effpose console script, run as a user runs it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from effpose.assets import DEFAULT_PERSON_DETECTOR
from effpose.cli import build_parser, main
from effpose.cli.training import detector_config, search_config, train_config
from effpose.detectors import OnnxDetector
from effpose.runtime import PoseEstimator

EFFPOSE = shutil.which("effpose", path=str(Path(sys.executable).parent)) or "effpose"
REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EFFPOSE, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_info_prints_spec_counts() -> None:
    result = run("info", "--arch", "A", "--input", "256x256", "--joints", "16")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["params"] == 1_299_360
    assert abs(info["macs"] / 0.542e9 - 1) < 0.01
    assert info["input"] == {"height": 256, "width": 256}


def test_info_rejects_bad_input_size() -> None:
    result = run("info", "--input", "250x-3")
    assert result.returncode == 2 and "multiples of 32" in result.stderr


@pytest.mark.slow
def test_export_needs_weights(tmp_path) -> None:
    result = run("export", "--out", str(tmp_path / "x.onnx"))
    assert result.returncode == 2 and "--checkpoint" in result.stderr


@pytest.mark.slow
def test_export_checkpoint(tmp_path, random_model_a) -> None:
    from effpose.model import save_checkpoint

    save_checkpoint(random_model_a, tmp_path / "a.pt")
    result = run("export", "--arch", "A", "--checkpoint", str(tmp_path / "a.pt"), "--out", str(tmp_path / "a.onnx"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["weights"] == "trained" and report["parity_max_abs_diff"] < 1e-4
    assert report["input_size"] == [192, 256]  # no training size recorded: the default
    save_checkpoint(random_model_a, tmp_path / "b.pt", train_config={"input_size": [96, 128]})
    trained_small = run("export", "--checkpoint", str(tmp_path / "b.pt"), "--out", str(tmp_path / "b.onnx"))
    assert trained_small.returncode == 0, trained_small.stderr
    assert json.loads(trained_small.stdout)["input_size"] == [96, 128]  # the size it was trained at
    assert PoseEstimator(tmp_path / "b.onnx").info.input_size == (96, 128)
    wrong_arch = run("export", "--arch", "C", "--checkpoint", str(tmp_path / "a.pt"), "--out", str(tmp_path / "c.onnx"))
    assert wrong_arch.returncode == 2 and "holds" in wrong_arch.stderr


@pytest.mark.slow
def test_export_ships_a_resume_points_moving_average(tmp_path, random_model_a, randomized) -> None:
    """A resume point holds the raw weights and their moving average: export ships the average (what training
    validated) and says so; --raw-weights ships the raw ones; a checkpoint without an average exports as it is."""
    import onnxruntime as ort
    import torch

    from effpose.model import build_model, save_checkpoint

    torch.manual_seed(1)
    average = randomized(build_model("A"))
    ema = {"n_averaged": torch.tensor(7), **{f"module.{name}": value for name, value in average.state_dict().items()}}
    save_checkpoint(random_model_a, tmp_path / "last.pt", ema=ema)
    image = torch.rand(1, 3, 256, 192)
    for options, model, flag in (([], average, True), (["--raw-weights"], random_model_a, False)):
        result = run("export", "--checkpoint", str(tmp_path / "last.pt"), "--out", str(tmp_path / "x.onnx"), *options)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["moving_average"] is flag
        session = ort.InferenceSession(str(tmp_path / "x.onnx"), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            expected = model(image).numpy()
        np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: image.numpy()})[0], expected,
                                   atol=1e-4)
    save_checkpoint(random_model_a, tmp_path / "plain.pt")
    plain = run("export", "--checkpoint", str(tmp_path / "plain.pt"), "--out", str(tmp_path / "p.onnx"))
    assert plain.returncode == 0 and json.loads(plain.stdout)["moving_average"] is False


def test_predict_on_a_real_photo(tmp_path, random_onnx_a, coco_val_person) -> None:
    image_path, box = coco_val_person
    drawn = tmp_path / "drawn.png"
    result = run("predict", str(image_path), "--model", str(random_onnx_a), "--box", ",".join(map(str, box)),
                 "--out", str(drawn), "--json", "--keypoint-threshold", "0")
    assert result.returncode == 0, result.stderr
    assert "random-init" in result.stderr  # an untrained model is never silent about it
    output = json.loads(result.stdout)
    image = cv2.imread(str(image_path))
    assert (output["width"], output["height"]) == (image.shape[1], image.shape[0])
    [person] = output["persons"]
    assert person["source"] == "client" and len(person["keypoints"]) == 17
    assert person["box"] == pytest.approx(box, abs=0.01)
    written = cv2.imread(str(drawn))
    assert written.shape == image.shape and np.any(written != image)


@pytest.mark.slow
@pytest.mark.data
def test_predict_finds_the_people_with_the_shipped_detector(data_dir, random_onnx_a) -> None:
    photo = data_dir / "coco/images/000000001000.jpg"  # a team photo
    result = run("predict", str(photo), "--model", str(random_onnx_a), "--json")
    assert result.returncode == 0, result.stderr
    persons = json.loads(result.stdout)["persons"]
    assert len(persons) >= 3 and {p["source"] for p in persons} == {"detector"}
    calibrated = OnnxDetector(DEFAULT_PERSON_DETECTOR).default_threshold  # the model's, not a fixed 0.4
    assert all(calibrated <= p["box_score"] <= 1 for p in persons)
    capped = run("predict", str(photo), "--model", str(random_onnx_a), "--max-persons", "2", "--json")
    assert len(json.loads(capped.stdout)["persons"]) == 2


@pytest.mark.slow
def test_predict_whole_image_and_errors(tmp_path, random_onnx_a) -> None:
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), np.full((120, 90, 3), 128, np.uint8))
    whole = run("predict", str(photo), "--model", str(random_onnx_a), "--whole-image", "--json")
    assert whole.returncode == 0, whole.stderr
    [person] = json.loads(whole.stdout)["persons"]
    assert person["box"] == [0, 0, 90, 120] and person["source"] == "whole_image"

    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    result = run("predict", str(not_image), "--model", str(random_onnx_a))
    assert result.returncode == 2 and "cannot read" in result.stderr
    bad_box = run("predict", str(photo), "--model", str(random_onnx_a), "--box", "50,50,10,10")
    assert bad_box.returncode == 2 and "error" in bad_box.stderr
    garbled = run("predict", str(photo), "--model", str(random_onnx_a), "--box", "1,2,3")
    assert garbled.returncode == 2
    no_model = run("predict", str(photo), "--model", str(tmp_path / "none.onnx"))
    assert no_model.returncode == 2 and "not found" in no_model.stderr


# The per-field flags the training commands had before ``--cfg-options`` took their place.
REMOVED_FLAGS = {
    "train": ["--epochs 3", "--batch-size 8", "--lr 0.1", "--workers 0", "--samples-per-epoch 8", "--seed 1",
              "--max-steps-per-epoch 2", "--arch B", "--genotype g.json", "--init scratch", "--init-checkpoint a.pt",
              "--input 128x96", "--precise-bn-batches 10", "--weight-decay 0", "--pseudo-weight 0", "--sic",
              "--no-sic"],
    "train-detector": ["--epochs 3", "--batch-size 8", "--arch B", "--init scratch", "--input 256"],
    "search": ["--epochs 3", "--workers 0", "--space A", "--cost macs", "--lut t.json", "--target-cost 5",
               "--lambda 0.1", "--input 128x96", "--warmup-epochs 1", "--arch-lr 0.05", "--init lite0"],
}


@pytest.mark.parametrize(("command", "flag"), [(c, f) for c, flags in REMOVED_FLAGS.items() for f in flags])
def test_training_commands_refuse_the_per_field_flags(command: str, flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([command, *flag.split()])
    assert exited.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_python_m_effpose_cli_runs_the_command_line() -> None:
    result = subprocess.run([sys.executable, "-m", "effpose.cli", "train", "--epochs", "3"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "unrecognized arguments: --epochs 3" in result.stderr


def test_cfg_options_reach_the_training_configs() -> None:
    args = build_parser().parse_args([
        "train", "--out-dir", "runs/x", "--cfg-options", "input_size=[96,128]", "arch=runs/s/genotype.json",
        "sic=false", "epochs=3", "lr=5e-4", "init_checkpoint=runs/a/last.pt", "--resume", "runs/x/last.pt",
        "--stop-after", "2m", "--cfg-options", "epochs=4", "out_dir=runs/y"])  # repeatable: a later KEY wins
    assert (args.resume, args.stop_after) == (Path("runs/x/last.pt"), 120.0)
    config = train_config(args)
    assert config.input_size == (96, 128) and config.arch == "runs/s/genotype.json" and config.sic is False
    assert (config.epochs, config.lr, config.init_checkpoint, config.out_dir) == (4, 5e-4, "runs/a/last.pt", "runs/y")
    assert config.batch_size == 32 and config.init == "scratch"  # the defaults, without --config

    detector = detector_config(build_parser().parse_args(
        ["train-detector", "--config", str(REPO / "configs/person_detector.json"), "--out-dir", "runs/d",
         "--cfg-options", "input_size=256", "init=scratch", "augment={\"mosaic_prob\": 0}"]))
    assert (detector.input_size, detector.init, detector.out_dir) == (256, "scratch", "runs/d")
    assert detector.augment.mosaic_prob == 0  # a nested field: the JSON object replaces the whole augment

    search = search_config(build_parser().parse_args(
        ["search", "--config", str(REPO / "configs/campaign_a_128x96.json"), "--cfg-options", "cost=latency",
         "lut=t.json", "cost_lambda=0.1", "target_cost=5", "input_size=[64,64]", "warmup_epochs=1", "space=large"]))
    assert (search.cost, search.lut, search.cost_lambda, search.target_cost) == ("latency", "t.json", 0.1, 5)
    assert search.input_size == (64, 64) and (search.warmup_epochs, search.space) == (1, "large")
    assert search.sigma == 3.0 and search.augment == "light"  # the rest of the data settings: the training config's


def test_unknown_cfg_options_are_a_clear_error(capsys) -> None:
    assert main(["train", "--cfg-options", "learning_rate=0.1"]) == 2
    assert "unknown training config keys: ['learning_rate']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--cfg-options", "epochs"])  # not KEY=VALUE
