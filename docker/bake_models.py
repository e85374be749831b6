"""Bake the InsightFace ``buffalo_l`` weights into the Docker image (Dockerfile, stage ``models``).

    PYTHONPATH=. python docker/bake_models.py MODELS_DIR [--keep-all]

1. Downloads the pack into ``MODELS_DIR/models/buffalo_l`` with insightface's own downloader,
   through `media_processor.download_insightface_models` (what a first run outside Docker uses).
   A pack already there is not fetched again.
2. Keeps only the files the app loads (detector and embedder) unless ``--keep-all``: the pack's
   landmark and age/gender models and the downloaded zip would add about 400 MB to the image,
   and FaceAnalysis would load (and discard) every extra model at each start.
3. Proves the result works the way the app will use it: builds
   ``FaceProcessor("insightface", models_dir=MODELS_DIR)``, loads it and analyses a blank image.

Any failure exits non-zero, so a broken download fails the image build instead of the server.
The weights are InsightFace's, for non-commercial research use only (README.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from face_engines import INSIGHTFACE_FILES, INSIGHTFACE_PACK, insightface_pack_dir
from media_processor import FaceProcessor, ModelUnavailableError, download_insightface_models

EXIT_OK = 0
EXIT_FAILED = 1


def prune(models_dir: Path) -> list[Path]:
    """Delete what the app never loads from the pack and its download; return what was deleted."""
    pack_dir = insightface_pack_dir(models_dir)
    keep = {pack_dir / name for name in INSIGHTFACE_FILES.values()}
    removed = [path for path in sorted(pack_dir.iterdir()) if path.is_file() and path not in keep]
    archive = pack_dir.parent / f"{INSIGHTFACE_PACK}.zip"  # where insightface leaves the download
    if archive.exists():
        removed.append(archive)
    for path in removed:
        path.unlink()
    return removed


def verify(models_dir: Path) -> int:
    """Load the engine exactly as the daemon does and run it once; return the faces found."""
    processor = FaceProcessor("insightface", models_dir=models_dir)
    processor.load()
    faces = processor.detect(np.zeros((480, 640, 3), dtype=np.uint8), name="blank test image")
    return len(faces)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bake_models.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("models_dir", type=Path, help="MODELS_DIR of the image, e.g. /opt/models")
    parser.add_argument("--keep-all", action="store_true",
                        help="keep every file of the pack and the downloaded zip")
    args = parser.parse_args(argv)

    started = time.monotonic()
    try:
        files = download_insightface_models(args.models_dir)
        removed = [] if args.keep_all else prune(args.models_dir)
        found = verify(args.models_dir)
    except ModelUnavailableError as exc:
        print(f"bake_models: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for task, path in sorted(files.items()):
        print(f"bake_models: {task}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if removed:
        print(f"bake_models: removed {', '.join(p.name for p in removed)} (not used by the app)")
    print(f"bake_models: FaceProcessor('insightface') loaded and ran: {found} face(s) in a blank "
          f"image, {time.monotonic() - started:.1f} s in all")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
