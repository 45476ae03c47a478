"""Service settings from the environment, and the CPU count taken from the container's cgroup quota."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from effpose.assets import DEFAULT_PERSON_DETECTOR
from service.cpus import available_cpus, cgroup_cpu_limit
from service.settings import Settings


def test_environment_variables_set_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EFFPOSE_HTTP_PORT", "9000")
    monkeypatch.setenv("EFFPOSE_BATCHING", "false")
    monkeypatch.setenv("EFFPOSE_MAX_QUEUE_DELAY_MS", "2.5")
    settings = Settings()
    assert (settings.http_port, settings.batching, settings.max_queue_delay_ms) == (9000, False, 2.5)
    assert Settings(http_port=7000).http_port == 7000  # explicit values win over the environment


@pytest.mark.parametrize(("name", "value"), [("EFFPOSE_HTTP_PORT", "70000"), ("EFFPOSE_MAX_BATCH_SIZE", "0"),
                                             ("EFFPOSE_DET_THRESHOLD", "2"), ("EFFPOSE_DETECTOR", "magic")])
def test_absurd_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_detector_kind_follows_the_detector_model(tmp_path: Path) -> None:
    assert Settings(detector_model=None).detector_kind == "whole-image"
    assert Settings(detector_model=tmp_path / "det.onnx").detector_kind == "onnx"
    assert Settings(detector="whole-image", detector_model=tmp_path / "det.onnx").detector_kind == "whole-image"
    with pytest.raises(ValidationError, match="EFFPOSE_DETECTOR_MODEL"):
        Settings(detector="onnx", detector_model=None)


def test_an_empty_detector_model_variable_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EFFPOSE_DETECTOR_MODEL", "")
    assert Settings().detector_model is None and Settings().detector_kind == "whole-image"


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "50000 100000\n"}, 0.5),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_quota_v1_and_v2(tmp_path: Path, files: dict[str, str], expected: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == expected


def test_available_cpus_is_capped_by_the_quota_and_at_least_one(tmp_path: Path) -> None:
    unlimited = available_cpus(tmp_path)
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{100000 * (unlimited + 8)} 100000\n")
    assert available_cpus(tmp_path) == unlimited  # a quota above the affinity set does not add CPUs


def test_the_shipped_person_detector_is_the_default() -> None:
    settings = Settings()
    assert settings.detector_model == DEFAULT_PERSON_DETECTOR and DEFAULT_PERSON_DETECTOR.is_file()
    assert settings.detector_kind == "onnx"


def test_the_pixel_budget_must_hold_the_largest_image() -> None:
    assert Settings(max_image_pixels=1000, pixel_budget=1000).pixel_budget == 1000
    with pytest.raises(ValidationError, match="EFFPOSE_PIXEL_BUDGET"):
        Settings(max_image_pixels=2000, pixel_budget=1000)
