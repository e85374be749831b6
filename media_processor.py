"""Faces in photos and videos: detection, embedding, quality and crops behind one interface.

`FaceProcessor` wraps one of two engines (`ENGINES`): ``insightface`` (``buffalo_l``: SCRFD
detector, ArcFace 512-d; the default) or ``dlib`` (HOG detector checked by dlib's CNN, 5-point
alignment, ResNet 128-d; no download needed). Both give the same `DetectedFace`s. A video is
sampled by `VideoFrameExtractor`; its faces are grouped into tracks, one per person in the
clip, and each track gives its best few faces.

Everything here is synchronous and CPU-bound; the daemon runs it in an executor. Bad media raises
`MediaError` (permanent for that file); missing model files raise `ModelUnavailableError`.
Importing this module is cheap: the models and their libraries load on first use.

Command line: ``python media_processor.py [--engine dlib] [--embeddings] FILE…`` prints one JSON
line per file and exits 1 if any file could not be read.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from face_engines import Candidate, DlibEngine, InsightFaceEngine, ModelUnavailableError, RawFace
from face_engines import download_insightface_models
from face_engines import box_iou, raw_face_from_insightface
from media_decode import DEFAULT_MAX_PIXELS, ImageInput, MediaError, load_image, read_head
from media_decode import sniff_kind
from video_frames import VideoFrame, VideoFrameExtractor

__all__ = ["DetectedFace", "ENGINES", "EngineInfo", "FaceProcessor", "MediaError",
           "ModelUnavailableError", "VideoFrame", "download_insightface_models", "VideoFrameExtractor", "face_quality",
           "build_face", "detected_face_from_insightface", "link_tracks", "main"]

log = logging.getLogger(__name__)

DEFAULT_VIDEO_FRAME_RATE = 1.0
DEFAULT_MODELS_DIR = Path("data") / "models"   # config.Settings' default MODELS_DIR (DATA_DIR/models)
DEFAULT_VIDEO_MAX_SECONDS = 600.0


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make field-wise == ambiguous
class DetectedFace:
    """One face found in a photo or a video frame."""

    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the upright image/frame
    landmarks: np.ndarray                    # (5, 2) float32: eyes (image left, right), nose, mouth
    det_score: float                         # detector confidence in [0, 1]
    embedding: np.ndarray                    # (dim,) float32, unit length
    quality: float                           # in [0, 1], see `face_quality`
    crop_jpeg: bytes                         # JPEG of the face with margin, longest side <= 160
    frame_time: float | None = None          # seconds into the video; None for photos
    track_id: int | None = None              # the person within the video; None for photos


@dataclass(frozen=True)
class EngineInfo:
    """What the rest of the system must know about an engine's embeddings."""

    name: str
    dimension: int
    default_similarity_threshold: float  # cosine similarity for a face to join a person
    default_seed_threshold: float        # stricter: among the faces that found a new person


ENGINES: dict[str, EngineInfo] = {
    # Thresholds are for the matcher's average linkage (identity_matcher.py: a face's mean
    # similarity to a person's faces), chosen at a stated false-accept rate (FAR) of single
    # pairs of different people, on an open set with many strangers.
    #
    # ArcFace (buffalo_l, R50 on WebFace600K; its weights can't be fetched here, so from the
    # published figures, research/face_anchors.md §6, §10-11): ArcFace embeddings of different
    # people are near-orthogonal in 512-d (impostor cosine centred near 0.0, spread ~0.1), and
    # buffalo_l reaches TAR 97.25 % at FAR 1e-4 on IJB-C, whose 1e-4 operating point lies near
    # cosine 0.3-0.35; PhotoPrism calibrates its core link at ~0.43 (TAR 0.9943 at FAR 0.14 %)
    # and Immich defaults to 0.50. Join 0.55 is therefore beyond FAR 1e-6 for single pairs (the
    # impostor tail falls off by roughly a decade per 0.05), and seeding at 0.60 further still.
    "insightface": EngineInfo("insightface", 512, 0.55, 0.60),
    # dlib, measured on ../shared/faces-lfw (bench/lfw_embeddings.py, then bench/tune_persons.py
    # --impostors): the 5,107 centred faces of quality >= 0.5 give 35,265 same-person pairs and
    # 13.0 M pairs of different people. Cosine 0.93 has FAR 5.5e-4 (TAR 0.91), 0.945 FAR 4.7e-5
    # (TAR 0.70); FAR 1e-4 is at 0.941, 1e-5 at 0.953. dlib's scale is compressed and its
    # look-alikes are many (East Asian faces above all), so the pairwise FAR alone can't keep
    # persons pure at archive scale: the matcher adds the person's cohesion and the support of
    # the neighbours (match_rules.py), and these two numbers were chosen with them, by
    # simulating the matcher on the 5,130 photos in three orders (bench/tune_persons.py):
    # pairwise precision >= 0.99 in each.
    "dlib": EngineInfo("dlib", 128, 0.93, 0.945),
}

