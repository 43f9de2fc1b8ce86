# uniproto: `make demo` and `make test` each set up .venv first (idempotent).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.uniproto-installed
DEMO_DATA := runs/datasets/demo
ABLATE_DATA := runs/datasets/demo-crowded

.PHONY: setup demo ablate test test-fast lint format clean gpu-bundle gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml cluster/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing uniproto and its pinned stack into $(VENV) (about 2 minutes the first time)"
	@free_kib=$$(df -Pk . | awk 'NR == 2 {print $$4}'); if [ "$$free_kib" -lt 8388608 ]; then \
	  echo "[setup] warning: $$((free_kib / 1048576)) GiB free on this disk; $(VENV) takes about 7 GiB" \
	    "(torch's CUDA build and its NVIDIA libraries)"; fi
	$(PY) -m pip install --quiet --disable-pip-version-check -c cluster/constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: setup
	@test -f $(DEMO_DATA)/manifest.json || $(VENV)/bin/uniproto make-demo-data --out $(DEMO_DATA)
	$(VENV)/bin/uniproto run --config pipelines/configs/demo.yaml

# The ablation on the crowded-tail demo: 5 stage-1 recipes x 3 seeds, tau_p chosen on val from a 3-point grid
# (39 stage-1 runs of about 2 minutes on 2 cores: 1 h 22 min on 2026-12-06). `make ablate ABLATE_ARGS=` skips the grid
# (15 runs, about 40 minutes).
ABLATE_ARGS ?= --space tune_spaces/ablate_temperature.yaml
ablate: setup
	@test -f $(ABLATE_DATA)/manifest.json || $(VENV)/bin/uniproto make-demo-data --profile crowded --out $(ABLATE_DATA)
	$(VENV)/bin/uniproto ablate --config pipelines/configs/ablate.yaml $(ABLATE_ARGS)

test: setup
	$(PY) -m pytest

# Everything that starts no Ray (tests marked `integration` start a local Ray cluster): minutes, not half an hour.
test-fast: setup
	$(PY) -m pytest -m "not integration"

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

# The one-GPU check (docs/gpu-check.md). `make gpu-bundle`, here (it downloads): the cp312 wheels the GPU machine
# lacks, into the git-ignored .whl/ (about 49 MiB with the working tree, under the 64 MiB one call carries).
# `make gpu-check`, there: no .venv is made; the machine's own python3 (with its torch) runs the check, the wheels
# installed first into /tmp/site and put on PYTHONPATH. The run command's line, with `.whl` carried:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/peer-site .whl/peer/*.whl
#   && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 || exit; python3 -m pipelines.bench.gpu --peer-site
#   /tmp/peer-site --workdir /tmp/gpu-check --out $OUT/gpu-check.json; tar czf $OUT/logs.tgz -C /tmp/gpu-check logs
# `make gpu-check GPU_CHECK_ARGS=--smoke` runs the same orchestration on a CPU in a few minutes.
GPU_CHECK_ARGS ?=
GPU_CHECK_OUT ?= runs/gpu-check/gpu-check.json
gpu-bundle: setup
	$(PY) -m pipelines.gpu_bundle

gpu-check:
	$(PYTHON) -m pipelines.bench.gpu --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

clean:
	rm -rf runs .pytest_cache .ruff_cache
