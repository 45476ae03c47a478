"""Tests for effpose.processing (affine crops, heatmap decoding, flip test) and effpose.draw."""

import math

import cv2
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from effpose.draw import draw_poses
from effpose.keypoints import FLIP_PAIRS, KEYPOINT_NAMES
from effpose.processing import (
    INPUT_MEAN,
    INPUT_STD,
    box_to_center_size,
    crop_person,
    crop_to_tensor,
    decode_heatmaps,
    flip_heatmaps_back,
    get_affine_transform,
    heatmap_to_image,
    merge_flip,
    transform_points,
)

INPUT_W, INPUT_H = 192, 256
STRIDE = 4
HM_W, HM_H = INPUT_W // STRIDE, INPUT_H // STRIDE
SIGMA = 2.0
# Heatmap peaks closer than this to the heatmap border are excluded from the accuracy tests: DARK's
# zero-padded blur and its step-2 Hessian need a few clean pixels around the peak.
HM_MARGIN = 5.0

LEFT_WRIST, RIGHT_WRIST = KEYPOINT_NAMES.index("left_wrist"), KEYPOINT_NAMES.index("right_wrist")

coord = st.floats(-500.0, 1500.0, allow_nan=False)
side = st.floats(20.0, 600.0, allow_nan=False)
fraction = st.floats(0.0, 1.0, allow_nan=False)
rotation = st.floats(-45.0, 45.0, allow_nan=False)


def render_heatmaps(points: np.ndarray, sigma: float | np.ndarray = SIGMA) -> np.ndarray:
    """Unnormalised Gaussians (peak 1) centred at (N, J, 2) sub-pixel heatmap locations."""
    ys, xs = np.mgrid[0:HM_H, 0:HM_W].astype(np.float64)
    dx = xs - points[..., 0, None, None]
    dy = ys - points[..., 1, None, None]
    return np.exp(-(dx**2 + dy**2) / (2 * sigma**2))


def hrnet_affine(center: np.ndarray, size: np.ndarray, output_size: tuple[int, int], rot: float) -> np.ndarray:
    """HRNet's reference three-point construction (lib/utils/transforms.py), written out independently."""
    rad = math.radians(rot)
    src_dir = np.array([0.0, -0.5 * size[0]])
    src_dir = np.array([src_dir[0] * math.cos(rad) - src_dir[1] * math.sin(rad),
                        src_dir[0] * math.sin(rad) + src_dir[1] * math.cos(rad)])
    dst_w, dst_h = output_size
    src = np.zeros((3, 2))
    dst = np.zeros((3, 2))
    src[0], src[1] = center, center + src_dir
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = dst[0] + np.array([0.0, -0.5 * dst_w])
    for pts in (src, dst):
        direct = pts[0] - pts[1]
        pts[2] = pts[1] + np.array([-direct[1], direct[0]])
    # the 2x3 matrix mapping the three src points onto the three dst points (cv2.getAffineTransform, in float64)
    return np.linalg.solve(np.hstack([src, np.ones((3, 1))]), dst).T


def as3(matrix: np.ndarray) -> np.ndarray:
    """A 2x3 affine matrix as a 3x3 homogeneous one."""
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def crop_matrix(box: list[float], rotation_deg: float = 0.0) -> np.ndarray:
    center, size = box_to_center_size(box, INPUT_W / INPUT_H)
    return get_affine_transform(center, size, (INPUT_W, INPUT_H), rotation_deg)


def image_px_per_heatmap_px(matrix: np.ndarray) -> float:
    """How many image pixels one heatmap pixel spans (the crop is a similarity transform)."""
    return STRIDE / math.sqrt(abs(np.linalg.det(matrix[:, :2])))


def in_heatmap_interior(points: np.ndarray) -> bool:
    x, y = points[..., 0], points[..., 1]
    return bool(np.all((x >= HM_MARGIN) & (x <= HM_W - 1 - HM_MARGIN) & (y >= HM_MARGIN) & (y <= HM_H - 1 - HM_MARGIN)))


