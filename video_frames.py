"""Sampling frames from a video with PyAV: a few per second, in bounded memory.

`VideoFrameExtractor` yields `VideoFrame`s (RGB array plus timestamp) at a fixed rate. It decodes
packets as they come, converts to RGB only the frames it keeps (selected by timestamp), asks the
decoder to skip non-reference frames when it samples sparsely, seeks forward when the next
sample is far ahead, and stops at a cap on seconds analysed. Memory holds one decoded frame and
the decoder's own buffers, whatever the file's size or length; kept frames are downscaled to
`max_side` during the colour conversion.

The public names are re-exported by `media_processor`; import them from there.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from media_decode import DEFAULT_MAX_PIXELS, MediaError, describe_content, read_head, sniff_kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoFrame:
    """One sampled frame."""

    time: float         # seconds from the start of the video stream
    image: np.ndarray   # RGB uint8 (H, W, 3), upright, at most max_side px on its longer side
    scale: float        # original frame pixels per pixel of `image` (1.0 when not downscaled)


class VideoFrameExtractor:
    """Iterate over the frames of a video file at `frame_rate` frames per second.

    Every iteration opens the file afresh and closes it when done (or when the loop is left
    early). Raises `MediaError` if the file isn't a video (audio only, corrupt, not a container)
    or if no frame at all can be decoded; a file that breaks off after some frames were yielded
    ends the iteration there with a warning, since those frames are valid. `OSError` if the file
    can't be opened at all.
    """

    # Sample spacing, in source frames, from which skipping non-reference frames pays off.
    _SKIP_NONREF_FROM = 8
    # A sanity bound on frames decoded per second analysed, for files whose timestamps never
    # advance; real videos stay far below it.
    _MAX_DECODED_PER_SECOND = 240

    def __init__(self, path: str | os.PathLike, *, frame_rate: float, max_seconds: float,
                 max_side: int = 1280, max_pixels: int = DEFAULT_MAX_PIXELS,
                 seek_gap: float = 4.0) -> None:
        if frame_rate <= 0 or max_seconds <= 0:
            raise ValueError("frame_rate and max_seconds must be positive")
        self.path = os.fspath(path)
        self.frame_rate = frame_rate
        self.max_seconds = max_seconds
        self.max_side = max_side
        self.max_pixels = max_pixels
        self.seek_gap = seek_gap  # seconds to the next sample beyond which seeking beats decoding

    def __iter__(self) -> Iterator[VideoFrame]:
        import av

        try:
            container = av.open(self.path, metadata_errors="ignore")
        except av.FFmpegError as exc:
            raise MediaError(self._unreadable_message(exc)) from None
        try:
            stream = self._video_stream(container)
            yield from self._sample(container, stream)
        finally:
            container.close()

    def _unreadable_message(self, exc: Exception) -> str:
        try:
            head = read_head(self.path)
        except OSError:
            head = b""
        if not head:
            return f"{self.path}: the file is empty (0 bytes)"
        what = describe_content(head) if sniff_kind(head) != "video" else "a corrupt video"
        return f"{self.path}: not a readable video (the content is {what}; {exc})"

    def _video_stream(self, container: Any) -> Any:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise MediaError(f"{self.path}: no video stream (contains {', '.join(kinds)})")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > self.max_pixels:
            raise MediaError(f"{self.path}: {width}x{height} video frames exceed the limit of "
                             f"{self.max_pixels / 1e6:.0f} megapixels")
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        if rate and rate / self.frame_rate >= self._SKIP_NONREF_FROM:
            # Frames nothing else refers to (most B-frames) needn't be decoded at all when we
            # keep one in several; the kept frame is then at most a frame or two late.
            stream.codec_context.skip_frame = "NONREF"
        return stream

    def _sample(self, container: Any, stream: Any) -> Iterator[VideoFrame]:
        import av

        interval = 1.0 / self.frame_rate
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else None
        fallback_rate = float(stream.average_rate or stream.guessed_rate or 25)
        half_frame = 0.5 / fallback_rate
        budget = int(self._MAX_DECODED_PER_SECOND * self.max_seconds) + 1000
        next_time, yielded, decoded, last_time = 0.0, 0, 0, -math.inf
        may_seek, just_seeked = True, False
        while True:
            seeked = False
            try:
                for frame in container.decode(stream):
                    decoded += 1
                    if decoded > budget:
                        log.warning("%s: stopping after %d decoded frames (timestamps don't "
                                    "advance?)", self.path, decoded)
                        return
                    raw = frame.time if frame.time is not None else decoded / fallback_rate
                    if start is None:
                        start = raw
                    t = raw - start
                    if just_seeked:
                        just_seeked = False
                        if t <= last_time:
                            # The seek landed before where we already were: keyframes are too
                            # sparse for seeking to pay off in this file.
                            may_seek = False
                    if t >= self.max_seconds:
                        return
                    if t + half_frame < next_time:
                        continue  # not a sample: never converted to RGB
                    yield self._convert(frame, t)
                    yielded += 1
                    last_time = t
                    next_time = max(next_time + interval, t + half_frame)
                    if may_seek and next_time - t > self.seek_gap:
                        seeked = just_seeked = True
                        container.seek(int((next_time + (start or 0.0)) / stream.time_base),
                                       stream=stream, backward=True)
                        break
            except av.FFmpegError as exc:
                if not yielded:
                    raise MediaError(f"{self.path}: corrupt video, no frame could be decoded "
                                     f"({exc})") from None
                log.warning("%s: video breaks off after %.1f s (%s); using the frames before it",
                            self.path, last_time, exc)
                return
            if not seeked:
                break
        if not yielded:
            raise MediaError(f"{self.path}: no video frame could be decoded (corrupt or empty "
                             "video stream)")

    def _convert(self, frame: Any, t: float) -> VideoFrame:
        width, height = frame.width, frame.height
        if width * height > self.max_pixels:  # the stream header may not have said
            raise MediaError(f"{self.path}: {width}x{height} video frames exceed the limit of "
                             f"{self.max_pixels / 1e6:.0f} megapixels")
        scale = max(1.0, max(width, height) / self.max_side)
        if scale > 1.0:
            # swscale does the downscaling inside the colour conversion, in one pass.
            image = frame.to_ndarray(format="rgb24", width=max(2, round(width / scale)),
                                     height=max(2, round(height / scale)))
        else:
            image = frame.to_ndarray(format="rgb24")
        quarter_turns = round((frame.rotation or 0) / 90) % 4
        if quarter_turns:
            # The display matrix says how to turn the stored picture to show it upright.
            image = np.rot90(image, k=quarter_turns)
        return VideoFrame(time=t, image=np.ascontiguousarray(image), scale=scale)
