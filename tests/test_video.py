"""Videos: frame sampling with PyAV, faces grouped into tracks, bad video files.

The test videos are made here from the fixture photos, encoded with PyAV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from media_fixtures import faces_dir, letterbox, write_audio_only_mp4, write_video
from media_processor import DetectedFace, FaceProcessor, MediaError, VideoFrameExtractor, link_tracks

SIZE = (640, 480)


@pytest.fixture(scope="session")
def stills() -> dict[str, np.ndarray]:
    folder = faces_dir()
    return {"obama": letterbox(folder / "barack_obama_01.jpg", SIZE),
            "biden": letterbox(folder / "joe_biden_02.jpg", SIZE),
            "blank": np.full((SIZE[1], SIZE[0], 3), 128, np.uint8)}


@pytest.fixture(scope="session")
def obama_biden_obama(tmp_path_factory, stills) -> Path:
    """2 s of Obama, 2 s of Biden, 2 s of Obama again, at 10 frames per second."""
    path = tmp_path_factory.mktemp("video") / "obama_biden_obama.mp4"
    return write_video(path, [(stills["obama"], 2), (stills["biden"], 2), (stills["obama"], 2)])


@pytest.fixture(scope="session")
def analysed_video(dlib_processor, obama_biden_obama) -> list[DetectedFace]:
    return dlib_processor.analyse_video(obama_biden_obama, frame_rate=2, max_seconds=60,
                                        best_per_track=100)


# --- frames -----------------------------------------------------------------------------------


def times(extractor) -> list[float]:
    return [round(frame.time, 2) for frame in extractor]


def test_frames_are_sampled_at_the_frame_rate(obama_biden_obama):
    assert times(VideoFrameExtractor(obama_biden_obama, frame_rate=2, max_seconds=60)) == [
        0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5]
    # Faster than the video: every frame once, no duplicates.
    assert times(VideoFrameExtractor(obama_biden_obama, frame_rate=25, max_seconds=1)) == [
        round(0.1 * i, 2) for i in range(10)]


def test_frames_stop_at_the_cap(obama_biden_obama):
    assert times(VideoFrameExtractor(obama_biden_obama, frame_rate=1, max_seconds=3)) == [0.0, 1.0, 2.0]


def test_sparse_sampling_seeks_and_skips(tmp_path, stills):
    """A 60 s video with a keyframe every second, sampled every 10 s (seeking) and at 1 fps
    from 30 fps (skipping non-reference frames): the right timestamps either way."""
    segments = [(np.full((120, 160, 3), (i * 40) % 256, np.uint8), 1) for i in range(60)]
    path = write_video(tmp_path / "long.mp4", segments, fps=30, gop=30)
    sparse = list(VideoFrameExtractor(path, frame_rate=0.1, max_seconds=100, seek_gap=2))
    assert [round(f.time, 2) for f in sparse] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert [int(f.image.mean()) for f in sparse] == pytest.approx(
        [(40 * i) % 256 for i in (0, 10, 20, 30, 40, 50)], abs=3)
    frames = list(VideoFrameExtractor(path, frame_rate=1, max_seconds=100))
    assert [round(f.time) for f in frames] == list(range(60))
    assert all(abs(f.time - round(f.time)) < 0.15 for f in frames)
    # The picture is the one shown at that time (segment i is grey level 40*i).
    assert [int(f.image.mean()) for f in frames[:5]] == pytest.approx([0, 40, 80, 120, 160], abs=3)


def test_large_frames_are_downscaled_and_boxes_mapped_back(dlib_processor, tmp_path, stills):
    big = letterbox(faces_dir() / "barack_obama_01.jpg", (960, 720))
    path = write_video(tmp_path / "big.mp4", [(big, 1)])
    small_frames = FaceProcessor("dlib", video_max_side=480)
    frame = next(iter(small_frames.video_frames(path, frame_rate=1, max_seconds=1)))
    assert frame.image.shape == (360, 480, 3) and frame.scale == pytest.approx(2.0)
    (face,) = small_frames.analyse_video(path, frame_rate=1, max_seconds=1)
    (in_full,) = dlib_processor.detect(big)
    assert np.allclose(face.bbox, in_full.bbox, atol=16)  # in the original frame's pixels


# --- faces and tracks -------------------------------------------------------------------------


def test_faces_at_the_right_times_one_track_per_person(analysed_video):
    by_track: dict[int, list[DetectedFace]] = {}
    for face in analysed_video:
        by_track.setdefault(face.track_id, []).append(face)
    assert sorted(by_track) == [0, 1]
    obama, biden = by_track[0], by_track[1]  # tracks are numbered by first appearance
    assert sorted(f.frame_time for f in obama) == pytest.approx(
        [0.0, 0.5, 1.0, 1.5, 4.0, 4.5, 5.0, 5.5])
    assert sorted(f.frame_time for f in biden) == pytest.approx([2.0, 2.5, 3.0, 3.5])
    # Obama's two appearances are one person, Biden another.
    assert float(obama[0].embedding @ obama[-1].embedding) > 0.95
    assert float(obama[0].embedding @ biden[0].embedding) < 0.9


def test_each_track_gives_its_best_few(dlib_processor, obama_biden_obama, analysed_video):
    # At 1 frame a second: Obama at 0, 1, 4, 5 s, Biden at 2, 3 s (frames also analysed above).
    best = dlib_processor.analyse_video(obama_biden_obama, frame_rate=1, max_seconds=60,
                                        best_per_track=3)
    assert [f.track_id for f in best] == [0, 0, 0, 1, 1]
    for track in (0, 1):
        chosen = [f.quality for f in best if f.track_id == track]
        candidates = sorted((f.quality for f in analysed_video
                             if f.track_id == track and f.frame_time in (0, 1, 2, 3, 4, 5)),
                            reverse=True)
        assert sorted(chosen, reverse=True) == pytest.approx(candidates[:3])


def test_analyse_file_reads_a_video_by_content(dlib_processor, obama_biden_obama, tmp_path):
    named_wrong = tmp_path / "clip.jpg"
    named_wrong.write_bytes(obama_biden_obama.read_bytes())
    faces = dlib_processor.analyse_file(named_wrong, kind="photo", frame_rate=0.5, max_seconds=60)
    assert {f.track_id for f in faces} == {0, 1}
    assert all(f.frame_time is not None for f in faces)


def fake_face(embedding, box, time) -> DetectedFace:
    vector = np.asarray(embedding, np.float32)
    return DetectedFace(bbox=box, landmarks=np.zeros((5, 2), np.float32), det_score=0.9,
                        embedding=vector / np.linalg.norm(vector), quality=0.8, crop_jpeg=b"",
                        frame_time=time)


def test_tracks_link_by_embedding_and_never_join_faces_of_one_frame():
    a, b = [1, 0, 0], [0, 1, 0]
    twin = [1, 0.05, 0]  # as similar to `a` as the same person
    frames = [
        [fake_face(a, (0, 0, 10, 10), 0)],
        [fake_face(a, (0, 0, 10, 10), 1), fake_face(b, (50, 0, 60, 10), 1)],
        [],                                     # everyone left
        [fake_face(b, (0, 0, 10, 10), 3)],      # b comes back where a was
        [fake_face(a, (50, 0, 60, 10), 4), fake_face(twin, (0, 0, 10, 10), 4)],
    ]
    tracks = link_tracks(frames, threshold=0.9)
    summary = [[f.frame_time for f in track] for track in tracks]
    assert summary == [[0, 1, 4], [1, 3], [4]]  # the twin shares a frame with `a`: its own track


# --- bad videos -------------------------------------------------------------------------------


def broken_copies(source: Path, folder: Path) -> dict[str, Path]:
    data = source.read_bytes()
    rng = np.random.default_rng(7)
    mdat = data.index(b"mdat")
    garbled = bytearray(data)
    garbled[mdat + 4: mdat + 40000] = rng.bytes(40000 - 4)
    files = {
        "zero bytes": b"",
        "truncated": data[: len(data) // 2],
        "random bytes": rng.bytes(20000),
        "garbled frames": bytes(garbled),
        "text": b"definitely not a video\n" * 100,
    }
    for name, content in files.items():
        (folder / f"{name.replace(' ', '_')}.mp4").write_bytes(content)
    return {name: folder / f"{name.replace(' ', '_')}.mp4" for name in files}


def test_bad_videos_raise_media_error(dlib_processor, obama_biden_obama, tmp_path):
    cases = broken_copies(obama_biden_obama, tmp_path)
    cases["audio only"] = write_audio_only_mp4(tmp_path / "audio_only.mp4")
    expected = {"zero bytes": "empty", "truncated": "not a readable video",
                "random bytes": "not a readable video", "garbled frames": "no frame",
                "text": "text", "audio only": "no video stream"}
    for name, path in cases.items():
        with pytest.raises(MediaError, match=expected[name]) as caught:
            dlib_processor.analyse_file(path, kind="video", frame_rate=1, max_seconds=10)
        assert str(path) in str(caught.value), name


def test_video_that_breaks_off_keeps_its_first_frames(tmp_path, stills, caplog):
    path = write_video(tmp_path / "v.mp4", [(stills["obama"], 1), (stills["biden"], 1)], gop=5)
    data = bytearray(path.read_bytes())
    moov = data.index(b"moov")  # a moov at the end: the index survives, the late frames don't
    mdat = data.index(b"mdat")
    data[(mdat + moov) // 2: moov - 8] = bytes(moov - 8 - (mdat + moov) // 2)
    path.write_bytes(bytes(data))
    frames = list(VideoFrameExtractor(path, frame_rate=10, max_seconds=10))
    assert 1 <= len(frames) < 20
    assert "breaks off" in caplog.text


def test_extractor_rejects_nonsense_settings(obama_biden_obama):
    with pytest.raises(ValueError):
        VideoFrameExtractor(obama_biden_obama, frame_rate=0, max_seconds=10)
