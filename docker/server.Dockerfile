# The serving image: `modelkiln serve` only (OpenVINO Runtime, KServe v2 REST/gRPC, TF-Serving,
# SageMaker). Conversion Jobs use converter.Dockerfile. Build from the repository root:
#   docker build -f docker/server.Dockerfile -t ghcr.io/modelkiln/server:0.1.0 .
# Intel GPU/NPU nodes also need their user-space drivers in the image (Intel compute runtime,
# NPU driver): add them in a derived image for those pools.

ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# PIP_CERT: a CA bundle mounted at build time, for networks that intercept TLS; build stage only.
ARG PIP_CERT= PIP_INDEX_URL= PIP_EXTRA_INDEX_URL=
WORKDIR /src
COPY pyproject.toml README.md ./
COPY crds crds
COPY operator operator
COPY runtime runtime
# pip is not needed at run time, nor OpenVINO's telemetry sender: without it OpenVINO uses its
# no-op stub, whatever runs in the container (modelkiln/telemetry.py). The .pyc files stay:
# 6 MiB compressed, but without them every pod start spends 0.3 s more importing.
RUN python -m venv /opt/modelkiln \
 && /opt/modelkiln/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/modelkiln/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && /opt/modelkiln/bin/pip install --no-cache-dir --find-links /wheels "modelkiln[serve]" \
 && /opt/modelkiln/bin/pip uninstall --yes --quiet pip setuptools openvino-telemetry
# Serving reads OpenVINO IR only: drop the frontends of the other model formats (ONNX, TensorFlow,
# TF Lite, PaddlePaddle, PyTorch, JAX, GGUF) and the C++ headers. The IR frontend and every
# device plugin (CPU, GPU, NPU, AUTO, HETERO, BATCH) stay.
RUN cd /opt/modelkiln/lib/python3*/site-packages/openvino \
 && find libs -name 'libopenvino_*_frontend.so*' ! -name 'libopenvino_ir_frontend.so*' -delete \
 && find frontend -mindepth 1 -maxdepth 1 -type d -exec rm -r {} + \
 && rm -r include

FROM ${BASE}
# uid 1000 is what the operator's pods run as (runAsUser/fsGroup 1000).
RUN groupadd --gid 1000 modelkiln \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp modelkiln
COPY --from=build /opt/modelkiln /opt/modelkiln
ENV PATH=/opt/modelkiln/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 1000:1000
EXPOSE 8080 8081
ENTRYPOINT ["modelkiln"]
CMD ["serve", "--repository", "/models"]