# ---------------------------------------------------------------- box_to_center_size


@given(x1=coord, y1=coord, w=side, h=side, aspect=st.floats(0.3, 3.0), padding=st.floats(1.0, 2.0))
def test_box_to_center_size_keeps_aspect_and_contains_box(
    x1: float, y1: float, w: float, h: float, aspect: float, padding: float
) -> None:
    box = [x1, y1, x1 + w, y1 + h]
    center, size = box_to_center_size(box, aspect, padding)
    assert size[0] / size[1] == pytest.approx(aspect, rel=1e-9)
    np.testing.assert_allclose(center, [x1 + w / 2, y1 + h / 2], rtol=1e-12, atol=1e-9)
    assert center[0] - size[0] / 2 <= box[0] + 1e-9 and center[0] + size[0] / 2 >= box[2] - 1e-9
    assert center[1] - size[1] / 2 <= box[1] + 1e-9 and center[1] + size[1] / 2 >= box[3] - 1e-9
    # Grown only as much as needed: one side is exactly the padded box side.
    assert np.isclose(size[0], w * padding) or np.isclose(size[1], h * padding)


@pytest.mark.parametrize(
    "box",
    [
        [10, 10, 10, 50],
        [10, 10, 5, 50],
        [10, 50, 20, 40],
        [np.nan, 10, 20, 50],
        [10, 10, np.inf, 50],
        [-np.inf, 10, 20, 50],
        [10, 10, 20],
    ],
)
def test_box_to_center_size_rejects_bad_boxes(box: list[float]) -> None:
    with pytest.raises(ValueError, match="box"):
        box_to_center_size(box, 0.75)


# ---------------------------------------------------------------- get_affine_transform


@given(cx=coord, cy=coord, w=side, h=side, rot=st.floats(-180.0, 180.0))
def test_inverse_transform_composes_to_identity(cx: float, cy: float, w: float, h: float, rot: float) -> None:
    forward = get_affine_transform((cx, cy), (w, h), (INPUT_W, INPUT_H), rot)
    backward = get_affine_transform((cx, cy), (w, h), (INPUT_W, INPUT_H), rot, inverse=True)
    np.testing.assert_allclose(as3(backward) @ as3(forward), np.eye(3), atol=1e-9)
    np.testing.assert_allclose(as3(forward) @ as3(backward), np.eye(3), atol=1e-9)
    np.testing.assert_allclose(transform_points([cx, cy], forward), [INPUT_W / 2, INPUT_H / 2], atol=1e-9)


@given(cx=coord, cy=coord, h=side, rot=st.floats(-180.0, 180.0))
def test_affine_matches_hrnet_three_point_construction(cx: float, cy: float, h: float, rot: float) -> None:
    size = np.array([h * INPUT_W / INPUT_H, h])
    ours = get_affine_transform((cx, cy), size, (INPUT_W, INPUT_H), rot)
    reference = hrnet_affine(np.array([cx, cy]), size, (INPUT_W, INPUT_H), rot)
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-6)


def test_rotation_direction_follows_hrnet() -> None:
    """With +90 degrees a point above the box centre appears left of the crop centre."""
    matrix = get_affine_transform((100.0, 100.0), (75.0, 100.0), (INPUT_W, INPUT_H), 90.0)
    x, y = transform_points([100.0, 60.0], matrix)
    assert x < INPUT_W / 2 - 10 and y == pytest.approx(INPUT_H / 2)


def test_transform_points_keeps_leading_shape() -> None:
    matrix = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, -1.0]])
    points = np.arange(24, dtype=np.float64).reshape(2, 3, 2, 2)
    out = transform_points(points, matrix)
    assert out.shape == points.shape
    np.testing.assert_allclose(out[1, 2, 0], [2 * points[1, 2, 0, 0] + 1, 3 * points[1, 2, 0, 1] - 1])


