"""Makes tests/lfw_dlib_subset.npz, the fixture of tests/test_matcher_scale.py.

    .venv/bin/python tests/make_lfw_subset.py [--npz /work/tmp/lfw/lfw_dlib.npz]

From bench/lfw_embeddings.py's analysis of ../shared/faces-lfw (the real dlib FaceProcessor),
all photos of a seeded choice of identities — 35 frequent (10-40 photos), 80 occasional (2-9)
and 200 strangers (1) — shaped like the whole set. Only numbers are kept (faces-lfw's licence
keeps its images out of the repository): per face the dlib embedding, its quality and its
photo; per photo an anonymous identity number (-1 for strangers) and which face is the
labelled, centred one. Faces below the daemon's MIN_QUALITY_THRESHOLD (0.5) are left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "lfw_dlib_subset.npz"
CHOICE = {"frequent": 35, "occasional": 80, "stranger": 200}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--npz", type=Path, default=Path("/work/tmp/lfw/lfw_dlib.npz"))
    args = parser.parse_args()
    d = np.load(args.npz)
    rng = np.random.default_rng(14)
    names, first = np.unique(d["identities"], return_index=True)
    counts = d["photos_of_identity"][first]
    kinds = {"frequent": counts >= 10, "occasional": (counts >= 2) & (counts < 10),
             "stranger": counts == 1}
    chosen = set()
    for kind, wanted in CHOICE.items():
        chosen |= set(rng.choice(names[kinds[kind]], wanted, replace=False))
    photos = [p for p in range(len(d["files"])) if d["identities"][p] in chosen]
    number = {name: k for k, name in enumerate(sorted(chosen))}
    keep = d["quality"] >= 0.5
    emb, quality, photo_of, centred = [], [], [], []
    for new, p in enumerate(photos):
        for f in np.flatnonzero((d["photo_index"] == p) & keep):
            centred.append(bool(d["is_centred"][f]))
            emb.append(d["embeddings"][f])
            quality.append(d["quality"][f])
            photo_of.append(new)
    identity = np.array([number[d["identities"][p]] if d["photos_of_identity"][p] > 1 else -1
                         for p in photos], np.int32)
    OUT.parent.mkdir(exist_ok=True)
    np.savez_compressed(OUT, embeddings=np.array(emb, np.float32), quality=np.array(quality, np.float32),
                        photo=np.array(photo_of, np.int32), is_centred=np.array(centred, bool),
                        identity=identity)
    print(f"wrote {OUT}: {len(photos)} photos, {len(emb)} faces, "
          f"{len(set(identity[identity >= 0]))} identities seen more than once")


if __name__ == "__main__":
    main()
