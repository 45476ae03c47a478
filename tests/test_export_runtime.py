"""ONNX export parity and the ONNX Runtime estimator against the torch model on the same crops."""

import json
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
import torch

from effpose.contract import PoseContract
from effpose.export import check_parity, restate_contract
from effpose.keypoints import FLIP_PAIRS, KEYPOINT_NAMES
from effpose.onnx_session import resolve_providers
from effpose.pipeline import TopDownPipeline, person_score
from effpose.processing import decode_heatmaps, merge_flip
from effpose.runtime import PoseEstimator


@pytest.mark.slow
def test_export_parity_and_dynamic_batch(random_model_a, random_onnx_a) -> None:
    diff = check_parity(random_model_a, random_onnx_a, batch_sizes=(1, 3, 8))
    assert diff < 1e-4
    x = torch.randn(1, 3, 256, 192)
    with torch.no_grad():  # parity compares real signal: outputs are O(1) and depend on the input
        assert random_model_a(x).abs().max() > 0.05
        assert (random_model_a(x) - random_model_a(x.flip(-1))).abs().mean() > 1e-2


@pytest.mark.slow
def test_parity_check_catches_a_different_model(randomized, random_onnx_a) -> None:
    from effpose.model import build_model

    other = randomized(build_model("A"))
    with torch.no_grad():
        other.predictor.bias.add_(0.5)
    with pytest.raises(AssertionError, match="differs"):
        check_parity(other, random_onnx_a)


def test_export_metadata_describes_the_model(random_onnx_a) -> None:
    meta = {p.key: p.value for p in onnx.load(str(random_onnx_a)).metadata_props}
    assert meta["effpose.name"] == "efficientpose_a"
    assert meta["effpose.weights"] == "random-init"
    assert json.loads(meta["effpose.keypoint_names"]) == list(KEYPOINT_NAMES)
    estimator = PoseEstimator(random_onnx_a)
    assert estimator.info.input_size == (192, 256) and estimator.info.num_joints == 17


def test_the_contract_travels_in_the_metadata_and_is_what_the_runtime_uses(random_onnx_a, tmp_path) -> None:
    meta = {p.key: p.value for p in onnx.load(str(random_onnx_a)).metadata_props}
    contract = PoseEstimator(random_onnx_a).contract
    assert PoseContract.from_metadata(meta) == contract == PoseContract()
    assert {"effpose.stride", "effpose.padding", "effpose.flip_pairs", "effpose.decoder"} <= set(meta)
    assert [tuple(pair) for pair in json.loads(meta["effpose.flip_pairs"])] == list(FLIP_PAIRS)

    model = onnx.load(str(random_onnx_a))  # a file whose metadata says another padding: the runtime follows it
    for entry in model.metadata_props:
        if entry.key == "effpose.padding":
            entry.value = "1.5"
    onnx.save(model, str(tmp_path / "padded.onnx"))
    padded = TopDownPipeline(PoseEstimator(tmp_path / "padded.onnx"))
    plain = TopDownPipeline(PoseEstimator(random_onnx_a))
    box = [[100, 40, 300, 340]]
    wider, narrower = (pipeline.prepare(_photo(), box).matrices[0] for pipeline in (padded, plain))
    assert wider[0, 0] == pytest.approx(narrower[0, 0] * 1.25 / 1.5)  # a larger crop region: a smaller scale

    for entry in model.metadata_props:
        if entry.key == "effpose.input_size":
            entry.value = "[96, 128]"
    onnx.save(model, str(tmp_path / "contradicts.onnx"))
    with pytest.raises(ValueError, match="input size"):
        PoseEstimator(tmp_path / "contradicts.onnx")


def test_the_refinement_a_model_states_is_the_runtime_default(random_onnx_a, tmp_path) -> None:
    assert PoseEstimator(random_onnx_a).decode_method == "quarter"  # a file that states none: the default
    refined = tmp_path / "refined.onnx"
    refined.write_bytes(random_onnx_a.read_bytes())
    contract = restate_contract(refined, refinement="dark", dark_kernel=5)
    assert (contract.refinement, contract.dark_kernel) == ("dark", 5)
    estimator = PoseEstimator(refined)
    assert estimator.contract == contract and estimator.decode_method == "dark"
    np.testing.assert_array_equal(estimator.session.run(None, {"input": np.zeros((1, 3, 256, 192), np.float32)})[0],
                                  PoseEstimator(random_onnx_a).session.run(
                                      None, {"input": np.zeros((1, 3, 256, 192), np.float32)})[0])  # same weights
    heatmaps = np.random.default_rng(0).random((2, 17, 64, 48)).astype(np.float32)
    identity = np.tile(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (2, 1, 1))
    expected, _ = decode_heatmaps(heatmaps, "dark", dark_kernel=5)
    np.testing.assert_allclose(estimator.decode(heatmaps, identity)[..., :2], expected * 4, atol=1e-3)
    assert PoseEstimator(refined, decode="quarter").decode_method == "quarter"  # an explicit choice wins
    with pytest.raises(ValueError, match="dark_kernel"):
        restate_contract(refined, dark_kernel=4)
    with pytest.raises(ValueError, match="refinement"):
        PoseContract(refinement="argmax")


