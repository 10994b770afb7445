# lora-operator — the two commands people need are `make demo` and `make test`;
# both do their own set-up (apt packages, venv, Go builds of the test ground).

SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)/tests
PYTEST := $(BIN)/pytest -p no:cacheprovider

.PHONY: setup apt venv tools tinybase test test-unit test-trainer test-learning test-cluster test-multikueue lint crds chaos fuzz demo \
        cluster-up cluster-down bench-cpu bench-gpu clean

setup: apt venv tools  ## everything the tests and the demo need

apt:  ## Debian packages: openssl for the test ground's PKI, lua for the Argo CD health check test, chromium for the dashboard's browser tests
	@missing=""; for p in openssl lua5.4 chromium; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[operator,trainer,dev]'
	touch $@

venv: $(STAMP)

tools:  ## kube-apiserver, controller-manager, scheduler, kubectl, etcd, kwok, helm, MinIO from Go modules (cached)
	bash tests/cluster/build-tools.sh

tinybase: venv  ## the tiny bases (noise and v-prediction: SD1.5 topology; flow matching: Flux) pretrained on the procedural world (tests/tinyworld), cached in ~/.cache
	$(BIN)/python -m tinyworld

# The unit and trainer tests are CPU work of one process each: two pytest-xdist workers run them on the two cores.
# The cluster tests share one test ground (a session fixture) and run after them in one process, the machine theirs.
FAST := tests/unit tests/trainer
SUITE := -m "not chaos and not slow and not multikueue" --durations=10
test: setup tinybase  ## the whole suite: unit, trainer (tiny models), cluster (real control plane + MinIO), e2e
	$(MAKE) lint
	$(PYTEST) $(FAST) -n 2 $(SUITE)
	$(PYTEST) tests $(FAST:%=--ignore=%) $(SUITE)

test-unit: venv
	$(PYTEST) tests/unit

test-trainer: venv tinybase
	$(PYTEST) tests/trainer -m "not slow"

test-learning: venv tinybase  ## the learning proofs with their longer variants (pytest -m slow: LoCon and embedding controls, the concept's cross on the three -crosses bases), whether the bases draw the asked shapes, and whether the demo's job learns with its prior set (and leaks without)
	$(BIN)/python -m tinyworld flow-crosses epsilon-crosses vpred-crosses
	$(PYTEST) tests/trainer/test_learning.py tests/trainer/test_learning_shape.py tests/trainer/test_base_draws.py tests/trainer/test_demo_job_learns.py --durations=0

test-cluster: setup
	$(PYTEST) tests/cluster tests/e2e

test-multikueue: setup  ## MultiKueue: a job on a manager control plane trained on a worker control plane (each with its own Kueue)
	$(PYTEST) tests/cluster/test_multikueue.py -m multikueue --durations=0

chaos: setup  ## fault injection: kill -9, node loss, storage and apiserver outages
	$(PYTEST) tests -m chaos

fuzz: setup  ## schema-driven fuzzer: specs drawn from the CRD schema on the real control plane (make test runs 40)
	LORA_FUZZ_EXAMPLES=$${LORA_FUZZ_EXAMPLES:-1000} $(PYTEST) tests/cluster/test_fuzz_specs.py -s

lint: venv
	$(BIN)/ruff check operator trainer-image tests examples bench
	$(BIN)/lint-imports
	$(BIN)/python -m lora_operator.crdgen --check

crds: venv  ## regenerate crds/ and docs/reference.md from the pydantic models
	$(BIN)/python -m lora_operator.crdgen
	bash helm/sync-crds.sh

cluster-up: setup  ## a local control plane + 3 kwok GPU nodes + MinIO for people; prints KUBECONFIG
	$(BIN)/python -m testground up

cluster-down:
	$(BIN)/python -m testground down

demo: setup tinybase  ## the whole product on one machine: operator, a LoRA trained on the tiny base, its contact sheet
	$(BIN)/python examples/demo.py

bench-cpu: venv  ## trainer speed smoke on CPU (tiny models): ours vs a diffusers-example loop
	$(BIN)/python bench/trainer.py --device cpu --tiny --case all --json bench/results-cpu.json

bench-gpu: venv  ## issue 21's GPU suite: every family's speed + time-to-LoRA, a process per case, 520 s in all
	$(BIN)/python bench/gpu_suite.py --budget-s $(or $(BENCH_BUDGET),520)

clean:
	rm -rf $(VENV) .cache
