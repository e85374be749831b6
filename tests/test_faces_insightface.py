"""The insightface engine, as far as it can be tested without the buffalo_l weights.

Where it looks for the models, the error when they are missing or broken, and the conversion of
insightface's Face objects. The whole path (FaceAnalysis loading from MODELS_DIR, detection,
alignment, embedding, coordinates) then runs for real on stand-in ONNX models built here: a
"detector" that always reports one face at a known place and an "embedder" that is a fixed
linear map of the aligned crop. Insightface's own code runs unchanged on them.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from face_engines import (INSIGHTFACE_FILES, InsightFaceEngine, ModelUnavailableError,
                          find_insightface_models, insightface_pack_dir)
from media_fixtures import faces_dir
from media_processor import FaceProcessor, detected_face_from_insightface

# The stand-in detector's face, in its 640x640 input: box and landmarks.
STAND_IN_BOX = (260, 150, 380, 300)


def stand_in_detector(path: Path, size: int = 640) -> None:
    """An ONNX model shaped like SCRFD with keypoints (9 outputs: scores, box distances and
    landmark offsets for strides 8, 16 and 32) whose outputs are constants: one face."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x1, y1, x2, y2 = STAND_IN_BOX
    width, height = x2 - x1, y2 - y1
    landmarks = [(x1 + .32 * width, y1 + .42 * height), (x1 + .68 * width, y1 + .42 * height),
                 (x1 + .50 * width, y1 + .60 * height), (x1 + .36 * width, y1 + .78 * height),
                 (x1 + .64 * width, y1 + .78 * height)]
    outputs = {}
    for stride in (8, 16, 32):
        anchors = (size // stride) ** 2 * 2
        outputs[stride] = [np.zeros((anchors, 1)), np.ones((anchors, 4)), np.zeros((anchors, 10))]
    stride = 32
    col, row = round((x1 + x2) / 2 / stride), round((y1 + y2) / 2 / stride)
    anchor = (row * (size // stride) + col) * 2
    ax, ay = col * stride, row * stride
    outputs[stride][0][anchor] = 0.9
    outputs[stride][1][anchor] = np.array([ax - x1, ay - y1, x2 - ax, y2 - ay]) / stride
    outputs[stride][2][anchor] = np.array([[(px - ax) / stride, (py - ay) / stride]
                                           for px, py in landmarks]).ravel()
    # Each output is a constant plus 0 * sum(input), so that it belongs to the graph.
    nodes = [helper.make_node("ReduceSum", ["input.1"], ["total"], keepdims=0),
             helper.make_node("Mul", ["total", "nought"], ["zero"])]
    initialisers = [numpy_helper.from_array(np.array(0, np.float32), "nought")]
    graph_outputs = []
    for kind in range(3):  # SCRFD's output order: all scores, all boxes, all landmarks
        for stride in (8, 16, 32):
            name, value = f"out{kind}_{stride}", outputs[stride][kind].astype(np.float32)
            initialisers.append(numpy_helper.from_array(value, name + "_value"))
            nodes.append(helper.make_node("Add", [name + "_value", "zero"], [name]))
            graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                               list(value.shape)))
    graph = helper.make_graph(
        nodes, "scrfd_stand_in",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])],
        graph_outputs, initialisers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def stand_in_embedder(path: Path, dim: int = 512) -> None:
    """An ONNX model shaped like ArcFace (1x3x112x112 in, 512 out): pooled pixels times a
    fixed random matrix, so the embedding depends on the aligned crop."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((3 * 14 * 14, dim)).astype(np.float32)
    nodes = [helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[8, 8],
                              strides=[8, 8]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "weights"], ["embedding"])]
    graph = helper.make_graph(
        nodes, "arcface_stand_in",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, dim])],
        [numpy_helper.from_array(weights, "weights")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


@pytest.fixture(scope="session")
def stand_in_models_dir(tmp_path_factory) -> Path:
    """A MODELS_DIR holding stand-ins for buffalo_l's detector and embedder."""
    models_dir = tmp_path_factory.mktemp("models")
    pack = insightface_pack_dir(models_dir)
    pack.mkdir(parents=True)
    stand_in_detector(pack / INSIGHTFACE_FILES["detection"])
    stand_in_embedder(pack / INSIGHTFACE_FILES["recognition"])
    return models_dir


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A 1280x960 photo: the stand-in detector's 640x640 input sees it at half size."""
    im = Image.open(faces_dir() / "group_situation_room_2011.jpg").convert("RGB")
    return np.asarray(im.resize((1280, 960)))


def test_insightface_looks_in_models_dir_models_buffalo_l(tmp_path):
    pack = tmp_path / "models" / "buffalo_l"
    assert insightface_pack_dir(tmp_path) == pack
    pack.mkdir(parents=True)
    for filename in INSIGHTFACE_FILES.values():
        (pack / filename).write_bytes(b"onnx")
    assert find_insightface_models(tmp_path) == {
        task: pack / filename for task, filename in INSIGHTFACE_FILES.items()}


def test_missing_weights_give_a_clear_error_and_no_download(tmp_path, monkeypatch):
    import insightface.utils.storage

    def no_download(*args, **kwargs):
        raise AssertionError("insightface tried to download")

    monkeypatch.setattr(insightface.utils.storage, "download_file", no_download)
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    (tmp_path / "models" / "buffalo_l" / "det_10g.onnx").write_bytes(b"x")
    processor = FaceProcessor("insightface", models_dir=tmp_path)
    with pytest.raises(ModelUnavailableError) as caught:
        processor.detect(np.zeros((32, 32, 3), np.uint8))
    message = str(caught.value)
    assert "w600k_r50.onnx" in message and str(tmp_path / "models" / "buffalo_l") in message
    assert "dlib" in message  # the alternative


