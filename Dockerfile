# The builder image: both executables, for use as a Cloud Build step (see cloudbuild.yaml) or with
# `docker run`. Built by builder/cloudbuild.yaml. The images that `builder` makes do not use this file:
# it assembles them itself, layer by layer, with no Docker daemon.
FROM swift:6.3-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      pkg-config libarchive-dev libcurl4-openssl-dev libssl-dev zlib1g-dev libzstd-dev \
    && rm -rf /var/lib/apt/lists/*
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
ENTRYPOINT ["/usr/local/bin/builder"]