# ---------------------------------------------------------------- crop_person / crop_to_tensor


def blob_image(x: float, y: float, shape: tuple[int, int] = (480, 640), sigma: float = 4.0) -> np.ndarray:
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    blob = 255.0 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return np.repeat(np.round(blob).astype(np.uint8)[..., None], 3, axis=2)


def intensity_centroid(crop: np.ndarray) -> np.ndarray:
    weights = crop[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0 : crop.shape[0], 0 : crop.shape[1]]
    return np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()


@pytest.mark.parametrize("rotation_deg", [0.0, 30.0, -90.0, 135.0])
@pytest.mark.parametrize(("box", "dot"), [([200, 100, 320, 400], (250.3, 180.7)), ([50, 60, 500, 300], (420.0, 250.5))])
def test_crop_person_places_dot_where_matrix_says(
    box: list[float], dot: tuple[float, float], rotation_deg: float
) -> None:
    crop, matrix = crop_person(blob_image(*dot), box, (INPUT_W, INPUT_H), rotation_deg=rotation_deg)
    assert crop.shape == (INPUT_H, INPUT_W, 3) and crop.dtype == np.uint8
    np.testing.assert_allclose(intensity_centroid(crop), transform_points(dot, matrix), atol=0.1)


def test_crop_person_fills_outside_with_black() -> None:
    image = np.full((100, 100, 3), 200, np.uint8)
    crop, _ = crop_person(image, [0, 0, 100, 100])
    assert crop[0, 0].tolist() == [0, 0, 0] and crop[INPUT_H // 2, INPUT_W // 2].tolist() == [200, 200, 200]


def test_mirrored_crop_puts_point_at_width_minus_one_minus_x() -> None:
    """The flip-test geometry: cv2.flip of the crop moves input x to input_width - 1 - x."""
    dot = (250.3, 180.7)
    crop, matrix = crop_person(blob_image(*dot), [200, 100, 320, 400])
    x, y = transform_points(dot, matrix)
    np.testing.assert_allclose(intensity_centroid(cv2.flip(crop, 1)), [INPUT_W - 1 - x, y], atol=0.1)


def test_crop_to_tensor_converts_bgr_to_normalised_rgb_nchw() -> None:
    crop = np.zeros((INPUT_H, INPUT_W, 3), np.uint8)
    crop[..., 2] = 255  # pure red in BGR
    tensor = crop_to_tensor([crop, crop])
    assert tensor.shape == (2, 3, INPUT_H, INPUT_W) and tensor.dtype == np.float32
    assert tensor.flags["C_CONTIGUOUS"]
    expected = [(1.0 - INPUT_MEAN[0]) / INPUT_STD[0], -INPUT_MEAN[1] / INPUT_STD[1], -INPUT_MEAN[2] / INPUT_STD[2]]
    np.testing.assert_allclose(tensor[1, :, 10, 20], expected, rtol=1e-6)


# ---------------------------------------------------------------- decoding round trip


def true_heatmap_location(box: list[float], point: np.ndarray, rotation_deg: float) -> tuple[np.ndarray, np.ndarray]:
    matrix = crop_matrix(box, rotation_deg)
    return matrix, transform_points(point, matrix) / STRIDE


@settings(max_examples=200, deadline=None)
@given(x1=coord, y1=coord, w=side, h=side, u=fraction, v=fraction, rot=rotation)
def test_round_trip_dark_and_quarter(
    x1: float, y1: float, w: float, h: float, u: float, v: float, rot: float
) -> None:
    box = [x1, y1, x1 + w, y1 + h]
    point = np.array([x1 + u * w, y1 + v * h])
    matrix, hm_point = true_heatmap_location(box, point, rot)
    assume(in_heatmap_interior(hm_point))
    heatmaps = render_heatmaps(hm_point[None, None])
    matrices = matrix[None]

    coords, _ = decode_heatmaps(heatmaps, "dark")
    image_point = heatmap_to_image(coords, matrices, STRIDE)[0, 0]
    assert np.linalg.norm(image_point - point) < 0.1

    # "quarter" is off by at most 0.25 heatmap px per axis (argmax is the nearest pixel, the offset
    # is 0.25 toward the true peak), i.e. at most 0.25 * sqrt(2) heatmap px, scaled to image pixels.
    coords, _ = decode_heatmaps(heatmaps, "quarter")
    assert np.all(np.abs(coords[0, 0] - hm_point) <= 0.25 + 1e-9)
    image_point = heatmap_to_image(coords, matrices, STRIDE)[0, 0]
    bound = 0.25 * math.sqrt(2) * image_px_per_heatmap_px(matrix)
    assert np.linalg.norm(image_point - point) <= bound + 1e-9


def test_heatmap_to_image_uses_each_crop_matrix() -> None:
    boxes = [[0, 0, 96, 128], [100, 50, 196, 178]]
    matrices = np.stack([crop_matrix(box) for box in boxes])
    coords = np.array([[[HM_W / 2, HM_H / 2], [0.0, 0.0]]] * 2)
    out = heatmap_to_image(coords, matrices, STRIDE)
    np.testing.assert_allclose(out[:, 0], [[48, 64], [148, 114]], atol=1e-9)
    np.testing.assert_allclose(out[0, 1], [48 - 96 * 1.25 / 2, 64 - 128 * 1.25 / 2], atol=1e-9)


def test_decode_scores_are_heatmap_maxima() -> None:
    rng = np.random.default_rng(0)
    heatmaps = rng.random((3, 17, HM_H, HM_W)) * rng.random((3, 17, 1, 1))
    for method in ("quarter", "dark"):
        coords, scores = decode_heatmaps(heatmaps, method)
        assert coords.shape == (3, 17, 2) and coords.dtype == np.float64 and scores.shape == (3, 17)
        np.testing.assert_array_equal(scores, heatmaps.max(axis=(2, 3)))


@pytest.mark.parametrize("method", ["quarter", "dark"])
def test_all_zero_heatmaps_decode_without_nan(method: str) -> None:
    coords, scores = decode_heatmaps(np.zeros((2, 17, HM_H, HM_W), np.float32), method)
    assert np.all(np.isfinite(coords)) and np.all(scores == 0)


@pytest.mark.parametrize("method", ["quarter", "dark"])
def test_empty_batch_decodes_to_empty_arrays(method: str) -> None:
    coords, scores = decode_heatmaps(np.zeros((0, 17, HM_H, HM_W)), method)
    assert coords.shape == (0, 17, 2) and scores.shape == (0, 17)


def dark_reference(heatmap: np.ndarray, kernel: int = 11) -> np.ndarray:
    """DARK's published per-map code (argmax, cv2 blur of the zero-padded map, log, Taylor step)."""
    h, w = heatmap.shape
    y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    border = (kernel - 1) // 2
    padded = np.zeros((h + 2 * border, w + 2 * border))
    padded[border:-border, border:-border] = heatmap
    blurred = cv2.GaussianBlur(padded, (kernel, kernel), 0)[border:-border, border:-border]
    hm = np.log(np.maximum(blurred * heatmap.max() / blurred.max(), 1e-10))
    coord = np.array([x, y], dtype=np.float64)
    if 1 < x < w - 2 and 1 < y < h - 2:
        dx = 0.5 * (hm[y][x + 1] - hm[y][x - 1])
        dy = 0.5 * (hm[y + 1][x] - hm[y - 1][x])
        dxx = 0.25 * (hm[y][x + 2] - 2 * hm[y][x] + hm[y][x - 2])
        dxy = 0.25 * (hm[y + 1][x + 1] - hm[y - 1][x + 1] - hm[y + 1][x - 1] + hm[y - 1][x - 1])
        dyy = 0.25 * (hm[y + 2][x] - 2 * hm[y][x] + hm[y - 2][x])
        hessian = np.array([[dxx, dxy], [dxy, dyy]])
        if np.linalg.det(hessian) != 0:
            coord -= np.linalg.inv(hessian) @ np.array([dx, dy])
    return coord


def test_dark_matches_reference_per_map_code() -> None:
    rng = np.random.default_rng(1)
    points = rng.uniform([2.0, 2.0], [HM_W - 3.0, HM_H - 3.0], size=(2, 17, 2))
    sigmas = rng.uniform(1.5, 3.0, size=(2, 17, 1, 1))
    heatmaps = render_heatmaps(points, sigmas) * rng.uniform(0.2, 1.0, size=(2, 17, 1, 1))
    heatmaps += 0.1 * render_heatmaps(rng.uniform(0, HM_W, size=(2, 17, 2)))  # a weaker second bump
    coords, _ = decode_heatmaps(heatmaps, "dark")
    expected = np.array([[dark_reference(m) for m in maps] for maps in heatmaps])
    np.testing.assert_allclose(coords, expected, atol=1e-9)


@pytest.mark.parametrize("method", ["quarter", "dark"])
def test_peak_on_border_gets_no_offset(method: str) -> None:
    heatmaps = render_heatmaps(np.array([[[0.0, 1.0], [HM_W - 1.0, HM_H - 1.0]]]))
    coords, _ = decode_heatmaps(heatmaps, method)
    np.testing.assert_array_equal(coords[0, 0, 0], 0.0)
    np.testing.assert_array_equal(coords[0, 1], [HM_W - 1.0, HM_H - 1.0])


def test_quarter_moves_toward_higher_neighbour() -> None:
    coords, _ = decode_heatmaps(render_heatmaps(np.array([[[20.3, 30.8]]])), "quarter")
    np.testing.assert_allclose(coords[0, 0], [20.25, 31.0 - 0.25])


def test_decode_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="method"):
        decode_heatmaps(np.zeros((1, 1, 8, 8)), "soft")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dark_kernel"):
        decode_heatmaps(np.zeros((1, 1, 8, 8)), "dark", dark_kernel=4)
    with pytest.raises(ValueError, match="shape"):
        decode_heatmaps(np.zeros((17, 8, 8)))