# Quality: a weighted geometric mean, so one bad component pulls the score down however good
# the others are (a sharp frontal 20 px face is still useless). Components are floored so that
# the order among poor faces still means something.
_QUALITY_WEIGHTS = {"detector": 0.25, "size": 0.30, "sharpness": 0.25, "pose": 0.20}
_QUALITY_FLOOR = 0.02
_SIZE_USELESS, _SIZE_FULL = 20.0, 160.0     # face side in px (sqrt of box area), log scale
# Laplacian variance of the face (at most 96 px wide), log scale. On the fixture photos the
# originals gave 250-5350, a Gaussian blur of 1 px 45-590, of 2 px 7-290 (big faces suffer
# least, rightly: they stay sharp at the embedding's 112 px). Ente calls < 10 unusable.
_SHARP_LOW, _SHARP_HIGH = 10.0, 250.0
_SHARP_SIDE = 96
_CROP_SIDE = 160


class FaceProcessor:
    """Find faces in photos and videos with one engine; see the module docstring.

    The model loads on first use, once per process, under a lock: processors with the same
    engine settings share one loaded model, so making one is cheap. A processor pickles as its
    settings, for process pools; in the receiving process it loads the model on first use,
    once, however many tasks carry it. Use processes, not threads, for dlib: it holds the GIL
    while it computes (a thread running it stalls an event loop in the same process).
    """

    def __init__(self, engine: str = "insightface", *, models_dir: Path | None = None,
                 min_quality: float = 0.0, det_size: int = 640, min_face_size: int = 40,
                 max_pixels: int = DEFAULT_MAX_PIXELS, video_max_side: int = 1280,
                 similarity_threshold: float | None = None) -> None:
        """`engine`: a key of `ENGINES`. `models_dir`: MODELS_DIR (insightface looks in
        ``models_dir/models/buffalo_l``; default ``data/models``, the settings' default MODELS_DIR). `min_quality`: faces below
        are dropped (with dlib, before they are embedded). `det_size`: insightface's detector
        input. `min_face_size`: smallest face dlib looks for, in px. `max_pixels`: larger
        images and video frames are `MediaError`.
        `similarity_threshold`: for linking faces within a video (default: the engine's)."""
        if engine not in ENGINES:
            raise ValueError(f"unknown face engine {engine!r}; choose one of {', '.join(ENGINES)}")
        self._settings = dict(engine=engine, models_dir=models_dir, min_quality=min_quality,
                              det_size=det_size, min_face_size=min_face_size,
                              max_pixels=max_pixels, video_max_side=video_max_side,
                              similarity_threshold=similarity_threshold)
        self.info = ENGINES[engine]
        self.min_quality = min_quality
        self.max_pixels = max_pixels
        self.video_max_side = video_max_side
        self.link_threshold = similarity_threshold or self.info.default_similarity_threshold
        self._engine = _shared_engine(engine, Path(models_dir or DEFAULT_MODELS_DIR).expanduser(),
                                      det_size, min_face_size)

    def __getstate__(self) -> dict:
        return self._settings

    def __setstate__(self, settings: dict) -> None:
        self.__init__(**settings)

    def load(self) -> None:
        """Load the model now instead of on first use (e.g. to fail fast at start-up)."""
        self._engine.load()

    def detect(self, image: ImageInput, *, name: str | None = None) -> list[DetectedFace]:
        """The faces in a photo (bytes, path or RGB array), best quality first.

        `name` labels bytes/arrays in error messages. Raises `MediaError` for bad input.
        """
        return self.faces_in_rgb(load_image(image, max_pixels=self.max_pixels, name=name))

    def faces_in_rgb(self, rgb: np.ndarray, *, frame_time: float | None = None,
                     scale: float = 1.0) -> list[DetectedFace]:
        """The faces in a decoded, upright RGB array; boxes are multiplied by `scale`."""
        def good_enough(candidate: Candidate) -> bool:
            return face_quality(rgb, candidate) >= self.min_quality

        # Both engines drop the faces `keep` turns down, so what comes back is good enough.
        # Quality needs no embedding: with dlib, faces that would be dropped are never embedded
        # (the daemon's MIN_QUALITY_THRESHOLD is 0.5, and an embedding costs ~160 ms with dlib).
        faces = [build_face(rgb, raw, frame_time=frame_time, scale=scale) for raw in
                 self._engine.detect(rgb, keep=good_enough if self.min_quality > 0 else None)]
        return sorted(faces, key=lambda f: -f.quality)

    def analyse_video(self, path: str | os.PathLike, *, frame_rate: float = DEFAULT_VIDEO_FRAME_RATE,
                      max_seconds: float = DEFAULT_VIDEO_MAX_SECONDS,
                      best_per_track: int = 3) -> list[DetectedFace]:
        """The best `best_per_track` faces of each person in a video, ordered by track.

        Frames are sampled at `frame_rate` per second from the first `max_seconds`. Faces are
        linked across frames by embedding similarity (boosted by box overlap with the previous
        sample), so a person who leaves and comes back keeps one track; two faces of one frame
        are never one track. Raises `MediaError` for a bad video.
        """
        per_frame = [self.faces_in_rgb(frame.image, frame_time=frame.time, scale=frame.scale)
                     for frame in self.video_frames(path, frame_rate=frame_rate,
                                                    max_seconds=max_seconds)]
        tracks = link_tracks(per_frame, threshold=self.link_threshold)
        result = []
        for track_id, members in enumerate(tracks):
            best = sorted(members, key=lambda f: (-f.quality, f.frame_time))[:best_per_track]
            result.extend(dataclasses.replace(f, track_id=track_id)
                          for f in sorted(best, key=lambda f: f.frame_time))
        return result

    def video_frames(self, path: str | os.PathLike, *, frame_rate: float,
                     max_seconds: float) -> VideoFrameExtractor:
        """The frame sampler `analyse_video` uses, with this processor's size limits."""
        return VideoFrameExtractor(path, frame_rate=frame_rate, max_seconds=max_seconds,
                                   max_side=self.video_max_side, max_pixels=self.max_pixels)

    def analyse_file(self, path: str | os.PathLike, *, kind: Literal["photo", "video"],
                     frame_rate: float = DEFAULT_VIDEO_FRAME_RATE,
                     max_seconds: float = DEFAULT_VIDEO_MAX_SECONDS,
                     best_per_track: int = 3) -> list[DetectedFace]:
        """Faces of a downloaded media file; what the worker calls.

        The content decides how the file is read; `kind` (from Telegram's media type) is only
        the fallback when the first bytes say nothing, so a video sent as a "photo" document or
        a JPEG named ``.mp4`` still works. Raises `MediaError` for bad media, `OSError` if the
        file can't be read at all.
        """
        sniffed = sniff_kind(read_head(path))
        if sniffed is not None and sniffed != kind:
            log.info("%s: expected a %s but the content is a %s; reading it as such",
                     path, kind, sniffed)
        if (sniffed or kind) == "video":
            return self.analyse_video(path, frame_rate=frame_rate, max_seconds=max_seconds,
                                      best_per_track=best_per_track)
        return self.detect(path)


