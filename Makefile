# Every target sets up the virtual environment (.venv) from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo synthetic bench clean

setup: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) demo.py

# CPU benchmarks (each prints a table and saves JSON under results/; see docs/benchmarks.md).
# real_echo needs a trained model (make demo) and the 120-frame cine from requirements-bench.txt; bench.physics
# simulates its validation set once (about 16 minutes on 2 cores, cached in results/physics_echo/).
bench: $(STAMP)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) bench/network.py
	$(PY) bench/scaling.py --threads 1
	$(PY) bench/real_echo.py
	$(PY) -m bench.physics --docs
	$(PY) bench/drift_check.py --docs

clean:
	rm -rf $(VENV) bundle/data bundle/eval

# Synthetic echo data (CAMUS NIfTI layout) into bundle/data/synthetic; override e.g. SYNTHETIC_PATIENTS=10.
SYNTHETIC_PATIENTS ?= 50
SYNTHETIC_SEED ?= 0
synthetic: $(STAMP)
	cd bundle && $(abspath $(PY)) -m scripts.synthetic --out data/synthetic --patients $(SYNTHETIC_PATIENTS) --seed $(SYNTHETIC_SEED)

# Versioned bundle zip in dist/ (see docs/deploy.md). WEIGHTS_URL: where bundle/models/model.pt will be uploaded
# (writes large_files.yml with its md5); INCLUDE_WEIGHTS=True also puts the weights inside the zip.
WEIGHTS_URL ?=
INCLUDE_WEIGHTS ?= False
.PHONY: package
package: $(STAMP)
	$(PY) tools/package_bundle.py --out_dir dist --include_weights $(INCLUDE_WEIGHTS) $(if $(WEIGHTS_URL),--weights_url $(WEIGHTS_URL))

# MONAI Label end to end (its own venv .venv-monailabel, built on first use: about 4 min, 3.7 GB).
.PHONY: monailabel-env test-monailabel
monailabel-env:
	tools/monailabel/setup_env.sh
test-monailabel: $(STAMP) monailabel-env
	$(PY) -m pytest -q tests/test_monailabel.py

# MONAI Deploy application (tools/monai_deploy): its own venv, $GDKVM_MONAI_DEPLOY_VENV or
# ~/.cache/gdkvm-echo/venv-monai-deploy, built on first use (about 1-2 min, 1.9 GB); see docs/deploy.md.
.PHONY: monai-deploy-env test-monai-deploy
monai-deploy-env:
	tools/monai_deploy/setup_env.sh
test-monai-deploy: $(STAMP) monai-deploy-env
	$(PY) -m pytest -q tests/test_monai_deploy.py