# ---------------------------------------------------------------- flip test


def mirrored_heatmap_location(hm_point: np.ndarray) -> np.ndarray:
    """Where the mirrored crop puts a point: input x -> INPUT_W - 1 - x, in heatmap pixels."""
    x_input, y_input = hm_point * STRIDE
    return np.array([INPUT_W - 1 - x_input, y_input]) / STRIDE


@settings(max_examples=200, deadline=None)
@given(x1=coord, y1=coord, w=side, h=side, u=fraction, v=fraction)
def test_flip_round_trip_exact_shift(x1: float, y1: float, w: float, h: float, u: float, v: float) -> None:
    box = [x1, y1, x1 + w, y1 + h]
    point = np.array([x1 + u * w, y1 + v * h])
    matrix, hm_point = true_heatmap_location(box, point, 0.0)
    mirrored = mirrored_heatmap_location(hm_point)
    assume(in_heatmap_interior(hm_point) and in_heatmap_interior(mirrored))
    merged = merge_flip(render_heatmaps(hm_point[None, None]), render_heatmaps(mirrored[None, None]), [], INPUT_W)
    coords, _ = decode_heatmaps(merged, "dark")
    image_point = heatmap_to_image(coords, matrix[None], STRIDE)[0, 0]
    assert np.linalg.norm(image_point - point) < 0.1


