"""Where training and validation data live: the data root and a COCO-format source under it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def data_root() -> Path:
    """Where relative data paths point: $EFFPOSE_DATA, else ../shared/data beside the checkout."""
    return Path(os.environ.get("EFFPOSE_DATA", DEFAULT_DATA_ROOT))


@dataclass
class DataSource:
    """A COCO-format keypoint json and its image folder (relative paths are under the data root)."""

    annotations: str
    images: str
    name: str
    ratio: float = 1.0

    def paths(self) -> tuple[Path, Path]:
        """Absolute (annotations, images) paths."""
        root = data_root()
        return root / self.annotations, root / self.images
