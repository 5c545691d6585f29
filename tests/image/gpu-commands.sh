#!/usr/bin/env bash
# The GPU user's commands for the image, in one place: the docs quote them and tests/workflow/test_container.py
# runs the `#@ run-*` lines exactly as written (through a stub apptainer; every line is expanded by
# bash with HF_HOME/CONFIG set, then `-d WORKDIR TARGET` is appended). Run from the repository root:
# your working tree is bound over the image's /mmie, so the jobs run your mmie/ and scripts/.
# Needs: apptainer >= 1.1 and an NVIDIA driver that supports CUDA 13.0 (>= 580) on the GPU machine.
set -euo pipefail
: "${HF_HOME:?export HF_HOME=/path/to/your/hf-cache (it is bound at /hf-cache)}"
REGISTRY=${REGISTRY:-ghcr.io/your-name}
CONFIG=${CONFIG:-my.yaml}

# 1. build the image (buildah, no daemon; or: docker build -t mmie:0.1.0 --build-arg IMAGE=mmie:0.1.0 ...)
#@ build
make image BASE=debian:12-slim IMAGE="$REGISTRY/mmie:0.1.0"
# 2. push it to a registry the GPU machine can pull from; the digest of what was pushed goes to a file
#@ push
buildah push --digestfile mmie.digest "$REGISTRY/mmie:0.1.0" "docker://$REGISTRY/mmie:0.1.0"
# 3. pin it by digest in your config (the tag can move, the digest cannot)
#@ pin
echo "container: \"docker://$REGISTRY/mmie@$(cat mmie.digest)\"" >> "$CONFIG"
# 4. run: every job in the pinned image, GPU passed through, the HF cache and the working tree bound.
#    Either the profile (profiles/apptainer/config.yaml holds the same flags) ...
#@ run-profile
snakemake --profile profiles/apptainer --configfile "$CONFIG" --cores 8 --resources gpu=1
#    ... or the flags spelled out. Note the `=`: `--apptainer-args "--nv ..."` fails in argparse
#    (a value that starts with `--` is taken for an option).
#@ run-explicit
snakemake --sdm apptainer --apptainer-args="--nv --bind $PWD:/mmie --bind $HF_HOME:/hf-cache" --configfile "$CONFIG" --cores 8 --resources gpu=1
