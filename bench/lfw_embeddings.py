"""Every face of the faces-lfw photos through the project's own dlib analysis, saved as one .npz.

    nice -n 10 .venv/bin/python bench/lfw_embeddings.py [--lfw ../shared/faces-lfw]
        [--out /work/tmp/lfw/lfw_dlib.npz] [--workers 2] [--limit N]

Each photo goes through `FaceProcessor("dlib", min_quality=0.0).detect` — the code the daemon
and `main.py import` run, with no quality floor, so that every detected face is embedded and a
replay can apply any floor itself (the daemon's MIN_QUALITY_THRESHOLD 0.5 keeps exactly the faces
with ``quality >= 0.5``: quality is measured before the embedding). The layout is plain arrays
(see `write_npz`) so that other tools can use it without this module. Progress goes to stderr;
finished photos are checkpointed beside the output (``.partial.npz``) so an interrupted run
resumes.

The labelled face of a photo is the "centred" one (faces-lfw/README.md): the largest face whose
centre lies within a fifth of the image side of the image centre.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from media_processor import FaceProcessor  # noqa: E402

# ../shared/faces-lfw beside the checkout (/work/main), or beside its parent (a worktree
# /work/wt/<name>): the first that exists.
DEFAULT_LFW = next((p for p in (ROOT.parent / "shared" / "faces-lfw",
                                ROOT.parent.parent / "shared" / "faces-lfw")
                    if (p / "labels.csv").exists()), ROOT.parent / "shared" / "faces-lfw")
CENTRE_RADIUS = 0.2  # share of the image side

_processor: FaceProcessor | None = None


def _analyse(path: str) -> tuple[str, list[tuple], float, tuple[int, int]]:
    """(path, [(embedding, bbox, quality, det_score)], seconds, (width, height))."""
    global _processor
    from PIL import Image
    if _processor is None:
        _processor = FaceProcessor("dlib", min_quality=0.0)
        _processor.load()
    with Image.open(path) as image:
        size = image.size
    start = time.perf_counter()
    faces = _processor.detect(path)
    seconds = time.perf_counter() - start
    return path, [(f.embedding.astype(np.float32), np.array(f.bbox, np.float32), f.quality,
                   f.det_score) for f in faces], seconds, size


def centred_face(bboxes: list[np.ndarray], size: tuple[int, int]) -> int:
    """Index of the labelled face among a photo's boxes, or -1 when none is near the centre."""
    width, height = size
    radius = CENTRE_RADIUS * min(width, height)
    best, best_area = -1, 0.0
    for i, (x1, y1, x2, y2) in enumerate(bboxes):
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        area = (x2 - x1) * (y2 - y1)
        if np.hypot(cx - width / 2, cy - height / 2) <= radius and area > best_area:
            best, best_area = i, area
    return best


def write_npz(out: Path, rows: list[dict], results: dict[str, tuple]) -> int:
    """Write the photos of `rows` that have results; returns how many. Arrays:

    per face: ``embeddings`` (float32, n×128, unit length), ``photo_index`` (int32, into the
    per-photo arrays), ``is_centred`` (bool), ``quality``, ``det_score`` (float32), ``bbox``
    (float32, n×4, x1 y1 x2 y2 px);
    per photo: ``files`` (relative to faces-lfw), ``identities``, ``photos_of_identity`` (int32),
    ``centred_face`` (int32 index into the face arrays, -1: none detected near the centre),
    ``seconds`` (float32, wall time of `detect` for the photo, no quality floor).
    """
    embeddings, photo_index, is_centred, quality, det_score, bbox = [], [], [], [], [], []
    files, identities, counts, centred, seconds = [], [], [], [], []
    for row in rows:
        result = results.get(row["file"])
        if result is None:
            continue
        faces, secs, size = result
        p = len(files)
        files.append(row["file"])
        identities.append(row["identity"])
        counts.append(int(row["photos_of_identity"]))
        seconds.append(secs)
        c = centred_face([f[1] for f in faces], size)
        centred.append(len(embeddings) + c if c >= 0 else -1)
        for i, (emb, box, q, det) in enumerate(faces):
            embeddings.append(emb)
            bbox.append(box)
            quality.append(q)
            det_score.append(det)
            photo_index.append(p)
            is_centred.append(i == c)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(
        tmp,
        embeddings=np.array(embeddings, np.float32).reshape(-1, 128),
        photo_index=np.array(photo_index, np.int32), is_centred=np.array(is_centred, bool),
        quality=np.array(quality, np.float32), det_score=np.array(det_score, np.float32),
        bbox=np.array(bbox, np.float32).reshape(-1, 4),
        files=np.array(files), identities=np.array(identities),
        photos_of_identity=np.array(counts, np.int32), centred_face=np.array(centred, np.int32),
        seconds=np.array(seconds, np.float32))
    os.replace(tmp, out)
    return len(files)


def _load_partial(partial: Path) -> dict[str, tuple]:
    if not partial.exists():
        return {}
    data = np.load(partial)
    results: dict[str, tuple] = {f: ([], float(s), (250, 250))
                                 for f, s in zip(data["files"], data["seconds"])}
    for k in range(len(data["photo_index"])):
        f = str(data["files"][data["photo_index"][k]])
        results[f][0].append((data["embeddings"][k], data["bbox"][k], float(data["quality"][k]),
                              float(data["det_score"][k])))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW)
    parser.add_argument("--out", type=Path, default=Path("/work/tmp/lfw/lfw_dlib.npz"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos")
    args = parser.parse_args(argv)
    with open(args.lfw / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:args.limit]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.stem + ".partial.npz")
    results = _load_partial(partial)
    todo = [r["file"] for r in rows if r["file"] not in results]
    print(f"{len(rows)} photos, {len(results)} already done, {len(todo)} to analyse",
          file=sys.stderr, flush=True)
    start, last_save = time.monotonic(), time.monotonic()
    with ProcessPoolExecutor(args.workers) as pool:
        paths = [str(args.lfw / f) for f in todo]
        for n, (path, faces, secs, size) in enumerate(pool.map(_analyse, paths, chunksize=4), 1):
            results[os.path.relpath(path, args.lfw)] = (faces, secs, size)
            if n % 100 == 0 or n == len(todo):
                rate = n / (time.monotonic() - start)
                print(f"{n}/{len(todo)} photos, {rate:.2f}/s, ~{(len(todo) - n) / rate / 60:.0f} "
                      f"min left", file=sys.stderr, flush=True)
            if time.monotonic() - last_save > 120:
                write_npz(partial, rows, results)
                last_save = time.monotonic()
    written = write_npz(args.out, rows, results)
    partial.unlink(missing_ok=True)
    data = np.load(args.out)
    print(f"wrote {args.out}: {written} photos, {len(data['embeddings'])} faces, "
          f"{int((data['centred_face'] >= 0).sum())} with a centred face", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
