"""The torch networks: counts against the spec, every op's shapes, checkpoints."""

import pytest
import torch

from effpose.genotype import SEARCH_OPS
from effpose.model import (
    EfficientPose,
    InvertedResidual,
    build_model,
    build_op,
    load_checkpoint,
    measure_complexity,
    save_checkpoint,
    set_drop_path,
)

# spec: parameters with 16 joints; true-cost MACs at 256x256 and 256x192 (input_size is width, height)
SPEC_PARAMS = {"A": 1.299e6, "B": 3.253e6, "C": 5.002e6}
SPEC_MACS = {
    ("A", (256, 256)): 0.542e9, ("B", (256, 256)): 1.395e9, ("C", (256, 256)): 1.862e9,
    ("A", (192, 256)): 0.407e9, ("B", (192, 256)): 1.046e9, ("C", (192, 256)): 1.397e9,
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["A", "B", "C"])
def test_parameter_count_matches_spec(arch: str) -> None:
    stats = measure_complexity(build_model(arch, num_joints=16), (256, 256))
    assert stats.params == pytest.approx(SPEC_PARAMS[arch], abs=500)  # spec is rounded to 1e3


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "size"), list(SPEC_MACS))
def test_macs_within_one_percent_of_spec(arch: str, size: tuple[int, int]) -> None:
    stats = measure_complexity(build_model(arch, num_joints=16), size)
    assert stats.macs == pytest.approx(SPEC_MACS[(arch, size)], rel=0.01)


def test_transposed_conv_macs_are_true_cost() -> None:
    layer = torch.nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1, bias=False), layer)
    stats = measure_complexity(model, (10, 6))
    assert stats.macs == 6 * 10 * 3 * 8 + 6 * 10 * 8 * 4 * 16


@pytest.mark.parametrize("op", [op for op in SEARCH_OPS if op != "skip"])
@pytest.mark.parametrize(("cin", "cout", "stride"), [(16, 24, 2), (24, 24, 1), (32, 64, 1)])
def test_every_op_block_shape(op: str, cin: int, cout: int, stride: int) -> None:
    block = build_op(op, cin, cout, stride).eval()
    out = block(torch.randn(2, cin, 16, 12))
    assert out.shape == (2, cout, 16 // stride, 12 // stride)
    kernel = int(op[4])
    depthwise = block.body[1][0]
    assert depthwise.kernel_size == (kernel, kernel) and depthwise.groups == depthwise.in_channels
    assert depthwise.in_channels == cin * int(op[-1])
    assert block.use_residual == (stride == 1 and cin == cout)


def test_skip_is_identity_and_only_where_shapes_allow() -> None:
    x = torch.randn(1, 24, 8, 8)
    assert torch.equal(build_op("skip", 24, 24, 1)(x), x)
    with pytest.raises(ValueError):
        build_op("skip", 16, 24, 1)
    with pytest.raises(ValueError):
        build_op("skip", 24, 24, 2)


def test_drop_path_rises_with_depth_over_the_residual_blocks_only() -> None:
    model = build_model("A")
    count = set_drop_path(model, 0.2)
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    residual = [b.drop_path for b in blocks if b.use_residual]
    assert count == len(residual) > 2
    assert residual == sorted(residual) and residual[-1] == pytest.approx(0.2) and residual[0] > 0
    assert all(b.drop_path == 0 for b in blocks if not b.use_residual)
    set_drop_path(model, 0.0)
    assert all(b.drop_path == 0 for b in blocks)
    with pytest.raises(ValueError, match="drop_path"):
        set_drop_path(model, 1.0)


def test_drop_path_skips_whole_samples_in_training_and_nothing_in_eval() -> None:
    torch.manual_seed(0)
    block = build_op("ir_k3_e3", 8, 8, 1).eval()
    x = torch.randn(64, 8, 6, 6)
    with torch.no_grad():
        branch = block.body(x)
        block.drop_path = 0.5
        assert torch.equal(block(x), x + branch)  # eval: the plain residual
        block.training = True  # the block samples; its batch norms stay in eval mode, so the branch is as above
        out = block(x)
    dropped = torch.isclose(out, x, atol=1e-6).flatten(1).all(1)
    kept = torch.isclose(out, x + 2 * branch, atol=1e-5).flatten(1).all(1)
    assert torch.all(dropped ^ kept)  # each sample either skips the branch or keeps it scaled by 1 / (1 - 0.5)
    assert 16 < int(dropped.sum()) < 48


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["A", "B", "C", "mbv2"])
def test_network_output_is_stride_4_heatmaps(arch: str) -> None:
    model = build_model(arch).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 256, 192)).shape == (2, 17, 64, 48)


def test_sic_can_be_disabled() -> None:
    with_sic, without = build_model("A"), build_model("A", sic=False)
    assert measure_complexity(with_sic).params - measure_complexity(without).params == 32 * 9


@pytest.mark.slow
def test_checkpoint_round_trip(tmp_path, random_model_a: EfficientPose) -> None:
    path = tmp_path / "a.pt"
    save_checkpoint(random_model_a, path, epoch=3)
    restored, extra = load_checkpoint(path)
    x = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        assert torch.equal(restored(x), random_model_a(x))
    assert extra["epoch"] == 3
    with pytest.raises(ValueError, match="holds"):
        load_checkpoint(path, arch="B")


@pytest.mark.slow
def test_bare_state_dict_needs_arch(tmp_path, random_model_a: EfficientPose) -> None:
    path = tmp_path / "bare.pt"
    torch.save(random_model_a.state_dict(), path)
    with pytest.raises(ValueError, match="pass the architecture"):
        load_checkpoint(path)
    restored, _ = load_checkpoint(path, arch="A")
    x = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        assert torch.equal(restored(x), random_model_a(x))