def test_pooled_images_give_what_each_image_gives_alone(random_onnx_a) -> None:
    pipeline = TopDownPipeline(PoseEstimator(random_onnx_a, decode="quarter"))
    image, mirror = _photo(), np.ascontiguousarray(_photo()[:, ::-1])
    boxes = ([[100, 40, 300, 340], [10, 20, 90, 200]], [], [[50, 50, 250, 300]])
    prepared = [pipeline.prepare(picture, some, flip=True) for picture, some in zip((image, image, mirror), boxes)]
    pooled = pipeline.run_pooled(prepared)
    assert [len(persons) for persons in pooled] == [2, 0, 1]
    for picture, some, persons in zip((image, image, mirror), boxes, pooled):
        alone = pipeline.estimate(picture, some, flip=True)
        np.testing.assert_allclose([p.keypoints for p in persons], [p.keypoints for p in alone], atol=1e-4)


def _photo() -> np.ndarray:
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 255, (360, 480, 3), dtype=np.uint8), (7, 7), 0)
    cv2.circle(image, (240, 150), 40, (255, 255, 255), -1)
    return image


def _peak_margin(heatmaps: np.ndarray) -> np.ndarray:
    """Per map: its maximum minus the largest value more than 2 px away from the argmax."""
    n, j, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, j, -1)
    peak = flat.argmax(-1)
    ys, xs = np.divmod(np.arange(h * w), w)
    far = (np.abs(ys[None, None] - (peak // w)[..., None]) > 2) | (np.abs(xs[None, None] - (peak % w)[..., None]) > 2)
    return flat.max(-1) - np.where(far, flat, -np.inf).max(-1)


@pytest.mark.slow
@pytest.mark.parametrize("flip", [False, True])
def test_runtime_matches_torch_on_the_same_crops(random_model_a, random_onnx_a, flip: bool) -> None:
    # quarter decoding is exact given the heatmaps; DARK's accuracy is tested in test_processing, and its Newton step
    # is ill-conditioned on random nets' flat peaks, where 1e-5 heatmap noise can move a point by 0.1 heatmap px
    estimator = PoseEstimator(random_onnx_a, decode="quarter")
    image = _photo()
    boxes = [[100, 40, 300, 340], [10.5, 20.25, 90, 200], [-30, -30, 600, 500]]
    persons = TopDownPipeline(estimator).estimate(image, boxes, flip=flip)

    prepared = estimator.prepare(image, boxes)
    with torch.no_grad():
        heatmaps = random_model_a(torch.from_numpy(prepared.tensor)).numpy()
        if flip:
            mirrored = random_model_a(torch.from_numpy(np.ascontiguousarray(prepared.tensor[..., ::-1]))).numpy()
            heatmaps = merge_flip(heatmaps, mirrored, FLIP_PAIRS, 192)
    expected = estimator.decode(heatmaps, prepared.matrices)

    ours = (estimator.merge_mirrored(estimator.run(estimator.with_mirrored(prepared.tensor))) if flip
            else estimator.run(prepared.tensor))
    np.testing.assert_allclose(ours, heatmaps, rtol=1e-5, atol=1e-4)
    actual = np.stack([p.keypoints for p in persons])
    assert actual.shape == (3, 17, 3)
    np.testing.assert_allclose(actual[..., 2], expected[..., 2], atol=1e-4)
    # Random weights can give two near-equal peaks, where a 1e-5 difference may pick either: compare locations where
    # the peak beats everything more than 2 px away by 1e-3
    unambiguous = _peak_margin(heatmaps) > 1e-3
    assert unambiguous.mean() > 0.3  # still dozens of joints compared
    np.testing.assert_allclose(actual[..., :2][unambiguous], expected[..., :2][unambiguous], atol=1e-6)
    np.testing.assert_allclose([p.box for p in persons], boxes)


def test_keypoints_land_inside_the_padded_box(random_onnx_a) -> None:
    persons = TopDownPipeline(PoseEstimator(random_onnx_a)).estimate(_photo(), [[100, 40, 300, 340]])
    x, y = persons[0].keypoints[:, 0], persons[0].keypoints[:, 1]
    # the crop covers the box enlarged to 3:4 and by 1.25
    assert (x > 100 - 100).all() and (x < 300 + 100).all() and (y > 40 - 40).all() and (y < 340 + 40).all()


def test_no_boxes_and_bad_boxes(random_onnx_a) -> None:
    pipeline = TopDownPipeline(PoseEstimator(random_onnx_a))
    assert pipeline.estimate(_photo(), []) == []
    for bad in ([[10, 10, 5, 50]], [[np.nan, 0, 10, 10]], [[0, 0, np.inf, 10]]):
        with pytest.raises(ValueError):
            pipeline.estimate(_photo(), bad)
    with pytest.raises(ValueError, match="no person detector"):
        pipeline.estimate(_photo())


def test_person_score_uses_confident_keypoints_only() -> None:
    scores = np.array([0.9, 0.7, 0.1, 0.0])
    assert person_score(scores, 0.5) == pytest.approx(0.5 * 0.8)
    assert person_score(np.zeros(4), 1.0) == 0.0


def test_providers() -> None:
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(ValueError):
        resolve_providers("tpu")
    with pytest.raises(ValueError):
        resolve_providers(["NoSuchExecutionProvider"])


def test_missing_model_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        PoseEstimator(tmp_path / "missing.onnx")


def test_inference_path_imports_no_torch() -> None:
    code = (
        "import sys, effpose.runtime, effpose.pipeline, effpose.contract, effpose.processing, effpose.draw, "
        "effpose.keypoints, effpose.genotype, effpose.assets, effpose.cli, effpose.data, effpose.evaluation.runner, "
        "effpose.detectors, service.main; "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
