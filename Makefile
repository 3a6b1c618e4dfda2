# Two commands set up everything on a fresh machine:
#   make demo   build the sample catalog's artifact (first time only) and serve it on 127.0.0.1:8000
#   make test   run the test suite
# Both create .venv and install from the lock file (constraints.txt) with the CPU torch pin.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; an unpinned `torch` pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= serve,train,dev
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

DEMO_DATA      ?= var/sample
DEMO_ARTIFACTS ?= var/artifacts
# `make demo PORT=8080` (or SERVICE_PORT / SERVICE_HOST in the environment, as `service serve` reads them)
HOST ?= $(or $(SERVICE_HOST),127.0.0.1)
PORT ?= $(or $(SERVICE_PORT),8000)
# The demo's build trains a short schedule so that it serves within minutes on 2 cores; the full
# default (4 epochs) is `make demo DEMO_EPOCHS=4` after `rm -rf var/artifacts`, or `service build-index`.
DEMO_EPOCHS ?= 2
# The demo records POST /events here; `service build-index --interactions $(DEMO_EVENTS)` learns from it.
DEMO_EVENTS ?= var/log/events.jsonl

.PHONY: install demo test test-fast lint lint-deploy clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $@

install: $(STAMP)

$(DEMO_DATA)/catalog.jsonl: | $(STAMP)
	$(BIN)/service sample-catalog --out $(DEMO_DATA)

$(DEMO_ARTIFACTS)/current: $(DEMO_DATA)/catalog.jsonl
	$(BIN)/service build-index --catalog $(DEMO_DATA)/catalog.jsonl \
		--interactions $(DEMO_DATA)/interactions.jsonl \
		--judgments $(DEMO_DATA)/judgments.jsonl \
		--epochs $(DEMO_EPOCHS) --artifacts $(DEMO_ARTIFACTS)

demo: $(STAMP) $(DEMO_ARTIFACTS)/current
	SERVICE_IMAGE_ROOT=$(DEMO_DATA) SERVICE_EVENTS_LOG=$(DEMO_EVENTS) $(BIN)/service serve --artifacts $(DEMO_ARTIFACTS) --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The suite without the tests marked slow (builds, servers, browsers): a quick check while editing.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check model index service tests bench

# Dockerfiles (hadolint) and every k8s overlay (kubectl kustomize -> strict schema validation),
# offline; then the consistency tests (docs/DEPLOY.md, "What is tested here").
K8S_VERSION ?= 1.33.0
lint-deploy: $(STAMP)
	$(BIN)/hadolint --failure-threshold style Dockerfile Dockerfile.cuda
	for o in cpu gpu cpu/pipeline gpu/pipeline; do \
		$(BIN)/kubectl kustomize k8s/overlays/$$o | $(BIN)/kubernetes-validate --strict --quiet -k $(K8S_VERSION) - || exit 1; \
	done
	$(BIN)/python -m pytest -q tests/deploy

clean:
	rm -rf $(VENV) var .pytest_cache
