#!/usr/bin/env bash
# Run by Snakemake inside the fresh conda environment of envs/mmie.yaml (--sdm conda): the packages of
# requirements-nodeps.txt, without their dependencies (pyreft 0.1.0 pins transformers 4.45 and an old
# torch; see the README). tests/workflow/test_envs.py checks the pins against requirements-nodeps.txt.
set -euo pipefail
pip install --no-deps pyvene==0.1.8 pyreft==0.1.0
