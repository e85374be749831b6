"""Benchmark of the face pipeline; prints figures (it is not a test).

1. Photos per second through `FaceProcessor.detect` against the bare model calls on the same
   photos (decode, detect, landmarks, embeddings: what a minimal script would do); the ratio is
   what our pipeline costs on top. In one process, in 2 threads and in a pool of processes.
2. Video seconds analysed per wall second (`analyse_video` at 1 frame a second), and the frame
   sampling alone.
3. Peak resident memory of a fresh process sampling an hour-long 720p video, against a
   one-minute one: memory must not grow with the length of the file.

    .venv/bin/python bench/bench_faces.py [--engine dlib] [--workers 2] [--long-minutes 60]
                                          [--photos-only] [--min-quality 0.5]

The photos are the labelled fixtures (tests/faces or $FACES_DIR); the videos are made from
them in a temporary folder.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from face_engines import DlibEngine, insightface_pack_dir  # noqa: E402
from media_fixtures import faces_dir, letterbox, write_video  # noqa: E402
from media_processor import FaceProcessor, VideoFrameExtractor, build_face, load_image  # noqa: E402

# --- work done in pool processes (module level, so it pickles) --------------------------------

_processor: FaceProcessor | None = None
_bare_models: tuple | None = None


def _start_worker(processor: FaceProcessor, models_dir: Path | None = None) -> None:
    global _processor
    _processor = processor
    _processor.load()
    _load_bare(processor.info.name, models_dir)


def _load_bare(engine: str, models_dir: Path | None) -> tuple:
    """The engine's models loaded the plain way, without FaceProcessor."""
    global _bare_models
    if _bare_models is not None:
        return _bare_models
    if engine == "dlib":
        import dlib
        import face_recognition_models as weights

        _bare_models = ("dlib", dlib, dlib.get_frontal_face_detector(),
                        dlib.shape_predictor(weights.pose_predictor_five_point_model_location()),
                        dlib.face_recognition_model_v1(weights.face_recognition_model_location()))
    else:
        from insightface.app import FaceAnalysis

        app = FaceAnalysis(name=str(insightface_pack_dir(models_dir or Path("~/.insightface"))),
                           allowed_modules=["detection", "recognition"],
                           providers=["CPUExecutionProvider"])
        app.prepare(ctx_id=-1, det_size=(640, 640))
        _bare_models = ("insightface", app)
    return _bare_models


def pipeline_photo(path: Path) -> int:
    return len(_processor.detect(path))


def bare_photo(path: Path) -> int:
    """Decode plainly and call the models as their own examples do (dlib: HOG upsampled once,
    like face_recognition's default; insightface: FaceAnalysis.get)."""
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB"))
    if _bare_models[0] == "insightface":
        return len(_bare_models[1].get(np.ascontiguousarray(rgb[:, :, ::-1])))
    _, dlib, detector, predictor, recogniser = _bare_models
    rects = detector(rgb, 1)
    shapes = dlib.full_object_detections([predictor(rgb, rect) for rect in rects])
    return len(recogniser.compute_face_descriptor(rgb, shapes)) if len(rects) else 0


def analyse_clip(path: Path, frame_rate: float, max_seconds: float) -> int:
    return len(_processor.analyse_video(path, frame_rate=frame_rate, max_seconds=max_seconds))


def _warm(seconds: float) -> None:
    time.sleep(seconds)  # keeps a worker busy so that every worker gets a warm-up task


def _memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def peak_memory(task: str, path: str, frame_rate: float, max_seconds: float, engine: str,
                models_dir: Path | None, queue: multiprocessing.Queue) -> None:
    """Run in a fresh process: resident memory before `task` on `path`, and its peak during it.

    (Not ru_maxrss: a spawned child inherits its parent's high-water mark across exec.)
    """
    processor = FaceProcessor(engine, models_dir=models_dir)
    if task == "analyse":
        processor.load()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = _memory_mb("VmRSS")
    start = time.perf_counter()
    if task == "frames":
        count = sum(1 for _ in VideoFrameExtractor(path, frame_rate=frame_rate,
                                                   max_seconds=max_seconds))
    else:
        count = len(processor.analyse_video(path, frame_rate=frame_rate, max_seconds=max_seconds))
    elapsed = time.perf_counter() - start
    queue.put((before, _memory_mb("VmHWM"), elapsed, count))


# --- measurements -----------------------------------------------------------------------------


