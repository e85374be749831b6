"""Helpers that make test media: videos from photos, a decompression bomb, broken files.

Used by the face tests and by bench/bench_faces.py; nothing here needs the database.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def letterbox(photo: Path | Image.Image, size: tuple[int, int]) -> np.ndarray:
    """`photo` scaled to fit `size` (width, height) on a grey background, as an RGB array."""
    im = photo if isinstance(photo, Image.Image) else Image.open(photo)
    im = im.convert("RGB")
    im.thumbnail(size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", size, (90, 90, 90))
    canvas.paste(im, ((size[0] - im.width) // 2, (size[1] - im.height) // 2))
    return np.asarray(canvas)


def write_video(path: Path, segments: Sequence[tuple[np.ndarray, float]], *, fps: int = 10,
                codec: str = "libx264", gop: int | None = None) -> Path:
    """Encode an H.264 MP4 showing each (RGB image, seconds) segment in turn; return `path`."""
    import av

    height, width = segments[0][0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        for image, seconds in segments:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for _ in range(round(seconds * fps)):
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_only_mp4(path: Path, seconds: float = 1.0) -> Path:
    """An MP4 with one AAC audio stream and no video."""
    import av

    rate = 44100
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate)
        samples = np.sin(np.arange(int(rate * seconds)) * 2 * np.pi * 440 / rate).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = samples[start:start + 1024][None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid 1-bit greyscale PNG of width×height black pixels, compressed to ~100 KB.

    900 megapixels once decoded (2.7 GB as RGB): what a decompression-bomb guard must refuse.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


def faces_dir() -> Path:
    """The labelled test photos: $FACES_DIR, else tests/faces next to the repository."""
    import os

    root = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("FACES_DIR", root / "tests" / "faces"))
