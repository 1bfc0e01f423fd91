# The two README commands. Each creates or reuses .venv and installs the project first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint setup clean system-deps exports image image-edge image-cuda

setup: $(STAMP)

$(STAMP): setup.py pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	@echo "installing mmfusion and its dependencies into $(VENV) (first time: several minutes)"
	$(BIN)/python -m pip install --quiet -e '.[dev]' > $(VENV)/pip.log 2>&1 || (grep -v '^WARNING: Location' $(VENV)/pip.log | tail -30; exit 1)
	@$(BIN)/python -c "import mmfusion, torch; print('mmfusion', mmfusion.__version__, 'torch', torch.__version__)"
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/mmfusion demo

# backend: auto models build their ONNX export into ~/.cache/mmfusion/exports on first load; this builds them now.
exports: $(STAMP)
	for model in pcb-inspect pcb-template defect-anomaly defect-report; do $(BIN)/mmfusion describe $$model | grep backend; done

# The container images (Containerfile, Containerfile.cuda; docs/deploy.md "Container images"): buildah with chroot
# isolation from a Debian base image made here with mmdebstrap + podman import when missing (BASE_IMAGE=... for
# another). An image whose inputs are unchanged is kept; FORCE=1 rebuilds.
image: $(STAMP)
	PROFILE=full PYTHON=$(BIN)/python sh deploy/image/build.sh

image-edge: $(STAMP)
	PROFILE=edge PYTHON=$(BIN)/python sh deploy/image/build.sh

image-cuda: $(STAMP)
	PROFILE=cuda PYTHON=$(BIN)/python sh deploy/image/build.sh

test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check mmfusion tests benchmarks
	$(BIN)/ruff format --check mmfusion tests benchmarks
	$(BIN)/lint-imports  # the floor plan: layer and forbidden-import contracts in pyproject.toml

# System programs the tests use: nginx (the TLS 1.3 front) and openssl; GStreamer's RTSP server under the
# system Python (the camera tests' RTSP camera) and chromium (the live page test). Installs them with apt-get
# when missing and running as root; otherwise says what to install (the tests needing them then skip).
SYSTEM_PATH := $(PATH):/usr/sbin:/sbin
RTSP_PACKAGES := python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-ugly gstreamer1.0-rtsp
RTSP_CHECK := import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import Gst, GstRtspServer; \
	Gst.init(None); assert Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('rtph264pay')
# The container image tools (make image; tests/deploy/test_image.py).
IMAGE_PACKAGES := mmdebstrap podman buildah
system-deps:
	@missing=""; \
	PATH="$(SYSTEM_PATH)" command -v nginx >/dev/null 2>&1 || missing="$$missing nginx"; \
	PATH="$(SYSTEM_PATH)" command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	/usr/bin/python3 -c "$(RTSP_CHECK)" >/dev/null 2>&1 || missing="$$missing gstreamer-rtsp"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	for tool in mmdebstrap podman buildah; do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -z "$$missing" ]; then echo "system-deps: nginx, openssl, GStreamer RTSP, chromium, mmdebstrap, podman and buildah present"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "system-deps: missing:$$missing; install them as root (Debian: apt-get install nginx-light openssl" \
			"$(RTSP_PACKAGES) chromium $(IMAGE_PACKAGES)); the tests that need them will be skipped"; exit 0; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq; \
	packages=""; \
	case "$$missing" in *nginx*) \
		if apt-cache show nginx-light >/dev/null 2>&1; then packages="nginx-light"; else packages="nginx"; fi;; esac; \
	case "$$missing" in *openssl*) packages="$$packages openssl";; esac; \
	case "$$missing" in *gstreamer-rtsp*) packages="$$packages $(RTSP_PACKAGES)";; esac; \
	case "$$missing" in *chromium*) packages="$$packages chromium fonts-dejavu-core";; esac; \
	case "$$missing" in *mmdebstrap*|*podman*|*buildah*) packages="$$packages $(IMAGE_PACKAGES)";; esac; \
	echo "system-deps: apt-get install $$packages"; \
	apt-get install -y -qq --no-install-recommends $$packages \
		|| echo "system-deps: WARNING: apt-get install $$packages failed; the tests that need them will skip"

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