@functools.cache
def _shared_engine(engine: str, models_dir: Path, det_size: int, min_face_size: int) -> Any:
    if engine == "insightface":
        return InsightFaceEngine(models_dir, det_size=det_size)
    return DlibEngine(min_face_size=min_face_size)


def build_face(rgb: np.ndarray, raw: RawFace, *, frame_time: float | None = None,
               scale: float = 1.0) -> DetectedFace:
    """A DetectedFace from an engine's face in `rgb`: quality and crop are measured in `rgb`
    (what the engine saw), box and landmarks are multiplied by `scale` (to the original frame)."""
    return DetectedFace(
        bbox=tuple(float(v) * scale for v in raw.bbox),
        landmarks=(raw.landmarks * scale).astype(np.float32),
        det_score=raw.det_score, embedding=raw.embedding,
        quality=face_quality(rgb, raw), crop_jpeg=face_crop_jpeg(rgb, raw.bbox),
        frame_time=frame_time)


def detected_face_from_insightface(rgb: np.ndarray, face: Any) -> DetectedFace:
    """An ``insightface.app.common.Face`` found in `rgb` (bbox, kps, det_score, embedding) as a
    DetectedFace; what the insightface engine's output becomes."""
    return build_face(rgb, raw_face_from_insightface(face))


# --- quality and crops -------------------------------------------------------------------------