def rate(function, items, *, executor=None) -> tuple[float, float]:
    """(items per second, seconds) for calling `function` on every item."""
    start = time.perf_counter()
    if executor is None:
        for item in items:
            function(item)
    else:
        list(executor.map(function, items))
    elapsed = time.perf_counter() - start
    return len(items) / elapsed, elapsed


def compare(first, second, photos, rounds: int, *, executor=None) -> list[tuple[float, float]]:
    """`rate` of two functions over `rounds` passes each, in the order ABBA ABBA…: a machine
    that slows down or speeds up during the run (a shared VM does) favours neither."""
    seconds = [0.0, 0.0]
    for k in range(rounds):
        for which in ((0, 1) if k % 2 == 0 else (1, 0)):
            seconds[which] += rate((first, second)[which], photos, executor=executor)[1]
    return [(len(photos) * rounds / s, s) for s in seconds]


def bench_photos(processor: FaceProcessor, photos: list[Path], workers: int, repeat: int,
                 models_dir: Path | None) -> None:
    items = photos * repeat
    print(f"\n== Photos: {len(photos)} fixture photos x {repeat} = {len(items)}, engine "
          f"{processor.info.name}")
    _start_worker(processor, models_dir)
    pipeline_photo(photos[0]), bare_photo(photos[0])  # warm caches
    (pipe, pipe_s), (bare, bare_s) = compare(pipeline_photo, bare_photo, photos, repeat)
    print(f"1 process  FaceProcessor.detect  {pipe:6.2f} photos/s  ({pipe_s:.1f} s)")
    print(f"1 process  bare model calls      {bare:6.2f} photos/s  ({bare_s:.1f} s)")
    print(f"           overhead ratio        {pipe_s / bare_s:6.2f}x  (pipeline time / bare time)")

    if processor.info.name == "dlib":
        breakdown(photos, repeat)

    with ThreadPoolExecutor(workers) as pool:
        threaded, _ = rate(pipeline_photo, items, executor=pool)
    print(f"{workers} threads  FaceProcessor.detect  {threaded:6.2f} photos/s  "
          f"(dlib holds the GIL: threads don't add throughput)")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(processor, models_dir)) as pool:
        list(pool.map(_warm, [1.0] * workers * 2))
        (pooled, pooled_s), (pooled_bare, pooled_bare_s) = compare(
            pipeline_photo, bare_photo, photos, repeat, executor=pool)
    print(f"{workers} procs    FaceProcessor.detect  {pooled:6.2f} photos/s  "
          f"({pooled / pipe:.2f}x one process)")
    print(f"{workers} procs    bare model calls      {pooled_bare:6.2f} photos/s")
    print(f"           overhead ratio        {pooled_s / pooled_bare_s:6.2f}x  (goal: <= 1.10)")


def breakdown(photos: list[Path], repeat: int) -> None:
    """Where FaceProcessor's time goes, with the same public pieces it is made of."""
    engine = DlibEngine()
    engine.load()
    decode = detect = finish = 0.0
    for path in photos * repeat:
        t0 = time.perf_counter()
        rgb = load_image(path)
        t1 = time.perf_counter()
        raws = engine.detect(rgb)
        t2 = time.perf_counter()
        for raw in raws:
            build_face(rgb, raw)
        t3 = time.perf_counter()
        decode, detect, finish = decode + t1 - t0, detect + t2 - t1, finish + t3 - t2
    total = decode + detect + finish
    print(f"           time split            decode {decode / total:.0%}, engine "
          f"(HOG, CNN check, landmarks, embeddings) {detect / total:.0%}, "
          f"quality + crop {finish / total:.0%}")


def repeat_video(segment: Path, out: Path, times: int) -> Path:
    """`segment` played `times` times in a row, by copying its packets (no re-encoding)."""
    import av

    with av.open(str(segment)) as source:
        stream = source.streams.video[0]
        packets = [(bytes(p), p.pts, p.dts, p.is_keyframe) for p in source.demux(stream) if p.size]
        length = int(round(float(source.duration / 1e6) / stream.time_base))
        with av.open(str(out), "w") as sink:
            target = sink.add_stream_from_template(stream)
            for k in range(times):
                for data, pts, dts, key in packets:
                    packet = av.Packet(data)
                    packet.pts, packet.dts = pts + k * length, dts + k * length
                    packet.is_keyframe, packet.time_base, packet.stream = key, stream.time_base, target
                    sink.mux(packet)
    return out


