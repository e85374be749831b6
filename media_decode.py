"""Turning untrusted photo bytes into RGB pixels, and the one error type for bad media.

`load_image` accepts bytes, a path or an array and returns an upright (EXIF-rotated) RGB
``uint8`` array. Whatever is wrong with the input — empty, truncated, not an image, too many
pixels — surfaces as `MediaError`, so a worker can record it against the job and move on.
Problems that are not about the media (a missing staging file, a full disk) stay `OSError`:
they may go away on a retry, bad media never does.

The public names are re-exported by `media_processor`; import them from there.
"""

from __future__ import annotations

import io
import logging
import os
from typing import BinaryIO, Literal, Union

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

ImageInput = Union[bytes, bytearray, memoryview, str, os.PathLike, np.ndarray]

DEFAULT_MAX_PIXELS = 100_000_000
PREVIEW_SIDE = 640   # the long side of a photo's stored preview (media_previews)

# Only formats a Telegram photo or image document plausibly uses. Pillow can open many more,
# but some of its plugins are attack surface we don't need (EPS runs Ghostscript) and the rest
# are never photos of people. (Multi-picture JPEGs open through the JPEG plugin.)
_ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")

_HEAD_BYTES = 64


class MediaError(Exception):
    """The media itself is unusable: empty, truncated, corrupt, too large or not what it claims.

    It is permanent for that file: retrying will not help. The message names the file and
    says what is wrong with it.
    """


def read_head(path: str | os.PathLike, size: int = _HEAD_BYTES) -> bytes:
    """The first `size` bytes of a file (for `sniff_kind`). `OSError` if it can't be read."""
    with open(path, "rb") as handle:
        return handle.read(size)


def sniff_kind(head: bytes) -> Literal["photo", "video"] | None:
    """Guess from the first bytes whether this is a still image or a video container.

    Decides by content, never by file name: Telegram documents often carry the wrong extension.
    Returns None when the bytes look like neither (`describe_content` then says what they are).
    """
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM",
                        b"II*\x00", b"MM\x00*")):
        return "photo"
    if head[:4] == b"RIFF":
        if head[8:12] == b"WEBP":
            return "photo"
        if head[8:12] == b"AVI ":
            return "video"
        return None
    if head[4:8] == b"ftyp":
        # ISO-BMFF is shared by MP4/MOV/3GP and by HEIF/AVIF stills; the major brand tells.
        brand = head[8:12]
        if brand in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1", b"heif"):
            return "photo"
        return "video"
    if head.startswith((b"\x1a\x45\xdf\xa3", b"FLV", b"OggS")):  # Matroska/WebM, FLV, Ogg
        return "video"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:  # MPEG-TS sync bytes
        return "video"
    return None


def describe_content(head: bytes) -> str:
    """A few words on what the bytes are, for error messages ("a PDF document", "text")."""
    known = {b"%PDF": "a PDF document", b"PK\x03\x04": "a ZIP archive", b"\x1f\x8b": "gzip data",
             b"<!DOCTYPE": "an HTML page", b"<html": "an HTML page", b"<?xml": "an XML document"}
    for magic, what in known.items():
        if head.startswith(magic):
            return what
    kind = sniff_kind(head)
    if kind is not None:
        return f"a {kind}"
    if not head:
        return "nothing (0 bytes)"
    text = head.decode("utf-8", errors="replace")  # the head may end inside a character
    if text.count("\ufffd") > 1:
        return "unrecognised binary data"
    return "text" if all(c.isprintable() or c.isspace() for c in text) else "unrecognised data"