def quality_components(rgb: np.ndarray, raw: RawFace | Candidate) -> dict[str, float]:
    """The four parts of `face_quality`, each in [0, 1]. (`raw` needs no embedding.)

    - detector: the engine's confidence.
    - size: the face's side (square root of the box area) on a log scale from 20 px (useless)
      to 160 px (the crop size; ArcFace itself sees 112 px): 40 px gives 0.33, 100 px 0.77.
    - sharpness: variance of the Laplacian of the grey face (its inner 80 %, shrunk to at most
      96 px wide, never enlarged) on a log scale from 10 (blurred) to 250 (crisp). Ente uses
      the same measure (research/face_anchors.md §7).
    - pose: how frontal the face is, from where the nose sits between the eyes along the eye
      line: 1 when centred, 0 when level with an eye (a profile).
    """
    x1, y1, x2, y2 = (float(v) for v in raw.bbox)
    side = max(1.0, (x2 - x1) * (y2 - y1)) ** 0.5
    size = np.log(side / _SIZE_USELESS) / np.log(_SIZE_FULL / _SIZE_USELESS)
    sharp_var = max(_laplacian_variance(rgb, raw.bbox), 1e-6)
    sharpness = np.log(sharp_var / _SHARP_LOW) / np.log(_SHARP_HIGH / _SHARP_LOW)
    left_eye, right_eye, nose = raw.landmarks[0], raw.landmarks[1], raw.landmarks[2]
    axis = right_eye - left_eye
    across = float(np.dot(nose - left_eye, axis) / max(float(np.dot(axis, axis)), 1e-6))
    pose = 1.0 - abs(across - 0.5) / 0.5
    parts = {"detector": raw.det_score, "size": size, "sharpness": sharpness, "pose": pose}
    return {k: float(np.clip(v, 0.0, 1.0)) for k, v in parts.items()}


def face_quality(rgb: np.ndarray, raw: RawFace | Candidate) -> float:
    """Quality in [0, 1]: the weighted geometric mean of `quality_components` (weights: detector
    0.25, size 0.30, sharpness 0.25, pose 0.20; each floored at 0.02). Blurred, small and turned
    faces score lower."""
    parts = quality_components(rgb, raw)
    return float(np.prod([max(parts[k], _QUALITY_FLOOR) ** w for k, w in _QUALITY_WEIGHTS.items()]))


def _laplacian_variance(rgb: np.ndarray, bbox: np.ndarray) -> float:
    height, width = rgb.shape[:2]
    x1, y1, x2, y2 = bbox
    # The inner part of the box: its edges are background, whose sharpness isn't the face's.
    dx, dy = (x2 - x1) * 0.1, (y2 - y1) * 0.1
    left, top = int(max(0, x1 + dx)), int(max(0, y1 + dy))
    right, bottom = int(min(width, x2 - dx)), int(min(height, y2 - dy))
    if right - left < 3 or bottom - top < 3:
        return 0.0
    grey = Image.fromarray(rgb[top:bottom, left:right]).convert("L")
    if right - left > _SHARP_SIDE:
        # Same scale for every large face; small ones stay as they are, because enlarging
        # would blur them and count their smallness twice (size already does).
        grey = grey.resize((_SHARP_SIDE, round(_SHARP_SIDE * (bottom - top) / (right - left))),
                           Image.Resampling.BOX)
    g = np.asarray(grey, dtype=np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def face_crop_jpeg(rgb: np.ndarray, bbox: np.ndarray, *, side: int = _CROP_SIDE) -> bytes:
    """A square JPEG around the face (box plus a quarter of its size on each side), at most
    `side` px, never enlarged: the cover and dashboard picture of the face."""
    height, width = rgb.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in bbox)
    half = max(x2 - x1, y2 - y1) * 0.75
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = int(max(0, cx - half)), int(max(0, cy - half))
    right, bottom = int(min(width, cx + half)), int(min(height, cy + half))
    crop = Image.fromarray(rgb[top:max(bottom, top + 1), left:max(right, left + 1)])
    crop.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    crop.save(out, format="JPEG", quality=85)
    return out.getvalue()


# --- tracks within a video -----------------------------------------------------------------


@dataclass
class _Track:
    members: list[DetectedFace]
    frames: set[int]
    total: np.ndarray        # sum of the members' embeddings; its direction is the centroid
    last_frame: int
    last_bbox: tuple[float, float, float, float]

    @property
    def centroid(self) -> np.ndarray:
        return self.total / max(float(np.linalg.norm(self.total)), 1e-12)

    def add(self, face: DetectedFace, frame: int) -> None:
        self.members.append(face)
        self.frames.add(frame)
        self.total = self.total + face.embedding
        self.last_frame, self.last_bbox = frame, face.bbox

    def absorb(self, other: _Track) -> None:
        self.members.extend(other.members)
        self.frames |= other.frames
        self.total = self.total + other.total


