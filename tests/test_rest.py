"""REST frontend against the real service (uvicorn + gRPC + core) on loopback, with a real HTTP client."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from effpose.assets import DEFAULT_PERSON_DETECTOR
from effpose.detectors import box_iou
from effpose.keypoints import KEYPOINT_NAMES, SKELETON
from tests.service_support import encode, running_service

IMAGE_W, IMAGE_H = 320, 240
BOX = [60.0, 20.0, 180.0, 230.0]
# share of the large persons of COCO image 1000 that our shipped detector must find (7 of 10 at release)
MIN_FOUND_BY_OURS = 0.5


def scene(width: int = IMAGE_W, height: int = IMAGE_H, seed: int = 0) -> np.ndarray:
    """A textured RGB test image (random blobs on a gradient)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[...] = np.linspace(0, 200, width, dtype=np.uint8)[None, :, None]
    for _ in range(12):
        x, y = rng.integers(0, width - 20), rng.integers(0, height - 20)
        image[y:y + 20, x:x + 20] = rng.integers(0, 255, 3)
    return image


JPEG = encode(scene())


@pytest.fixture(scope="module")
def service(random_onnx_a: Path):
    with running_service(pose_model=random_onnx_a, max_body_bytes=2_000_000, max_image_pixels=3_000_000) as running:
        yield running


@pytest.fixture()
def client(service):
    with httpx.Client(base_url=service.base_url, timeout=30.0) as http:
        yield http


def post_pose(client: httpx.Client, body: bytes = JPEG, content_type: str = "image/jpeg", **params: object):
    return client.post("/v1/pose", content=body, headers={"content-type": content_type}, params=params)


def test_client_boxes_give_17_named_keypoints_in_image_pixels(client):
    response = post_pose(client, boxes=json.dumps([BOX]), keypoint_threshold=0.0)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {"width": IMAGE_W, "height": IMAGE_H}
    assert body["keypoint_names"] == list(KEYPOINT_NAMES)
    assert body["skeleton"] == [list(pair) for pair in SKELETON]
    assert response.headers["x-request-id"] == body["request_id"]
    [person] = body["persons"]
    assert person["source"] == "client" and person["box"] == BOX and person["box_score"] == 1.0
    assert [k["name"] for k in person["keypoints"]] == list(KEYPOINT_NAMES)
    x1, y1, x2, y2 = BOX
    pad_x, pad_y = 0.3 * (x2 - x1), 0.3 * (y2 - y1)  # the crop is the box enlarged by 1.25 (and aspect-fixed)
    for keypoint in person["keypoints"]:
        assert x1 - pad_x <= keypoint["x"] <= x2 + pad_x and y1 - pad_y <= keypoint["y"] <= y2 + pad_y
        assert keypoint["visible"] is True  # threshold 0 marks everything visible; nothing is zeroed
    assert set(body["timings_ms"]) == {"decode", "detect", "queue", "pose", "total"}
    assert body["timings_ms"]["total"] >= body["timings_ms"]["pose"] > 0


def test_multipart_equals_raw_body_and_takes_boxes_as_a_form_field(client):
    raw = post_pose(client, boxes=json.dumps([BOX])).json()
    multipart = client.post("/v1/pose", files={"image": ("scene.jpg", JPEG, "image/jpeg")},
                            data={"boxes": json.dumps([BOX])}).json()
    assert multipart["persons"][0]["keypoints"] == raw["persons"][0]["keypoints"]


def test_whole_image_detector_by_default(client):
    [person] = post_pose(client).json()["persons"]
    assert person["source"] == "detector" and person["box"] == [0.0, 0.0, IMAGE_W, IMAGE_H]


def test_exif_orientation_grey_and_alpha_images(client):
    rotated = Image.fromarray(scene())
    exif = rotated.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    sideways = post_pose(client, encode(rotated, exif=exif.tobytes())).json()
    assert sideways["image"] == {"width": IMAGE_H, "height": IMAGE_W}
    grey = post_pose(client, encode(Image.fromarray(scene()[..., 0]), "PNG"), "image/png")
    rgba = post_pose(client, encode(Image.fromarray(np.dstack([scene(), np.full((IMAGE_H, IMAGE_W), 128, np.uint8)])),
                                    "PNG"), "image/png")
    assert grey.status_code == 200 and rgba.status_code == 200
    assert rgba.json()["image"] == {"width": IMAGE_W, "height": IMAGE_H}


