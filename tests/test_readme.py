"""The README's examples run as written: here the Triton client example, against a server on loopback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from effpose.assets import DEFAULT_PERSON_DETECTOR
from tests.service_support import running_service

README = Path(__file__).resolve().parent.parent / "README.md"


def example(marker: str) -> str:
    """The first fenced code block after ``<!-- marker -->`` in the README."""
    found = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)```", README.read_text(), re.DOTALL)
    assert found, f"no example marked {marker} in the README"
    return found.group(1)


def test_the_triton_example_answers_what_v1_answers(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    photo = data_dir / "coco" / "images" / "000000001000.jpg"  # a group photo
    (tmp_path / "photo.jpg").write_bytes(photo.read_bytes())
    monkeypatch.chdir(tmp_path)
    with running_service(detector_model=DEFAULT_PERSON_DETECTOR) as service:
        http_port, grpc_port = service.base_url.rsplit(":", 1)[1], service.grpc_target.rsplit(":", 1)[1]
        code = example("triton-example").replace("localhost:8080", f"127.0.0.1:{http_port}").replace(
            "localhost:50051", f"127.0.0.1:{grpc_port}")
        namespace: dict = {}
        exec(compile(code, "README.md (triton-example)", "exec"), namespace)  # noqa: S102 - our own README
        answer = httpx.post(f"{service.base_url}/v1/pose", content=photo.read_bytes(), timeout=60,
                            headers={"content-type": "image/jpeg"}, params={"det_threshold": 0.3}).json()
    expected = np.array([[[kp["x"], kp["y"], kp["score"]] for kp in person["keypoints"]]
                         for person in answer["persons"]]).reshape(-1, 17, 3)
    assert len(expected) >= 1, json.dumps(answer)[:300]
    for protocol in ("http", "grpc"):
        np.testing.assert_allclose(namespace["keypoints"][protocol], expected, atol=0.01)