def test_flip_back_swaps_left_and_right_channels() -> None:
    true_points = np.full((17, 2), [HM_W / 2, HM_H / 2])
    true_points[LEFT_WRIST] = [12.3, 40.6]
    true_points[RIGHT_WRIST] = [33.7, 20.2]
    # On the mirrored crop the person's left wrist looks like a right wrist, and vice versa.
    mirrored = np.array([mirrored_heatmap_location(p) for p in true_points])
    mirrored[[LEFT_WRIST, RIGHT_WRIST]] = mirrored[[RIGHT_WRIST, LEFT_WRIST]]
    back = flip_heatmaps_back(render_heatmaps(mirrored[None]), FLIP_PAIRS, INPUT_W)
    coords, _ = decode_heatmaps(back, "dark")
    np.testing.assert_allclose(coords[0], true_points, atol=0.02)


def test_pixel_shift_moves_peak_one_pixel_right_of_plain_mirror() -> None:
    heatmaps = render_heatmaps(np.array([[[17.4, 22.9], [30.0, 40.0]]]))
    plain = heatmaps[..., ::-1]
    back = flip_heatmaps_back(heatmaps, [], INPUT_W, shift="pixel")
    np.testing.assert_array_equal(back[..., 1:], plain[..., :-1])
    (plain_coords, _), (back_coords, _) = decode_heatmaps(plain, "dark"), decode_heatmaps(back, "dark")
    np.testing.assert_allclose(back_coords - plain_coords, [[[1.0, 0.0], [1.0, 0.0]]], atol=1e-9)


