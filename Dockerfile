# BlindHarmony BIDS App container image.
#
#   docker build -t blindharmony:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp \
#       -v /data/bids:/data:ro -v /data/out:/out -v /scratch/work:/work \
#       blindharmony:0.1.0 /data /out participant -w /work
#
# Build arguments (docs/containers.md has the details):
#   BASE_IMAGE       Debian bookworm image (default debian:bookworm-slim). Where no
#                    registry can be reached, a local one made with mmdebstrap:
#                    --build-arg BASE_IMAGE=localhost/debian:bookworm-min
#   TORCH_VARIANT    cpu (default: CPU-only torch, about 0.8 GB) or cuda (torch's CUDA
#                    build with its nvidia-* runtime wheels, several GB; the host driver
#                    comes in with `docker run --gpus all` or `apptainer run --nv`).
#   TORCH_VERSION    must satisfy setup.cfg's pin (2.13.0).
#   TORCH_INDEX_URL  where torch comes from when no wheel of it lies in PIP_FIND_LINKS:
#                    cpu: https://download.pytorch.org/whl/cpu (default);
#                    cuda: PyPI (default) or a PyTorch CUDA index, e.g. .../whl/cu128.
#   PIP_FIND_LINKS   a folder of local wheels mounted into the build (podman build
#                    -v /opt/wheels:/wheels:ro); pip reads this variable itself. A
#                    missing folder is only a warning.
#   PIP_CERT         a CA bundle for pip (podman build -v <host bundle>:<path>:ro), for
#                    networks that inspect TLS; unset by default.
#   EXTRAS           pip extras of the app (default: validator = bids-validator-deno,
#                    so the BIDS validation step runs inside the image).
#
# Not installed: FSL (FLIRT is an optional registration engine; it is several GB and
# under a non-free licence). The image uses the SimpleITK engine, which
# `--registration-engine auto` picks when `flirt` is not on the PATH. To add FSL, build
# FROM this image and put FSL's bin folder on the PATH.
#
# TemplateFlow: nothing is downloaded at run time. The reference template ships inside
# the package as a TemplateFlow tree (bids_app/data/templateflow) and in every prior
# bundle; the build copies that tree into /opt/templateflow (world-readable), the image's
# TEMPLATEFLOW_HOME, where templateflow.api.get finds it offline and writes nothing.

ARG BASE_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ARG PIP_FIND_LINKS=/wheels
ARG PIP_CERT
ARG EXTRAS=validator

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Debian's python3 follows bookworm's point releases: not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# (RUN uses /bin/sh: podman's default OCI image format ignores SHELL.)
# torch first, so that the app's `torch == X` pin is already met by the chosen variant.
# (DL3013: torch is pinned through TORCH_VERSION; SC2086: the glob is meant to expand.)
# hadolint ignore=DL3013,SC2086
RUN set -eux; \
    case "${TORCH_VARIANT}" in \
      cpu)  spec="torch==${TORCH_VERSION}+cpu"; index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"; \
            local_glob="torch-${TORCH_VERSION}+cpu-*.whl" ;; \
      cuda) spec="torch==${TORCH_VERSION}"; index="${TORCH_INDEX_URL}"; \
            local_glob="torch-${TORCH_VERSION}-*.whl" ;; \
      *)    echo "TORCH_VARIANT must be cpu or cuda, not '${TORCH_VARIANT}'" >&2; exit 2 ;; \
    esac; \
    if ls "${PIP_FIND_LINKS:-/nonexistent}"/${local_glob} > /dev/null 2>&1; then \
      echo "torch from the local wheel folder ${PIP_FIND_LINKS}"; \
      pip install "${spec}"; \
    elif [ -n "${index}" ]; then \
      pip install --index-url "${index}" --extra-index-url https://pypi.org/simple "${spec}"; \
    else \
      pip install "${spec}"; \
    fi; \
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

COPY . /src
# pip's byte-compiled files stay: a read-only image could not write them at start-up.
RUN pip install "/src${EXTRAS:+[${EXTRAS}]}" \
    && rm -rf /src

# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

ARG TORCH_VARIANT=cpu
ARG VERSION=0.1.0
ARG BUILD_DATE=unknown
ARG VCS_REF=unknown

LABEL org.opencontainers.image.title="BlindHarmony" \
      org.opencontainers.image.description="BIDS App: blind harmonization of T1-weighted MRI with a normalizing-flow prior" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.url="https://github.com/blindharmony/blindharmony" \
      org.opencontainers.image.source="https://github.com/blindharmony/blindharmony" \
      org.opencontainers.image.documentation="https://github.com/blindharmony/blindharmony/blob/main/docs/containers.md" \
      org.opencontainers.image.vendor="The BlindHarmony developers" \
      org.blindharmony.torch-variant="${TORCH_VARIANT}"

ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 blindharmony \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/blindharmony \
        --shell /bin/bash blindharmony \
    && chmod 0777 /home/blindharmony \
    && mkdir -p /opt/templateflow \
    && chmod 0755 /opt/templateflow

COPY --from=builder /opt/venv /opt/venv

# Every path the app, nipype, matplotlib, deno or torch might write to outside the bound
# output/work folders points into /tmp, so `--read-only --tmpfs /tmp` works for any uid.
# OMP_NUM_THREADS / MKL_NUM_THREADS are deliberately not set: --nprocs and
# --omp-nthreads decide. NVIDIA_* are read by the NVIDIA container toolkit (cuda variant).
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/blindharmony \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONNOUSERSITE=1 \
    NIPYPE_NO_ET=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    TORCH_HOME=/tmp/torch \
    DENO_DIR=/tmp/deno \
    DENO_NO_UPDATE_CHECK=1 \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN python3 -c "from bids_app.__about__ import __version__; print(__version__)" > /version \
    && chmod 0644 /version \
    && python3 -m bids_app.utils.templates /opt/templateflow \
    && chmod -R a+rX /opt/templateflow \
    && blindharmony --version

# The default work folder (./work) lands in /tmp; bind a real one with -w.
WORKDIR /tmp
USER 1000:1000

ENTRYPOINT ["blindharmony"]
CMD ["--help"]
