"""Every error path of the REST frontend against the real service on loopback: one error envelope, no 5xx from
client input, kept-alive connections that survive errors, boxes bounded to the image, exotic and large images; and
the same mistakes over gRPC, answered with the same reason in the standard rich error model."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from effpose.pipeline import TopDownPipeline
from effpose.runtime import PoseEstimator
from effpose.v1 import pose_pb2, pose_pb2_grpc
from service.imaging import decode_image, probe_image
from tests.service_support import RunningService, assert_rich_status, call_status, encode, running_service

WIDTH, HEIGHT = 320, 240


def noise(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


JPEG = encode(noise())


@pytest.fixture(scope="module")
def service(random_onnx_a: Path) -> Iterator[RunningService]:
    with running_service(pose_model=random_onnx_a, max_body_bytes=2_000_000, max_image_pixels=3_000_000,
                         pixel_budget=3_000_000, jpeg_draft_pixels=300_000) as running:
        yield running


@pytest.fixture()
def client(service: RunningService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.base_url, timeout=30.0) as http:
        yield http


def post(client: httpx.Client, body: bytes = JPEG, content_type: str = "image/jpeg",
         **params: object) -> httpx.Response:
    return client.post("/v1/pose", content=body, headers={"content-type": content_type}, params=params)


def assert_envelope(response: httpx.Response, status: int, reason: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"reason", "message"}, body
    assert body["error"]["message"] and (reason is None or body["error"]["reason"] == reason), body
    return body["error"]


# --- boxes ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("box", [[-1e308, -1e308, 1e308, 1e308], [0, 0, 1e200, 1e200], [-50, -50, 1000, 1000]])
def test_huge_boxes_are_clipped_to_the_image(client: httpx.Client, box: list[float]) -> None:
    response = post(client, boxes=json.dumps([box]))
    assert response.status_code == 200, response.text
    [person] = response.json()["persons"]
    assert person["box"] == [0.0, 0.0, WIDTH, HEIGHT]
    for keypoint in person["keypoints"]:  # inside the crop around the image, not at 1e199
        assert -WIDTH <= keypoint["x"] <= 2 * WIDTH and -HEIGHT <= keypoint["y"] <= 2 * HEIGHT


@pytest.mark.parametrize(("boxes", "status"), [
    ("[[1, 2", 422), ('[["a", "b", "c", "d"]]', 422), ("[[NaN, 0, 10, 10]]", 422), ("[[0, 0, Infinity, 10]]", 422),
    ("[[0, 0, 1e999, 10]]", 422), ("not json", 422), ('"[[0,0,10,10]]"', 422), ("[[0, 0, 10]]", 422),
    ("[[10, 10, 5, 20]]", 400), ("[[400, 300, 500, 400]]", 400), ("[[0, 0, 0.5, 0.5]]", 400),
])
def test_bad_boxes_in_the_multipart_field_are_4xx_like_in_the_query(client: httpx.Client, boxes: str,
                                                                    status: int) -> None:
    multipart = client.post("/v1/pose", files={"image": ("a.jpg", JPEG, "image/jpeg")}, data={"boxes": boxes})
    error = assert_envelope(multipart, status)
    assert "box" in error["message"]
    assert_envelope(post(client, boxes=boxes), status, error["reason"])  # the same mistake, the same answer


# --- one envelope -----------------------------------------------------------------------------------------------------

def test_404_405_413_and_validation_errors_share_the_envelope(client: httpx.Client) -> None:
    assert_envelope(client.get("/nowhere"), 404, "not_found")
    not_allowed = client.get("/v1/pose")
    assert_envelope(not_allowed, 405, "method_not_allowed")
    assert "POST" in not_allowed.headers["allow"]
    assert_envelope(post(client, b"\xff" * 2_100_000), 413, "too_large")
    assert "det_threshold" in assert_envelope(post(client, det_threshold=2), 422, "invalid_parameters")["message"]
    assert_envelope(client.post("/v1/pose", content=b"--x\r\nbroken", headers={
        "content-type": "multipart/form-data; boundary=x"}), 400)


def test_openapi_documents_the_envelope_for_every_error(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ErrorResponse" in schemas
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert responses["default"]["content"]["application/json"]["schema"] == error_ref, (path, method)
            if "422" in responses:
                assert responses["422"]["content"]["application/json"]["schema"] == error_ref, (path, method)
    pose = spec["paths"]["/v1/pose"]["post"]["responses"]
    assert {"400", "413", "415", "422", "429", "503", "504"} <= set(pose)


def test_an_unexpected_error_is_a_500_envelope_and_keeps_the_connection(service: RunningService,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service.service.core.models.default.pipeline.estimator, "prepare", broken)
    connection = http.client.HTTPConnection("127.0.0.1", service.service.http_port, timeout=30)
    try:
        connection.request("POST", "/v1/pose", body=JPEG, headers={"content-type": "image/jpeg"})
        failed = connection.getresponse()
        body = json.loads(failed.read())
        assert failed.status == 500 and body["error"]["reason"] == "internal"
        assert failed.getheader("connection") != "close"
        socket_before = connection.sock
        monkeypatch.undo()
        connection.request("POST", "/v1/pose", body=JPEG, headers={"content-type": "image/jpeg"})
        again = connection.getresponse()
        assert again.status == 200 and json.loads(again.read())["persons"]
        assert connection.sock is socket_before  # the same kept-alive connection served both
    finally:
        connection.close()


# --- images ---------------------------------------------------------------------------------------------------------

def sixteen_bit_grey(value: int) -> bytes:
    return encode(Image.fromarray(np.full((HEIGHT, WIDTH), value, np.uint16)), "PNG")


def test_16_bit_grey_png_is_scaled_to_8_bits_not_clipped() -> None:
    dark = decode_image(sixteen_bit_grey(1000), 10**7).pixels
    bright = decode_image(sixteen_bit_grey(60000), 10**7).pixels
    assert dark.shape == (HEIGHT, WIDTH, 3) and dark.dtype == np.uint8
    assert int(dark[0, 0, 0]) == round(1000 / 257) and int(bright[0, 0, 0]) == round(60000 / 257)


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("CMYK", "JPEG"), ("P", "GIF"), ("LA", "PNG"),
                                           ("1", "BMP"), ("F", "TIFF"), ("RGBA", "WEBP")])
def test_exotic_images_decode_to_8_bit_colour(client: httpx.Client, mode: str, fmt: str) -> None:
    picture = Image.fromarray(noise()).convert("L").convert(mode) if mode not in ("I;16", "F") else \
        Image.fromarray((noise()[..., 0].astype(np.uint16) * 200).astype(np.uint16 if mode == "I;16" else np.float32))
    response = post(client, encode(picture, fmt), "application/octet-stream")
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"width": WIDTH, "height": HEIGHT}


def test_a_large_jpeg_is_decoded_reduced_and_answered_in_original_pixels(client: httpx.Client,
                                                                       service: RunningService) -> None:
    big = encode(noise(1600, 1200, seed=3), quality=90)
    header = probe_image(big, 10**8, service.settings.jpeg_draft_pixels)
    assert header.draft_scale == 4 and header.decoded_pixels <= service.settings.jpeg_draft_pixels
    body = post(client, big).json()
    assert body["image"] == {"width": 1600, "height": 1200}
    [person] = body["persons"]
    assert person["box"] == [0.0, 0.0, 1600.0, 1200.0]  # the whole-image detector, in original pixels

    reduced = decode_image(big, 10**8, service.settings.jpeg_draft_pixels).pixels
    assert reduced.shape[:2] == (300, 400)
    estimator = PoseEstimator(service.settings.pose_model, decode=service.settings.decode)
    [expected] = TopDownPipeline(estimator).estimate(reduced, [[0, 0, 400, 300]], flip=False)
    expected_xy = (expected.keypoints[:, :2] + 0.5) * 4 - 0.5  # pixel centres of the reduced image, scaled up
    got = np.array([[k["x"], k["y"]] for k in person["keypoints"]])
    np.testing.assert_allclose(got, expected_xy, atol=0.05)


# --- metrics --------------------------------------------------------------------------------------------------------

def test_metrics_label_413_with_its_route_and_keep_errors_out_of_the_latency_of_answers(client: httpx.Client) -> None:
    post(client, b"\xff" * 2_100_000)
    post(client, b"not an image")
    assert post(client).status_code == 200
    text = client.get("/metrics").text
    assert 'effpose_requests_total{code="413",method="POST",route="/v1/pose"}' in text
    assert 'effpose_error_duration_seconds_count{code="413",route="/v1/pose"}' in text
    assert 'effpose_error_duration_seconds_count{code="415",route="/v1/pose"}' in text
    assert 'effpose_request_duration_seconds_bucket{le="600.0",route="/v1/pose"}' in text
    assert "effpose_decoded_pixels 0.0" in text and "effpose_request_cost_seconds" in text


# --- the same mistakes over gRPC --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("image", "boxes", "status", "field"), [
    (b"not an image", [], 415, "image"),
    (JPEG, [[10, 10, 5, 20]], 400, "boxes[0]"),
    (JPEG, [[400, 300, 500, 400]], 400, "boxes[0]"),
    (encode(np.zeros((1600, 2000, 3), np.uint8), "PNG"), [], 413, "image"),  # 3.2 Mpx: over the pixel limit
])
def test_grpc_answers_the_rest_errors_with_the_same_reason_and_details(
    client: httpx.Client, service: RunningService, image: bytes, boxes: list[list[float]], status: int,
    field: str | None
) -> None:
    rest = assert_envelope(post(client, image, boxes=json.dumps(boxes)) if boxes else post(client, image), status)
    request = pose_pb2.EstimateRequest(image=image, boxes=[pose_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2)
                                                          for x1, y1, x2, y2 in boxes])
    with grpc.insecure_channel(service.grpc_target) as channel, pytest.raises(grpc.RpcError) as failure:
        pose_pb2_grpc.PoseServiceStub(channel).Estimate(request, timeout=30)
    assert_rich_status(call_status(failure.value), grpc.StatusCode.INVALID_ARGUMENT, rest["reason"].upper(), field)
