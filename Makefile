# The two commands of the README:  `make demo`  (set up + run the demo + build the report)
#                                  `make test`  (set up + lint + the test suite, incl. an end-to-end run)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= 2
EXPERIMENT ?= demo

.PHONY: setup demo demo-check demo-docs report test test-slurm lint lock clean image test-image

setup: $(VENV)/.installed

# torch==2.13.0 resolves to the local CPU wheel on CPU machines; constraints.txt pins every
# transitive dependency; pyvene/pyreft go in with --no-deps (pyreft pins transformers 4.45).
$(VENV)/.installed: requirements.txt requirements-nodeps.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(BIN)/pip install --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report results/$(EXPERIMENT)/report.html
	@echo "Report: results/$(EXPERIMENT)/report.html   Summary: results/$(EXPERIMENT)/summary/summary.md"
	$(BIN)/python -m mmie.failures results/$(EXPERIMENT)

# A fresh demo run against the committed expected one (same layers and decisions, every headline
# estimate inside the expected run's interval and vice versa; tests/expected/demo.json, docs/demo.md).
demo-check: setup
	$(BIN)/python -m mmie.report.demo_results compare results/demo tests/expected/demo.json

# After a deliberate change of the demo's results: regenerate the expected run and the docs' tables.
demo-docs: setup
	$(BIN)/python -m mmie.report.demo_results expect results/demo tests/expected/demo.json
	$(BIN)/python -m mmie.report.demo_results table results/demo docs/demo.md
	$(BIN)/python benchmarks/rule_times.py results/demo --startup --markdown docs/demo.md

report: setup
	$(BIN)/snakemake --report results/$(EXPERIMENT)/report.html

lint: setup
	$(BIN)/ruff check mmie scripts tests benchmarks
	$(BIN)/snakemake --lint
	$(BIN)/mypy
	$(BIN)/snakefmt --check Snakefile rules/

test: lint
	$(BIN)/python -m pytest tests

# The SLURM test (needs root): the executor plugin (optional extra), then a real one-node cluster
# (tests/slurm/up.sh installs Debian's slurm-wlm, munge, slurmdbd, mariadb-server if missing), the
# grid on it (tests/workflow/test_slurm.py), and the cluster stopped again, also when a test fails.
$(VENV)/.slurm-installed: $(VENV)/.installed requirements-slurm.txt
	$(BIN)/pip install --disable-pip-version-check -r requirements-slurm.txt
	touch $@

test-slurm: $(VENV)/.slurm-installed
	tests/slurm/up.sh && MMIE_REQUIRE_SLURM=1 $(BIN)/python -m pytest tests/workflow/test_slurm.py; \
	rc=$$?; tests/slurm/down.sh; exit $$rc

# The image (Dockerfile), built with buildah, no daemon (apt-installs buildah/debootstrap if missing;
# the base is a debootstrap'ed Debian 12 unless BASE=debian:12-slim), then checked: pins, the working
# tree's code inside, and the reduced workflow in the image against the venv (tests/image/).
IMAGE ?= mmie:0.1.0

image:
	IMAGE=$(IMAGE) BASE=$(BASE) TORCH_INDEX_URL=$(TORCH_INDEX_URL) TORCH_VERSION=$(TORCH_VERSION) tests/image/build.sh

test-image: setup
	IMAGE=$(IMAGE) PYTHON=$(BIN)/python CORES=$(CORES) tests/image/test.sh

lock: setup
	$(BIN)/pip freeze --exclude-editable | grep -v -E '^(mmie|pyreft|pyvene)' | sed 's/+cpu//' > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf results .snakemake
