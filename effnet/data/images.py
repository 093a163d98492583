"""Turning an uploaded file into an RGB image, safely: in memory, bounded, with clear errors.

Handled: any mode Pillow reads (grayscale, 16-bit, 32-bit float, palette, alpha, CMYK, ...),
EXIF orientation (honoured), animations (first frame), tiny and extremely elongated images.
Refused with ``ValueError`` (a message fit for a user): files that are not images, truncated files,
decompression bombs (checked from the header, before any pixel is decoded) and oversized files.
Nothing is written to disk.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 40_000_000  # 40 MP: any photo; far below what would exhaust memory when decoded
EXIF_ORIENTATION = 0x0112
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
# What an upload box accepts: the file name endings of FORMATS (both pages that take images use this list).
UPLOAD_TYPES = ("png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff")


def _high_depth_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit or 32-bit single-channel images: scale by the format's range, not by clipping at 255."""
    array = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") else (array.max() if array.size and array.max() > 255 else 255.0)
    bottom = min(0.0, float(array.min())) if array.size else 0.0
    scaled = (array - bottom) / max(top - bottom, 1e-12) * 255.0
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")


def decode_image(data: bytes | Image.Image, name: str = "image", max_side: int | None = None) -> Image.Image:
    """An RGB ``PIL.Image`` from raw upload bytes (or an already opened image).

    ``max_side``: shrink so neither side exceeds it, as early as possible. A JPEG is then decoded at a
    reduced scale straight from its DCT coefficients (``draft``), so a 12-megapixel phone photo never
    exists in memory at full size; the models see 32 to 600 px anyway.
    """
    if isinstance(data, Image.Image):
        if data.mode == "RGB" and not data.getexif().get(EXIF_ORIENTATION) and _fits(data, max_side):
            return data  # already decoded: explain() and overlay() get the page's picture as is
        img = data
    else:
        if len(data) == 0:
            raise ValueError(f"{name} is empty")
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"{name} is {len(data) / 1e6:.0f} MB; images up to {MAX_FILE_BYTES / 1e6:.0f} MB are accepted")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data), formats=FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ValueError(f"{name} claims more pixels than any photo has: refused as a decompression bomb") from exc
        except UnidentifiedImageError as exc:
            raise ValueError(f"{name} is not an image this lab can read (PNG, JPEG, WebP, GIF, BMP, TIFF)") from exc
        except OSError as exc:
            raise ValueError(f"{name} is damaged or truncated ({exc})") from exc
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ValueError(f"{name} is {width}x{height} pixels, more than the {MAX_PIXELS // 1_000_000} MP accepted "
                         "(a decompression bomb, or a very large image: downscale it first)")
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animations: the first frame
        if max_side is not None and img.format == "JPEG":
            img.draft("RGB", (max_side, max_side))  # decode at 1/2, 1/4 or 1/8 scale when that still covers max_side
        img = ImageOps.exif_transpose(img)
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ValueError(f"{name} is damaged or truncated ({exc})") from exc
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = _high_depth_to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)  # transparent pixels shown on white
    img = img.convert("RGB")
    if not _fits(img, max_side):
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


def _fits(img: Image.Image, max_side: int | None) -> bool:
    return max_side is None or max(img.size) <= max_side


def release_memory() -> None:
    """Hand memory freed by decoding and CAMs back to the system (glibc's ``malloc_trim``; elsewhere a no-op).

    Measured with bench/classroom_load.py: without it, ten simultaneous 12-MP uploads left the server
    about 400 MB above where it started.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def to_uint8_tensor(img: Image.Image) -> Any:
    """RGB image -> uint8 tensor (1, 3, H, W), the form ``effnet.arch.preprocess.to_model_input`` takes."""
    import torch  # here, not above: the upload checks and the queue read images without paying for torch

    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).unsqueeze(0)