@pytest.mark.parametrize(("body", "content_type", "params", "status", "reason"), [
    (b"", "image/jpeg", {}, 415, "not_an_image"),
    (b"definitely not an image", "image/jpeg", {}, 415, "not_an_image"),
    (JPEG[: len(JPEG) // 2], "image/jpeg", {}, 415, "not_an_image"),
    (b'{"image": 1}', "application/json", {}, 415, "not_an_image"),
    (JPEG, "image/jpeg", {"boxes": "[[100, 10, 50, 200]]"}, 400, "bad_request"),
    (JPEG, "image/jpeg", {"boxes": "[[1000, 1000, 1100, 1100]]"}, 400, "bad_request"),
    (JPEG, "image/jpeg", {"boxes": "[[1, 2, 3]]"}, 422, "invalid_parameters"),
    (JPEG, "image/jpeg", {"boxes": json.dumps([BOX] * 101)}, 400, "bad_request"),
    (JPEG, "image/jpeg", {"max_persons": 1000}, 400, "bad_request"),
])
def test_bad_input_gets_a_clear_json_error(client, body, content_type, params, status, reason):
    response = post_pose(client, body, content_type, **params)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["reason"] == reason and len(error["message"]) > 10


@pytest.mark.parametrize("params", [
    {"boxes": "[[1, 2"}, {"det_threshold": 5}, {"det_threshold": "high"}, {"max_persons": 0}, {"format": "xml"},
    {"flip": "maybe"}, {"timeout_ms": -1}, {"boxes": "[[NaN, 0, 10, 10]]"}, {"boxes": "[[0, 0, 1e999, 10]]"},
    {"boxes": '[["a", "b", "c", "d"]]'}, {"boxes": "[[1, 2, 3, 4, 5]]"}, {"boxes": "{}"},
])
def test_invalid_parameters_are_422_in_the_error_envelope(client, params):
    response = post_pose(client, **params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["reason"] == "invalid_parameters" and next(iter(params)) in error["message"]


def test_size_limits_are_413_and_the_server_keeps_serving(client):
    huge_body = client.post("/v1/pose", content=b"\xff" * 2_100_000, headers={"content-type": "image/jpeg"})
    assert huge_body.status_code == 413 and huge_body.json()["error"]["reason"] == "too_large"

    def chunks():  # no Content-Length: the limit must hold while the body streams in
        for _ in range(30):
            yield b"\0" * 100_000

    streamed = client.post("/v1/pose", content=chunks(), headers={"content-type": "image/jpeg"})
    assert streamed.status_code == 413
    bomb = encode(Image.new("L", (2000, 2000)), "PNG")  # 4 Mpx > 3 Mpx limit, tiny on the wire
    too_many_pixels = post_pose(client, bomb, "image/png")
    assert too_many_pixels.status_code == 413 and "pixels" in too_many_pixels.json()["error"]["message"]
    multipart_without_image = client.post("/v1/pose", files={"picture": ("a.jpg", JPEG, "image/jpeg")})
    assert multipart_without_image.status_code == 400
    assert post_pose(client).status_code == 200


def test_coco_format_and_rendered_image(client):
    coco = post_pose(client, boxes=json.dumps([BOX, [0, 0, 100, 100]]), format="coco", image_id=42).json()
    assert [entry["image_id"] for entry in coco] == [42, 42]
    assert all(len(entry["keypoints"]) == 51 and entry["category_id"] == 1 for entry in coco)
    assert coco[0]["bbox"] == [BOX[0], BOX[1], BOX[2] - BOX[0], BOX[3] - BOX[1]]
    for fmt, pil_format in (("png", "PNG"), ("jpeg", "JPEG")):
        rendered = post_pose(client, boxes=json.dumps([BOX]), render=fmt, keypoint_threshold=0.0)
        assert rendered.headers["content-type"] == f"image/{fmt}"
        picture = Image.open(io.BytesIO(rendered.content))
        assert picture.format == pil_format and picture.size == (IMAGE_W, IMAGE_H)
        assert not np.array_equal(np.asarray(picture.convert("RGB")), scene())  # skeleton drawn


def test_deadline_exceeded_is_504_and_an_impossible_one_is_refused_at_once(client, service):
    cost_ms = service.service.core.admission.cost_s * 1000
    response = post_pose(client, boxes=json.dumps([BOX] * 100), flip=True, timeout_ms=1.5 * cost_ms)
    assert response.status_code == 504 and response.json()["error"]["reason"] == "deadline"
    impossible = post_pose(client, boxes=json.dumps([BOX]), timeout_ms=0.01)
    assert impossible.status_code == 400 and "shorter than a request takes" in impossible.json()["error"]["message"]


def test_models_health_and_openapi(client, random_onnx_a):
    models = client.get("/v1/models").json()
    assert models["pose"]["keypoint_names"] == list(KEYPOINT_NAMES)
    assert models["pose"]["input_size"] == {"width": 192, "height": 256}
    assert models["detector"] == "whole-image"
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/v1/pose"]["post"]["requestBody"]["content"]


def test_metrics_count_requests_stages_batches_and_rejections(client):
    post_pose(client, boxes=json.dumps([BOX]))
    post_pose(client, b"nope")
    text = client.get("/metrics").text
    for needle in ('effpose_requests_total{code="200",method="POST",route="/v1/pose"}',
                   'effpose_requests_total{code="415",method="POST",route="/v1/pose"}',
                   'effpose_stage_duration_seconds_bucket{le="0.005",stage="decode"}',
                   'effpose_stage_duration_seconds_count{stage="pose"}', "effpose_batch_size_bucket",
                   'effpose_rejected_requests_total{reason="not_an_image"}', "effpose_queue_depth",
                   "effpose_in_flight_requests", 'effpose_model_info{detector="whole-image"'):
        assert needle in text, needle


def test_overload_is_refused_with_retry_after_and_the_server_recovers(random_onnx_a):
    with running_service(pose_model=random_onnx_a, max_batch_size=1, max_queue_length=2, max_queue_delay_ms=0,
                         cpu_workers=4, latency_target_s=600) as small, \
            httpx.Client(base_url=small.base_url, timeout=60) as http:
        boxes = json.dumps([BOX] * 4)
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda _: post_pose(http, boxes=boxes, flip=True), range(32)))
        codes = [r.status_code for r in statuses]
        assert set(codes) <= {200, 429} and codes.count(200) >= 1 and codes.count(429) >= 1
        refused = next(r for r in statuses if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1 and refused.json()["error"]["reason"] == "queue_full"
        assert post_pose(http, boxes=json.dumps([BOX])).status_code == 200
        assert 'effpose_rejected_requests_total{reason="queue_full"}' in http.get("/metrics").text


def test_requests_beyond_the_in_flight_limit_are_refused_before_decoding(random_onnx_a):
    with running_service(pose_model=random_onnx_a, max_in_flight=2, max_batch_size=1, cpu_workers=4,
                         latency_target_s=600) as small, \
            httpx.Client(base_url=small.base_url, timeout=60) as http:
        boxes = json.dumps([BOX] * 8)
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda _: post_pose(http, boxes=boxes, flip=True), range(24)))
        refused = [r for r in statuses if r.status_code == 429]
        assert {r.status_code for r in statuses} <= {200, 429} and refused and len(refused) < len(statuses)
        assert {r.json()["error"]["reason"] for r in refused} == {"in_flight_limit"}
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert small.service.core.in_flight == 0 and post_pose(http).status_code == 200
        assert 'effpose_rejected_requests_total{reason="in_flight_limit"}' in http.get("/metrics").text


