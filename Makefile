# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU build of torch; any other spec pulls gigabytes of CUDA wheels. Where the default
# index serves a CUDA build for this pin, point pip at the CPU wheels:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH  := torch==2.13.0
TORCH_INDEX ?=

.PHONY: install kubectl chromium demo test lint images images-podman test-containers clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

kubectl:
	@command -v kubectl >/dev/null 2>&1 || { \
	  echo "installing kubectl (for kubectl kustomize)"; \
	  apt-get update -qq && apt-get install -y -qq kubectl; }

# Debian's chromium and its chromedriver, for the dashboard's browser test (tests/test_ui_browser.py)
chromium:
	@{ test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; } || { \
	  echo "installing chromium and chromium-driver (for the dashboard's browser test)"; \
	  apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }

demo: $(STAMP)
	$(VENV)/bin/adaseg demo $(DEMO_ARGS)

test: $(STAMP) kubectl chromium
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

images:
	docker build -f controller_service/Dockerfile -t adaseg-controller:0.1.0 .
	docker build -f trainer_image/Dockerfile -t adaseg-trainer:0.1.0 .

# Both images with rootful podman, offline, on a Debian bookworm base made here
# (no registry needed); installs podman and debootstrap with apt. Run as root.
PODMAN_ARGS = --torch $(TORCH) $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX))
images-podman: $(STAMP)
	$(PY) -m tests.containers.images $(PODMAN_ARGS)

# The images running the manifests' pods (tests/containers/README.md). Run as root.
test-containers: $(STAMP) kubectl
	$(PY) -m tests.containers.e2e $(PODMAN_ARGS)

clean:
	rm -rf outputs .pytest_cache