def load_image(image: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               name: str | None = None) -> np.ndarray:
    """Decode a photo into an upright RGB ``uint8`` array of shape (H, W, 3).

    `image` is encoded bytes, a path, or an already decoded array (H×W grey, H×W×3 RGB or
    H×W×4 RGBA; ``uint8`` or ``uint16``). EXIF orientation is applied; greyscale, palette, CMYK,
    16-bit and alpha images are converted (alpha is composited onto white, so a transparent
    background doesn't turn black). The dimensions are checked against `max_pixels` from the
    header, before any pixel is decoded, so a decompression bomb costs nothing.

    Raises `MediaError` for bad media; `OSError` if a path can't be read at all.
    """
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, max_pixels=max_pixels, name=name or "<array>")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(image)), max_pixels=max_pixels, label=name or "<bytes>")
    with open(image, "rb") as handle:  # OSError (missing file, no permission) propagates
        return _decode(handle, max_pixels=max_pixels, label=name or str(image))


def preview_jpeg(path: str | os.PathLike, *, side: int = PREVIEW_SIDE,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """A small upright JPEG of a photo (long side at most `side`): what the dashboard shows of
    the whole photo once the file is gone. Decoded with `load_image`'s checks; `MediaError` or
    `OSError` as it raises them."""
    with open(path, "rb") as handle:
        # draft: a JPEG is decoded at 1/2, 1/4 or 1/8 of its size straight away (no full-size
        # pixels in memory, in the daemon's own process)
        im = Image.fromarray(_decode(handle, max_pixels=max_pixels, label=str(path), draft=(side, side)))
    im.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=80, optimize=True)
    return out.getvalue()


def _decode(handle: BinaryIO, *, max_pixels: int, label: str,
            draft: tuple[int, int] | None = None) -> np.ndarray:
    head = handle.read(_HEAD_BYTES)
    if not head:
        raise MediaError(f"{label}: the file is empty (0 bytes)")
    handle.seek(0)
    try:
        im = Image.open(handle, formats=_ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise MediaError(f"{label}: refusing to decode a decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise MediaError(f"{label}: not a supported image ({_what_instead(head)})") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise a zoo of types on bad headers
        raise MediaError(f"{label}: corrupt or truncated image header "
                         f"({type(exc).__name__}: {exc})") from None
    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise MediaError(f"{label}: image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise MediaError(
                f"{label}: {width}x{height} = {width * height / 1e6:.0f} megapixels exceeds the "
                f"limit of {max_pixels / 1e6:.0f} megapixels (decompression bomb or oversized)")
        try:
            if draft is not None:
                im.draft("RGB", draft)
            im.load()
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - truncated data: OSError, SyntaxError, EOFError…
            raise MediaError(f"{label}: corrupt or truncated {im.format} image "
                             f"({type(exc).__name__}: {exc})") from None
        upright = _upright(im, label)
        try:
            return _pil_to_rgb(upright)
        except (ValueError, OSError) as exc:  # e.g. a LAB or HSV image Pillow can't convert
            raise MediaError(f"{label}: unsupported {upright.mode} image ({exc})") from None


def _what_instead(head: bytes) -> str:
    kind = sniff_kind(head)
    if kind == "video":
        return "the content is a video"
    if kind == "photo":
        return "an image format or variant that can't be decoded here, or a corrupt header"
    return f"the content is {describe_content(head)}"


def _upright(im: Image.Image, label: str) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not lose a good photo
        log.warning("%s: ignoring unreadable EXIF orientation (%s); using the stored orientation",
                    label, exc)
        return im


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # Pillow's convert("RGB") clips these to 255 instead of scaling: rescale ourselves.
        values = np.asarray(im, dtype=np.float32)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        grey = np.clip(values * (255.0 / top), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    # CMYK (including Adobe's inverted JPEGs, which Pillow already un-inverts), L, P, YCbCr, 1
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _array_to_rgb(array: np.ndarray, *, max_pixels: int, name: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise MediaError(f"{name}: expected an H×W, H×W×3 or H×W×4 array, got shape {array.shape}")
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise MediaError(f"{name}: image has no pixels ({width}x{height})")
    if height * width > max_pixels:
        raise MediaError(f"{name}: {width}x{height} exceeds the limit of "
                         f"{max_pixels / 1e6:.0f} megapixels")
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise MediaError(f"{name}: expected a uint8 or uint16 array, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 4:
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        array = (array[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(array)
