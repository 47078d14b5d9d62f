# syntax=docker/dockerfile:1.7
# Saguaro's GPU images, both from this one file: the target service (the large model, on CUDA
# GPUs: the chart's target pods) and the draft service (the small model that speculates, on a
# CUDA GPU: the chart's draft containers / pods). They run the same package on the same base and
# differ only in their last stage, so each is built by naming its stage:
#
#   docker build -f services/gpu.Dockerfile --target target -t REGISTRY/saguaro/saguaro-target:0.1.0 .
#   docker build -f services/gpu.Dockerfile --target draft  -t REGISTRY/saguaro/saguaro-draft:0.1.0 .
#
# The build context is the repository root (see /.dockerignore). Stage "build" compiles wheels of
# the repository and its dependencies, with the `gpu` extra (flash-attn builds against torch, so it
# builds without isolation); stage "runtime" installs those wheels on a CUDA runtime base with a
# standalone CPython and no compilers, and runs as uid 10001; stages "draft" and "target" add only
# their ports, health check and default command. --build-arg EXTRAS= skips the extra.
# (The gateway's image is CPU only, on another base: services/gateway/Dockerfile.)
ARG CUDA_VERSION=12.8.1
ARG UBUNTU=ubuntu24.04
ARG PYTHON_VERSION=3.11

FROM ghcr.io/astral-sh/uv:0.8.22 AS uv

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-${UBUNTU} AS build
ARG PYTHON_VERSION
ARG EXTRAS=gpu
ARG MAX_JOBS=8
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=uv /uv /usr/local/bin/uv
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# A standalone CPython under /opt/python (copied as is into the runtime stage), a build venv with
# pip, and the empty runtime venv /opt/saguaro the runtime stage installs into.
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --seed --python "${PYTHON_VERSION}" /opt/build \
    && uv venv --python "${PYTHON_VERSION}" /opt/saguaro
WORKDIR /src
COPY pyproject.toml README.md ./
COPY saguaro ./saguaro
COPY services ./services
COPY kernels ./kernels
RUN TORCH="$(/opt/build/bin/python -c 'import tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print(next(d for d in deps if d.startswith("torch")))')" \
    && /opt/build/bin/pip install "${TORCH}" "setuptools>=68" "wheel>=0.43" "packaging>=24" "ninja>=1.11" "psutil>=5.9" \
    && MAX_JOBS="${MAX_JOBS}" /opt/build/bin/pip wheel --no-build-isolation --wheel-dir /wheels ".${EXTRAS:+[${EXTRAS}]}"

# Everything the two images share; not an image of its own (build "draft" or "target").
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU} AS runtime
ARG EXTRAS=gpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN groupadd --system --gid 10001 saguaro \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin saguaro
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/saguaro /opt/saguaro
# Wheels and the installer are mounted for this step only: nothing of the build stays in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=uv,source=/uv,target=/usr/local/bin/uv \
    uv pip install --no-cache --python /opt/saguaro/bin/python --no-index --find-links /wheels "saguaro${EXTRAS:+[${EXTRAS}]}" \
    && /opt/saguaro/bin/saguaro --help > /dev/null
COPY --chmod=0444 helm/saguaro/files/saguaro-probe.py /opt/saguaro/probe/saguaro-probe.py
ENV PATH=/opt/saguaro/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HUB_OFFLINE=1
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["saguaro"]

# The draft image: saguaro-draft.
FROM runtime AS draft
# gRPC (saguaro.v1.Speculation), Prometheus metrics.
EXPOSE 50061 9401
# The gRPC port opens once the draft model is loaded.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20m --retries=3 \
    CMD ["python", "/opt/saguaro/probe/saguaro-probe.py", "tcp", "--port", "50061"]
CMD ["draft", "--help"]

# The target image: saguaro-target (the last stage, so a build without --target makes it).
FROM runtime AS target
# gRPC (saguaro.v1.Inference), Prometheus metrics.
EXPOSE 50051 9400
# saguaro.v1.Inference/Health answers SERVING or DEGRADED once the model is loaded.
HEALTHCHECK --interval=30s --timeout=6s --start-period=30m --retries=3 \
    CMD ["python", "/opt/saguaro/probe/saguaro-probe.py", "health", "--port", "50051", "--timeout", "5"]
CMD ["target", "--help"]