def test_http_responses_are_not_held_back_by_nagle(random_onnx_a):
    """The listener (and so every accepted connection) has TCP_NODELAY: with Nagle on, each response on a kept-alive
    connection waited for the client's delayed ACK (~40 ms)."""
    with running_service(pose_model=random_onnx_a) as running:
        assert running.service.http_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


class ErrorRecords(logging.Handler):
    """Collects ERROR records (uvicorn's "Exception in ASGI application", asyncio's unretrieved exceptions)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_vanishing_client_has_its_work_cancelled(random_onnx_a):
    errors = ErrorRecords()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "asyncio")]
    with running_service(pose_model=random_onnx_a, max_batch_size=2) as running, \
            httpx.Client(base_url=running.base_url) as http:
        for logger in loggers:
            logger.addHandler(errors)
        try:
            with pytest.raises(httpx.ReadTimeout):
                http.post("/v1/pose", content=JPEG, params={"boxes": json.dumps([BOX] * 100), "flip": True},
                          headers={"content-type": "image/jpeg"}, timeout=0.3)
            deadline = time.monotonic() + 10
            while 'effpose_rejected_requests_total{reason="cancelled"}' not in http.get("/metrics").text:
                assert time.monotonic() < deadline, "the abandoned request was not cancelled"
                time.sleep(0.1)
            answer = post_pose(http)
            assert answer.status_code == 200, answer.text
        finally:
            for logger in loggers:
                logger.removeHandler(errors)
    assert not errors.records, [record.getMessage() for record in errors.records]


@pytest.mark.slow
def test_graceful_shutdown_finishes_in_flight_requests(random_onnx_a):
    with running_service(pose_model=random_onnx_a) as running:
        result: dict[str, httpx.Response] = {}

        def slow_request() -> None:
            with httpx.Client(base_url=running.base_url, timeout=60) as http:
                result["response"] = post_pose(http, boxes=json.dumps([BOX] * 60), flip=True)

        worker = threading.Thread(target=slow_request)
        worker.start()
        while running.service.core.in_flight == 0:
            time.sleep(0.01)
        stopper = threading.Thread(target=running.stop)
        stopper.start()
        while not running.service.core.draining:
            time.sleep(0.01)
        assert httpx.get(f"{running.base_url}/readyz").status_code == 503
        worker.join(60)
        stopper.join(60)
        assert result["response"].status_code == 200 and len(result["response"].json()["persons"]) == 60


@pytest.mark.data
@pytest.mark.parametrize(("detector", "min_found"), [("yolox_nano", 1.0), ("shipped", MIN_FOUND_BY_OURS)])
def test_detector_stage_finds_the_people_of_a_group_photo(data_dir, random_onnx_a, detector, min_found):
    """A person detector through the ONNX adapter finds the large persons of COCO image 1000 (IoU > 0.5): every one
    for the third-party YOLOX-nano, ``min_found`` of them for our own shipped detector."""
    annotations = json.loads((data_dir / "coco/annotations/person_keypoints_val.json").read_text())
    large = [a["bbox"] for a in annotations["annotations"]
             if a["image_id"] == 1000 and not a.get("iscrowd") and a["area"] > 96 ** 2]
    photo = (data_dir / "coco/images/000000001000.jpg").read_bytes()
    path = data_dir / "models/yolox_nano/yolox_nano.onnx" if detector == "yolox_nano" else DEFAULT_PERSON_DETECTOR
    with running_service(pose_model=random_onnx_a, detector_model=path) as running, \
            httpx.Client(base_url=running.base_url, timeout=60) as http:
        body = post_pose(http, photo).json()
        capped = post_pose(http, photo, max_persons=3).json()
    assert body["model"]["detector"] == path.name
    persons = body["persons"]
    assert all(p["source"] == "detector" and 0 < p["box_score"] <= 1 for p in persons)
    scores = [p["box_score"] for p in persons]
    assert scores == sorted(scores, reverse=True) and len(capped["persons"]) == 3
    best_iou = box_iou(np.array([[x, y, x + w, y + h] for x, y, w, h in large]), np.array([p["box"] for p in persons]))
    assert len(large) >= 5 and np.mean(best_iou.max(axis=1) > 0.5) >= min_found
