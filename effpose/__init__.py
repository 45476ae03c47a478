"""effpose: efficient top-down human pose estimation (EfficientPose A/B/C) served on ONNX Runtime."""

__version__ = "0.1.0"