def test_corrupt_weights_give_a_clear_error(tmp_path):
    pack = tmp_path / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    for filename in INSIGHTFACE_FILES.values():
        (pack / filename).write_bytes(b"not an onnx model")
    with pytest.raises(ModelUnavailableError, match="corrupt"):
        InsightFaceEngine(tmp_path).load()


def test_insightface_face_becomes_a_detected_face(photo):
    from insightface.app.common import Face

    kps = np.array([[575, 400], [645, 400], [610, 440], [582, 475], [638, 475]], np.float32)
    raw_embedding = np.arange(1, 513, dtype=np.float32)
    face = Face(bbox=np.array([550, 350, 685, 510], np.float32), kps=kps,
                det_score=np.float32(0.87), embedding=raw_embedding)
    detected = detected_face_from_insightface(photo, face)
    assert detected.bbox == (550.0, 350.0, 685.0, 510.0)
    assert np.array_equal(detected.landmarks, kps) and detected.landmarks.dtype == np.float32
    assert isinstance(detected.det_score, float) and detected.det_score == pytest.approx(0.87)
    assert detected.embedding.shape == (512,) and detected.embedding.dtype == np.float32
    assert np.allclose(detected.embedding, raw_embedding / np.linalg.norm(raw_embedding))
    assert 0.0 < detected.quality <= 1.0
    assert max(Image.open(io.BytesIO(detected.crop_jpeg)).size) <= 160
    assert detected.frame_time is None and detected.track_id is None


@pytest.mark.filterwarnings("ignore::FutureWarning")  # skimage's, inside insightface's alignment
def test_the_whole_insightface_path_runs_on_stand_in_models(stand_in_models_dir, photo):
    processor = FaceProcessor("insightface", models_dir=stand_in_models_dir)
    (face,) = processor.detect(photo)
    # The detector saw the photo at half size: boxes come back in the photo's pixels.
    assert face.bbox == pytest.approx(tuple(2 * v for v in STAND_IN_BOX), abs=1)
    assert face.landmarks[0] == pytest.approx((2 * (260 + .32 * 120), 2 * (150 + .42 * 150)), abs=1)
    assert face.det_score == pytest.approx(0.9)
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert float(np.linalg.norm(face.embedding)) == pytest.approx(1.0, abs=1e-5)
    (elsewhere,) = processor.detect(np.ascontiguousarray(photo[::-1]))  # other pixels, same box
    assert float(face.embedding @ elsewhere.embedding) < 0.999
    assert processor.info.dimension == 512


def test_first_use_download_fetches_the_pack_through_insightface(tmp_path, stand_in_models_dir, monkeypatch):
    """Outside Docker the default engine's weights are fetched once, by insightface's own
    downloader, into MODELS_DIR. The network is the boundary faked here: the "server" hands out
    a zip of the stand-in models, and insightface's real unzip and our real lookup do the rest."""
    import shutil
    import insightface.utils.storage as storage
    from face_engines import download_insightface_models

    served = shutil.make_archive(str(tmp_path / "zoo" / "buffalo_l"), "zip",
                                 insightface_pack_dir(stand_in_models_dir))
    fetched = []

    def fake_download_file(url, path, overwrite=False, **kwargs):
        fetched.append(url)
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # as insightface's download_file does
        shutil.copy(served, path)

    monkeypatch.setattr(storage, "download_file", fake_download_file)
    models_dir = tmp_path / "models_dir"
    found = download_insightface_models(models_dir)
    assert fetched and fetched[0].endswith("buffalo_l.zip")
    assert found == {task: insightface_pack_dir(models_dir) / name for task, name in INSIGHTFACE_FILES.items()}
    download_insightface_models(models_dir)
    assert len(fetched) == 1  # present now: not fetched again


async def test_the_daemon_fetches_the_weights_on_its_first_start(tmp_path, stand_in_models_dir, monkeypatch,
                                                                  clean_env, faces_dir):
    """A first `python main.py` with the default engine and an empty MODELS_DIR: the pack is
    fetched once and the analysis processes find faces with it."""
    import shutil
    import config
    import insightface.utils.storage as storage
    import main

    served = shutil.make_archive(str(tmp_path / "zoo" / "buffalo_l"), "zip",
                                 insightface_pack_dir(stand_in_models_dir))
    fetched = []

    def fake_download_file(url, path, overwrite=False, **kwargs):
        fetched.append(url)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(served, path)

    monkeypatch.setattr(storage, "download_file", fake_download_file)
    settings = config.load_settings(None, data_dir=tmp_path / "data", num_workers=1)
    assert settings.face_engine == "insightface"
    analyser, _matcher = await main.start_analysis(settings)
    try:
        faces = await analyser.analyse(faces_dir / "barack_obama_01.jpg", "photo")
    finally:
        analyser.close()
    assert len(fetched) == 1
    assert find_insightface_models(settings.models_path)
    assert len(faces) == 1 and faces[0].embedding.shape == (512,)


def test_a_failed_download_says_what_to_do(tmp_path, monkeypatch):
    import insightface.utils.storage as storage
    from face_engines import download_insightface_models

    def offline(url, path, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(storage, "download_file", offline)
    with pytest.raises(ModelUnavailableError, match="could not download.*dlib engine"):
        download_insightface_models(tmp_path)