def make_videos(folder: Path, long_minutes: int) -> tuple[Path, Path]:
    """A 60 s and a `long_minutes` min 1280x720 25 fps H.264 video: Obama and Biden in turn."""
    photos = faces_dir()
    obama = letterbox(photos / "barack_obama_01.jpg", (1280, 720))
    biden = letterbox(photos / "joe_biden_02.jpg", (1280, 720))
    segment = write_video(folder / "segment.mp4", [(obama, 5), (biden, 5)], fps=25, gop=50)
    return (repeat_video(segment, folder / "minute.mp4", 6),
            repeat_video(segment, folder / "long.mp4", long_minutes * 6))


def bench_video(processor: FaceProcessor, clip: Path, workers: int,
                models_dir: Path | None) -> None:
    print("\n== Video: 60 s, 1280x720, 25 fps, H.264, 1 frame per second analysed")
    frames, seconds = rate(lambda p: sum(1 for _ in VideoFrameExtractor(
        p, frame_rate=1.0, max_seconds=1e9)), [clip])
    print(f"frame sampling only           {60 / seconds:7.1f} video s per wall s")
    _, seconds = rate(lambda p: analyse_clip(p, 1.0, 1e9), [clip])
    print(f"1 process  analyse_video      {60 / seconds:7.1f} video s per wall s  ({seconds:.1f} s)")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(processor, models_dir)) as pool:
        list(pool.map(_warm, [1.0] * workers * 2))
        start = time.perf_counter()
        list(pool.map(analyse_clip, [clip] * workers, [1.0] * workers, [1e9] * workers))
        seconds = time.perf_counter() - start
    print(f"{workers} procs    analyse_video      {60 * workers / seconds:7.1f} video s per wall s")


def bench_memory(engine: str, models_dir: Path | None, clip: Path, long: Path, long_minutes: int,
                 analyse_seconds: float) -> None:
    print("\n== Memory of a fresh process: resident after imports (and model load), then the "
          "peak while working")
    context = multiprocessing.get_context("spawn")
    runs = [("frames", clip, 1.0, 1e9, "frame sampling, 1 min video, 1 fps"),
            ("frames", long, 1.0, 1e9, f"frame sampling, {long_minutes} min video, 1 fps"),
            ("analyse", long, 1.0, analyse_seconds,
             f"analyse_video, {long_minutes} min video, capped at {analyse_seconds:.0f} s")]
    for task, path, frame_rate, max_seconds, label in runs:
        queue = context.Queue()
        child = context.Process(target=peak_memory,
                                args=(task, str(path), frame_rate, max_seconds, engine,
                                      models_dir, queue))
        child.start()
        before, after, elapsed, count = queue.get()
        child.join()
        print(f"{label:50s} {before:5.0f} MB, peak {after:5.0f} MB  ({count} "
              f"{'frames' if task == 'frames' else 'faces'}, {elapsed:.1f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="dlib", choices=["dlib", "insightface"])
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="passes over the photos")
    parser.add_argument("--long-minutes", type=int, default=60)
    parser.add_argument("--analyse-seconds", type=float, default=120,
                        help="cap on seconds analysed in the long-video memory run")
    parser.add_argument("--min-quality", type=float, default=0.0,
                        help="FaceProcessor's min_quality (0: every face, like the bare calls; "
                             "the daemon's default is 0.5, which skips embedding poor faces)")
    parser.add_argument("--photos-only", action="store_true",
                        help="only the photo figures (skip the video and memory runs)")
    args = parser.parse_args()

    processor = FaceProcessor(args.engine, models_dir=args.models_dir,
                              min_quality=args.min_quality)
    processor.load()
    photos = sorted(p for p in faces_dir().iterdir() if p.suffix.lower() in (".jpg", ".png"))
    print(f"{multiprocessing.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} at the "
          f"start: other work on the machine skews the figures); engine {args.engine}; "
          f"{args.workers} workers; min_quality {args.min_quality}")
    bench_photos(processor, photos, args.workers, args.repeat, args.models_dir)
    if args.photos_only:
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-faces-") as folder:
        start = time.perf_counter()
        clip, long = make_videos(Path(folder), args.long_minutes)
        print(f"\n(made the test videos in {time.perf_counter() - start:.1f} s: "
              f"{clip.stat().st_size / 1e6:.0f} MB, {long.stat().st_size / 1e6:.0f} MB)")
        bench_video(processor, clip, args.workers, args.models_dir)
        bench_memory(args.engine, args.models_dir, clip, long, args.long_minutes, args.analyse_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
