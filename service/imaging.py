"""Bounded image decoding.

The size is read from the header before any pixel is decoded (:func:`probe_image`), so that a decompression bomb
costs nothing and the service can reserve memory for the pixels before decoding them. Large JPEGs are decoded
reduced (libjpeg's DCT scaling, PIL's draft mode) to at most ``max_decoded_pixels``; the result carries the scale
back to the original image, so that boxes and keypoints are still answered in original-image pixels. 8-bit PNGs
are decoded by OpenCV (straight to BGR, a third of PIL's peak memory); everything else by PIL. EXIF orientation is
applied; grey, palette, alpha, CMYK and 16-bit images are converted to 8-bit colour (16-bit samples
scaled, not clipped); images that cannot be made colour get :class:`NotAnImage` (415).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import NotAnImage, TooLarge

EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # orientations that swap width and height
DRAFT_SCALES = (1, 2, 4, 8)  # JPEG DCT scaling factors
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
OPENCV_PNG_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")  # 8-bit (or less) PNGs, which OpenCV reads alike
STRIP_BYTES = 4 * 1024 * 1024  # BGR bytes packed at a time
UNSUPPORTED = "body is not a supported image (JPEG, PNG, WebP, BMP, TIFF, GIF)"


@dataclass(frozen=True)
class ImageHeader:
    """What the header says: the upright size (after EXIF orientation) and the pixels a decode will produce."""

    width: int
    height: int
    format: str
    draft_scale: int  # 1, or the JPEG reduction 2, 4, 8 that keeps the decode within max_decoded_pixels

    @property
    def decoded_pixels(self) -> int:
        """Pixels of the decoded (possibly reduced) image: what its decoding holds in memory."""
        return math.ceil(self.width / self.draft_scale) * math.ceil(self.height / self.draft_scale)


@dataclass(frozen=True)
class DecodedImage:
    """A decoded BGR uint8 image (H, W, 3) and the scale from its pixels to the original image's (>= 1)."""

    pixels: np.ndarray
    width: int  # original (upright) size
    height: int

    @property
    def scale_x(self) -> float:
        return self.width / self.pixels.shape[1]

    @property
    def scale_y(self) -> float:
        return self.height / self.pixels.shape[0]

    @property
    def reduced(self) -> bool:
        return self.pixels.shape[1] != self.width or self.pixels.shape[0] != self.height


def _open(data: bytes) -> Image.Image:
    if not data:
        raise NotAnImage("empty body: send the image bytes (multipart field 'image' or a raw image body)")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as error:
        raise NotAnImage(UNSUPPORTED) from error
    except Image.DecompressionBombError as error:
        raise TooLarge(f"image too large: {error}") from error
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to parse client bytes is the client's image's fault
        raise NotAnImage(f"image header could not be read: {error}") from error


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """The size after EXIF orientation, from the header only. A PNG's EXIF may sit after the pixels, where PIL's
    ``getexif()`` would decode the whole image to find it: only an eXIf chunk before them is read here."""
    width, height = image.size
    if image.format == "PNG" and "exif" not in image.info:
        return width, height
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - a broken EXIF block only loses the orientation
        orientation = None
    return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)


def probe_image(data: bytes, max_pixels: int, max_decoded_pixels: int | None = None) -> ImageHeader:
    """Read the header only: the image's upright size, format, and the JPEG draft scale that keeps its decode
    within ``max_decoded_pixels`` (None: full size). Raises :class:`NotAnImage` for bytes that are no image and
    :class:`TooLarge` for more than ``max_pixels`` pixels."""
    image = _open(data)
    width, height = _upright_size(image)
    if width <= 0 or height <= 0:
        raise NotAnImage(f"image header announces an empty image ({width}x{height})")
    if width * height > max_pixels:
        raise TooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    scale = 1
    if image.format == "JPEG" and max_decoded_pixels is not None:
        scale = next((s for s in DRAFT_SCALES if math.ceil(width / s) * math.ceil(height / s) <= max_decoded_pixels),
                     DRAFT_SCALES[-1])
    return ImageHeader(width, height, image.format or "unknown", scale)


