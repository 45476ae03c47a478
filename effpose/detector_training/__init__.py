"""The project's own person detector, torch side: a CenterNet-style single-class detector on the EfficientPose trunk.

``model`` (network and in-graph decoding), ``targets`` (CenterNet target encoding), ``augment`` (letterbox canvas,
scale/crop, flip, colour, mosaic), ``data`` (box sources and the training dataset), ``loss``, ``config``,
``trainer`` (``effpose train-detector``) and ``export`` (``effpose export-detector``: the ONNX contract the
torch-free adapter in ``effpose.detectors`` reads). Nothing is imported here, so
each command loads only what it needs.
"""