def test_exact_shift_moves_peak_by_one_minus_inverse_stride() -> None:
    heatmaps = render_heatmaps(np.array([[[17.4, 22.9]]]))
    plain_coords, _ = decode_heatmaps(heatmaps[..., ::-1], "dark")
    back_coords, _ = decode_heatmaps(flip_heatmaps_back(heatmaps, [], INPUT_W, shift="exact"), "dark")
    np.testing.assert_allclose(back_coords - plain_coords, [[[1.0 - 1.0 / STRIDE, 0.0]]], atol=0.01)


def test_merge_flip_rejects_unknown_shift() -> None:
    with pytest.raises(ValueError, match="shift"):
        merge_flip(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 8, 8)), [], 32, shift="half")  # type: ignore[arg-type]


# ---------------------------------------------------------------- draw_poses


def test_draw_poses_draws_on_a_copy() -> None:
    image = np.zeros((240, 320, 3), np.uint8)
    keypoints = [[0.0, 0.0, 0.0]] * 17
    keypoints[0] = [100.0, 80.0, 0.9]  # visible nose
    keypoints[LEFT_WRIST] = [200.0, 150.0, 0.1]  # below the threshold
    drawn = draw_poses(image, [{"box": [50, 40, 260, 220], "keypoints": keypoints}])
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert not image.any()
    assert drawn[80, 100].any()
    assert not drawn[150, 200].any()


def test_draw_poses_colours_left_and_right_differently() -> None:
    image = np.zeros((240, 320, 3), np.uint8)
    keypoints = [[0.0, 0.0, 0.0]] * 17
    keypoints[LEFT_WRIST] = [100.0, 100.0, 0.9]
    keypoints[RIGHT_WRIST] = [200.0, 100.0, 0.9]
    drawn = draw_poses(image, [{"box": [10, 10, 300, 230], "keypoints": keypoints}])
    assert drawn[100, 100].any() and drawn[100, 200].any()
    assert drawn[100, 100].tolist() != drawn[100, 200].tolist()


def test_box_coverage_is_the_share_of_each_box_that_another_covers() -> None:
    from effpose.processing.boxes import box_coverage

    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 5.0, 9.0]])  # the second has no area
    covers = np.array([[5.0, 0.0, 20.0, 10.0], [0.0, 0.0, 2.0, 2.0], [30.0, 30.0, 40.0, 40.0]])
    np.testing.assert_allclose(box_coverage(boxes, covers), [[0.5, 0.04, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(box_coverage(covers[:1], boxes[:1]), [[5 / 15]])  # not symmetric, unlike IoU
