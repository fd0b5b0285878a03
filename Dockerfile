# The builder image: both executables, for use as a Cloud Build step (see cloudbuild.yaml) or with
# `docker run`. Built by builder/cloudbuild.yaml. The images that `builder` makes do not use this file:
# it assembles them itself, layer by layer, with no Docker daemon.
FROM swift:6.3-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      pkg-config libarchive-dev libcurl4-openssl-dev libssl-dev zlib1g-dev libzstd-dev python3-pip \
    && rm -rf /var/lib/apt/lists/*
# NVRTC 12.2 (CUDA 12.2 is what Cloud Run's L4 driver runs): `builder ship` and `build --gpu` put it
# into GPU images, where the server compiles its kernels with it. Taken from NVIDIA's pip wheel.
RUN python3 -m pip download --no-deps --only-binary=:all: -d /tmp/wheels nvidia-cuda-nvrtc-cu12==12.2.140 \
    && python3 -m zipfile -e /tmp/wheels/nvidia_cuda_nvrtc_cu12-*.whl /tmp/nvrtc
WORKDIR /src
COPY Package.swift ./
COPY Sources ./Sources
COPY Tests ./Tests
# A static Swift runtime keeps the server layer of every image small: only glibc and friends remain.
RUN swift build -c release --static-swift-stdlib \
    && cp "$(swift build -c release --static-swift-stdlib --show-bin-path)"/{builder,inference-server} /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      libarchive13 libcurl4 libssl3 zlib1g libzstd1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/builder /usr/local/bin/inference-server /usr/local/bin/
COPY --from=build /tmp/nvrtc/nvidia/cuda_nvrtc/lib/ /usr/local/lib/nvrtc/
ENV INFERENCE_NVRTC=/usr/local/lib/nvrtc/libnvrtc.so.12
ENTRYPOINT ["/usr/local/bin/builder"]
