"""The installed environment: one OpenCV, and the three native face libraries import together."""

import importlib.metadata as metadata
import subprocess
import sys


def installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_exactly_one_opencv_distribution_is_installed():
    opencv = [name for name in ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                                "opencv-contrib-python-headless") if installed(name)]
    assert opencv == ["opencv-python-headless"], (
        f"found {opencv}: two cv2 packages overwrite each other; install insightface with --no-deps")


def test_cv2_insightface_and_dlib_import_in_one_process():
    done = subprocess.run([sys.executable, "-c", "import cv2, insightface, dlib, onnxruntime, av; print(cv2.__version__)"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
