# One place for set-up; `make test` and `make demo` both start with it.
# Idempotent: a second run only checks stamps and installed packages.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
QIIME := $(VENV)/bin/qiime
# Debian's QIIME 2 2022.11 stack (never PyPI), Striped UniFrac (the reference for the tree-based
# batch distances), and Chromium with its driver and selenium for the browser tests.
APT_PACKAGES := qiime q2cli q2-types q2templates q2-feature-table q2-sample-classifier \
	q2-diversity-lib q2-metadata python3-unifrac chromium chromium-driver python3-selenium
PIP_PACKAGES := torch==2.13.0 safetensors tensorboard tqdm pytest
DEMO_DIR := demo-output

# The torch core imports no QIIME 2: its tests also run in a venv of its own with
# the newest numpy 2, pandas 2, scipy and scikit-learn from PyPI (forward compatibility).
CORE_VENV := $(CURDIR)/.venv-core
CORE_TESTS := tests/test_core.py tests/test_lookup.py tests/test_simulate.py \
	tests/test_tree_unifrac.py tests/test_metrics.py

.PHONY: setup apt test test-core-latest demo bench clean

setup: apt $(VENV)/.setup-done $(VENV)/.cache-done

apt:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { \
	  echo "Installing Debian's QIIME 2 packages..."; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -q --no-install-recommends $(APT_PACKAGES); }

# constraints.txt keeps pip from replacing Debian's numpy/pandas/h5py/biom.
$(VENV)/.setup-done: setup.py constraints.txt bin/qiime-venv.sh
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -c constraints.txt $(PIP_PACKAGES)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	sed "s|@VENV@|$(VENV)|g" bin/qiime-venv.sh > $(QIIME) && chmod +x $(QIIME)
	$(PY) -c "import numpy, pandas, h5py, biom; assert numpy.__version__ < '2', numpy.__version__; \
	  assert all(m.__file__.startswith('/usr/lib/python3/') for m in (numpy, pandas, h5py, biom)), 'Debian stack replaced'"
	touch $@

# q2cli caches every plugin's signatures: rebuild it when the plugin changes,
# or the CLI keeps offering the old parameters.
$(VENV)/.cache-done: $(VENV)/.setup-done $(wildcard q2_aam/*.py)
	$(QIIME) dev refresh-cache
	touch $@

test: setup
	$(PY) -m pytest -q tests

test-core-latest:
	test -x $(CORE_VENV)/bin/python || /usr/bin/python3 -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/python -m pip install -q --upgrade "numpy>=2" "pandas>=2" scipy \
	  scikit-learn torch==2.13.0 safetensors tensorboard tqdm pytest
	$(CORE_VENV)/bin/python -c "import numpy, pandas; assert numpy.__version__ >= '2' \
	  and pandas.__version__ >= '2', (numpy.__version__, pandas.__version__)"
	PYTHONPATH=$(CURDIR) $(CORE_VENV)/bin/python -m pytest -q -p no:cacheprovider $(CORE_TESTS)

demo: setup
	bash bin/demo.sh $(QIIME) $(PY) $(DEMO_DIR)

bench: setup
	$(PY) bench/pretrain_throughput.py

clean:
	rm -rf $(VENV) $(CORE_VENV) $(DEMO_DIR) .pytest_cache