def link_tracks(per_frame: Sequence[Sequence[DetectedFace]], *,
                threshold: float) -> list[list[DetectedFace]]:
    """Group the faces of successive sampled frames into tracks, one per person.

    A face joins the track whose centroid it is most similar to, at or above `threshold`; it
    may fall a little short of it (a quarter of the way from the threshold to 1, so 0.02 for
    dlib and 0.11 for ArcFace, whose scales differ) when its box overlaps the track's box in
    the previous sample, which carries a face through a blurred or turned moment. Tracks are
    compared with all earlier ones, not just the recent, so someone who leaves and comes back
    keeps a track; finally tracks that never share a frame and whose centroids agree are merged.
    Two faces of one frame never share a track. Tracks are ordered by first appearance.
    """
    relaxed = threshold - 0.25 * (1.0 - threshold)
    tracks: list[_Track] = []
    for index, faces in enumerate(per_frame):
        candidates = []
        for fi, face in enumerate(faces):
            for ti, track in enumerate(tracks):
                similarity = float(face.embedding @ track.centroid)
                continuous = (track.last_frame == index - 1
                              and box_iou(face.bbox, track.last_bbox) > 0.5)
                if similarity >= (relaxed if continuous else threshold):
                    candidates.append((similarity, fi, ti))
        used_faces: set[int] = set()
        used_tracks: set[int] = set()
        for _, fi, ti in sorted(candidates, reverse=True):
            if fi not in used_faces and ti not in used_tracks:
                tracks[ti].add(faces[fi], index)
                used_faces.add(fi)
                used_tracks.add(ti)
        for fi, face in enumerate(faces):
            if fi not in used_faces:
                tracks.append(_Track([face], {index}, face.embedding.copy(), index, face.bbox))
    while True:
        pairs = [(float(a.centroid @ b.centroid), i, j)
                 for i, a in enumerate(tracks) for j, b in enumerate(tracks)
                 if i < j and not a.frames & b.frames]
        best = max(pairs, default=None)
        if best is None or best[0] < threshold:
            break
        _, i, j = best
        tracks[i].absorb(tracks.pop(j))
    return [t.members for t in sorted(tracks, key=lambda t: min(t.frames))]


# --- command line ------------------------------------------------------------------------------


def _face_json(face: DetectedFace, with_embedding: bool) -> dict:
    item: dict[str, Any] = {"bbox": [round(v, 1) for v in face.bbox],
                            "det_score": round(face.det_score, 4), "quality": round(face.quality, 4)}
    if face.frame_time is not None:
        item["frame_time"] = round(face.frame_time, 3)
        item["track_id"] = face.track_id
    if with_embedding:
        item["embedding"] = [round(float(v), 6) for v in face.embedding]
    return item


def main(argv: Sequence[str] | None = None) -> int:
    """``python media_processor.py FILE…``: one JSON line per file; exit 1 if any file failed."""
    parser = argparse.ArgumentParser(description="Find faces in photos and videos.")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="insightface")
    parser.add_argument("--models-dir", type=Path,
                        help=f"MODELS_DIR: the insightface weights are in MODELS_DIR/models/buffalo_l "
                             f"(default {DEFAULT_MODELS_DIR}, the daemon's default)")
    parser.add_argument("--embeddings", action="store_true", help="add each face's embedding")
    parser.add_argument("--min-quality", type=float, default=0.0)
    parser.add_argument("--frame-rate", type=float, default=DEFAULT_VIDEO_FRAME_RATE)
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_VIDEO_MAX_SECONDS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    processor = FaceProcessor(args.engine, models_dir=args.models_dir, min_quality=args.min_quality)
    try:
        processor.load()
    except ModelUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for path in args.files:
        line: dict[str, Any] = {"file": str(path), "faces": [], "error": None}
        try:
            # The content decides; the extension only when the first bytes say nothing.
            kind = "video" if path.suffix.lower() in _VIDEO_SUFFIXES else "photo"
            faces = processor.analyse_file(path, kind=kind,
                                           frame_rate=args.frame_rate, max_seconds=args.max_seconds)
            line["faces"] = [_face_json(f, args.embeddings) for f in faces]
        except (MediaError, OSError) as exc:
            line["error"] = str(exc)
            failed += 1
        print(json.dumps(line), flush=True)
    return 1 if failed else 0


_VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".3gp"}

if __name__ == "__main__":
    sys.exit(main())
