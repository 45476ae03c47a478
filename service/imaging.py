"""Bounded image decoding: size checked from the header before pixels are decoded; EXIF orientation applied."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import NotAnImage, TooLarge


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode JPEG/PNG/WebP/BMP/TIFF/GIF bytes into a BGR uint8 array (H, W, 3), upright per EXIF.

    Grey, palette, 16-bit and alpha images are converted to colour (alpha is dropped). Raises
    :class:`NotAnImage` for empty, truncated or non-image bytes and :class:`TooLarge` when the header
    announces more than ``max_pixels`` pixels (checked before decoding, so a decompression bomb costs nothing).
    """
    if not data:
        raise NotAnImage("empty body: send the image bytes (multipart field 'image' or a raw image body)")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise TooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
        image.load()
        image = ImageOps.exif_transpose(image)
        rgb = np.asarray(image.convert("RGB"))
    except TooLarge:
        raise
    except Image.DecompressionBombError as error:
        raise TooLarge(f"image too large: {error}") from error
    except UnidentifiedImageError as error:
        raise NotAnImage("body is not a supported image (JPEG, PNG, WebP, BMP, TIFF, GIF)") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise NotAnImage(f"image could not be decoded (truncated or corrupt?): {error}") from error
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise NotAnImage(f"decoded image has an unusable shape {rgb.shape}")
    return np.ascontiguousarray(rgb[..., ::-1])


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """Encode a BGR uint8 image as ``png`` or ``jpeg`` bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[..., ::-1])).save(buffer, format="JPEG" if fmt == "jpeg" else "PNG",
                                                                  **({"quality": 90} if fmt == "jpeg" else {}))
    return buffer.getvalue()
