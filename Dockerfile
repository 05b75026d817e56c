# bids_brainage as a BIDS App image.
#   ../shared/tools/container-check build .                 (here: podman, chroot isolation)
#   docker build -t bids_brainage .                          (elsewhere)
#   docker run --rm -u "$(id -u):$(id -g)" -v /data:/data:ro -v /out:/out -v /work:/work \
#       bids_brainage /data /out participant -w /work
#   docker compose up                                        (the web service: compose.yaml)
#
# Three stages: `deps` makes a virtual environment in /opt/venv from pinned wheels, `package`
# builds the app's wheel, and the final stage is bookworm-slim plus Debian's Python, that
# environment and the app (no pip cache, no apt lists, no compilers). Layers run from least to
# most often changed: a code change rebuilds only the wheel and its small layer.

FROM debian:bookworm-slim AS deps

# The wheel index torch comes from: PyTorch's CPU-only index keeps the CUDA libraries
# (several GB) out of the image.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install pip==26.3

ENV PATH=/opt/venv/bin:$PATH

# torch first and alone, so that nothing installed after it can bring a CUDA build. Its C++
# headers and test binaries (145 MB) serve only for compiling extensions and testing torch.
RUN pip install --no-deps --index-url "$TORCH_INDEX_URL" torch==2.13.0 \
 && rm -rf /opt/venv/lib/python3.11/site-packages/torch/include \
           /opt/venv/lib/python3.11/site-packages/torch/test

COPY requirements-lock.txt /tmp/requirements-lock.txt
RUN pip install --no-deps -r /tmp/requirements-lock.txt


FROM deps AS package
COPY setup.cfg pyproject.toml /src/
COPY bids_brainage /src/bids_brainage
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist /src


FROM debian:bookworm-slim

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="bids_brainage" \
      org.opencontainers.image.description="BIDS App: brain age from T1-weighted MRI (3D ResNet and random forest)" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/bids-brainage/bids_brainage" \
      org.opencontainers.image.documentation="https://github.com/bids-brainage/bids_brainage#readme" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# dcm2niix: the web service converts uploaded DICOM zips with it
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 dcm2niix \
 && rm -rf /var/lib/apt/lists/*

COPY --from=deps /opt/venv /opt/venv

# Any user id, read-only input, read-only image (Singularity): every cache goes to /tmp, nothing
# looks for a home folder, and nothing reaches the network (no telemetry, no update checks).
# BIDS_BRAINAGE_CONTAINER is recorded in the outputs' dataset_description.json (GeneratedBy).
ENV BIDS_BRAINAGE_CONTAINER=bidsbrainage/bids_brainage:$VERSION \
    PATH=/opt/venv/bin:$PATH \
    LANG=C.UTF-8 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONNOUSERSITE=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    NIPYPE_NO_ET=1 \
    NIPYPE_CONFIG_DIR=/tmp/.cache/nipype \
    NUMBA_CACHE_DIR=/tmp/.cache/numba \
    TORCH_HOME=/tmp/.cache/torch \
    NILEARN_DATA=/tmp/.cache/nilearn_data \
    DENO_DIR=/tmp/.cache/deno \
    DENO_NO_UPDATE_CHECK=1 \
    DENO_NO_PROMPT=1

# pip check fails the build if the lock is incomplete or outside setup.cfg's ranges; the
# validator's bundle is compiled once into /opt/venv/share (a run's work dir starts with it).
COPY --from=package /dist /tmp/dist
RUN PIP_NO_CACHE_DIR=1 pip install --no-deps --no-index /tmp/dist/*.whl \
 && rm -rf /tmp/dist \
 && python -c "from bids_brainage.bids.validate import compile_validator as c; import sys; sys.exit(not c())" \
 && PIP_DISABLE_PIP_VERSION_CHECK=1 pip check \
 && python -c "import torch, sys; sys.exit(torch.version.cuda is not None)"

# The BIDS App by default; the web service from the same image (compose.yaml):
#   --entrypoint bids_brainage-web ... serve --host 0.0.0.0   |   ... worker
EXPOSE 8000
ENTRYPOINT ["bids_brainage"]
