"""The pose models the service answers with: every pose model of a model repository (a folder of ONNX files with
their cards), or the one configured model. Each has its own pipeline (sharing the service's person detector) and
its own batcher queue; a request chooses one by name, and optionally version, or gets the default."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from effpose.pipeline import TopDownPipeline
from effpose.runtime import ModelInfo
from service.batcher import DynamicBatcher
from service.errors import ModelNotFound
from service.settings import Settings


@dataclass
class ServedModel:
    """One pose model: its served name (the file name without ``.onnx``), file, pipeline and batcher."""

    name: str
    path: Path
    pipeline: TopDownPipeline
    batcher: DynamicBatcher

    @property
    def info(self) -> ModelInfo:
        """What the ONNX file says about itself (architecture name, version, weights, contract)."""
        return self.pipeline.estimator.info

    @property
    def version(self) -> str:
        """The model's version (its ONNX metadata)."""
        return self.info.version


def model_files(settings: Settings) -> dict[str, Path]:
    """Served name -> ONNX file, in name order: every ``*.onnx`` of ``model_repository`` (only those named in
    ``models`` when set, in that order), or ``pose_model`` alone. A missing folder or model raises
    FileNotFoundError."""
    if settings.model_repository is None:
        return {settings.pose_model.stem: settings.pose_model}
    folder = settings.model_repository
    if not folder.is_dir():
        raise FileNotFoundError(f"model repository not found: {folder}")
    files = {path.stem: path for path in sorted(folder.glob("*.onnx"))}
    if settings.models is None:
        return files
    missing = [name for name in settings.models if name not in files]
    if missing:
        raise FileNotFoundError(f"models {missing} are not in {folder} (it has {sorted(files)})")
    return {name: files[name] for name in settings.models}


class ServedModels:
    """The served models by name, and the default one (``default``, else the model loaded from ``preferred``,
    else the first)."""

    def __init__(self, models: Sequence[ServedModel], default: str | None = None, preferred: Path | None = None):
        if not models:
            raise ValueError("no pose model to serve")
        self._by_name = {model.name: model for model in models}
        if default is None:
            preferred_models = [model for model in models
                                if preferred is not None and model.path.resolve() == preferred.resolve()]
            default = (preferred_models or list(models))[0].name
        if default not in self._by_name:
            raise ValueError(f"default model {default!r} is not served (serving {sorted(self._by_name)})")
        self.default = self._by_name[default]

    def get(self, name: str | None = None, version: str | None = None) -> ServedModel:
        """The model named ``name`` (None or empty: the default); a ``version``, when given, must be its version.
        Anything else raises :class:`ModelNotFound`."""
        model = self._by_name.get(name) if name else self.default
        if model is None:
            raise ModelNotFound(f"no model {name!r}: serving {', '.join(sorted(self._by_name))}")
        if version and version != model.version:
            raise ModelNotFound(f"model {model.name!r} has version {model.version!r}, not {version!r}",
                                field="model_version")
        return model

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)