def decode_image(data: bytes, max_pixels: int, max_decoded_pixels: int | None = None) -> DecodedImage:
    """Decode JPEG/PNG/WebP/BMP/TIFF/GIF bytes into an upright BGR uint8 image (see the module docstring).

    Raises :class:`NotAnImage` for empty, truncated or non-image bytes and :class:`TooLarge` when the header
    announces more than ``max_pixels`` pixels (checked before decoding).
    """
    header = probe_image(data, max_pixels, max_decoded_pixels)
    image = _open(data)
    if image.format == "PNG" and image.mode in OPENCV_PNG_MODES:
        pixels = _decode_png_with_opencv(data, header)
        if pixels is not None:
            return DecodedImage(pixels, header.width, header.height)
    try:
        if header.draft_scale > 1:  # PIL picks the largest DCT scale that keeps at least the requested size
            image.draft("RGB", (image.size[0] // header.draft_scale, image.size[1] // header.draft_scale))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # not in place, it returns a full copy even when upright
        pixels = _to_bgr(image)
    except (NotAnImage, MemoryError):
        raise
    except Image.DecompressionBombError as error:
        raise TooLarge(f"image too large: {error}") from error
    except Exception as error:  # noqa: BLE001 - decoders raise many types for corrupt input; all are the client's
        raise NotAnImage(f"image could not be decoded (truncated or corrupt?): {error}") from error
    if pixels.ndim != 3 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise NotAnImage(f"decoded image has an unusable shape {pixels.shape}")
    if header.draft_scale == 1:  # full size: the pixels are the truth (even if an orientation hid from the header)
        return DecodedImage(pixels, pixels.shape[1], pixels.shape[0])
    return DecodedImage(pixels, header.width, header.height)


def _decode_png_with_opencv(data: bytes, header: ImageHeader) -> np.ndarray | None:
    """An 8-bit PNG decoded by OpenCV straight into BGR: about 3 bytes per pixel at peak instead of PIL's 7, twice
    as fast, and without holding the GIL (PIL's copies out of its own buffers do). None when OpenCV cannot decode
    it or did not turn it upright as the header says (an EXIF orientation): then PIL decodes it."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if pixels is None or pixels.shape[:2] != (header.height, header.width):
        return None
    return pixels


def _to_bgr(image: Image.Image) -> np.ndarray:
    """An 8-bit BGR copy of a loaded PIL image: 16-bit and 32-bit grey scaled to 8 bits, everything else converted."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        grey = np.asarray(image).astype(np.float32)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)  # 65535 -> 255; "I" is 16-bit PNG grey too
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if image.mode == "F":
        grey = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(grey.max()) if grey.size else 0.0
        grey = grey * 255.0 if peak <= 1.0 else grey * (255.0 / peak)
        return cv2.cvtColor(np.clip(np.rint(grey), 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    try:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
    except ValueError as error:
        raise NotAnImage(f"images of mode {image.mode} are not supported: {error}") from error
    return _bgr_in_strips(rgb)


def _bgr_in_strips(rgb: Image.Image) -> np.ndarray:
    """The BGR array of an RGB PIL image, packed by PIL strip by strip into one preallocated array.

    ``np.asarray(image)`` and ``image.tobytes()`` hold the whole image twice more while joining their chunks: at 40
    Mpx that is 240 MB above PIL's own 4 bytes per pixel. Strips keep the peak at those 4 plus the array's 3.
    """
    width, height = rgb.size
    pixels = np.empty((height, width, 3), np.uint8)
    rows = max(1, STRIP_BYTES // (3 * width))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        strip = rgb.crop((0, top, width, bottom)).tobytes("raw", "BGR")
        pixels[top:bottom] = np.frombuffer(strip, np.uint8).reshape(bottom - top, width, 3)
    return pixels


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """Encode a BGR uint8 image as ``png`` or ``jpeg`` bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[..., ::-1])).save(buffer, format="JPEG" if fmt == "jpeg" else "PNG",
                                                                  **({"quality": 90} if fmt == "jpeg" else {}))
    return buffer.getvalue()
