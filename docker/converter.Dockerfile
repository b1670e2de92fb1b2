# The conversion image: `modelkiln convert` for the operator's conversion Jobs (OpenVINO with its
# model-format frontends, ONNX, NNCF for INT8, ONNX Runtime as the verification reference).
# Build from the repository root:
#   docker build -f docker/converter.Dockerfile -t ghcr.io/modelkiln/converter:0.1.0 .

ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# PIP_CERT: a CA bundle mounted at build time, for networks that intercept TLS; build stage only.
ARG PIP_CERT= PIP_INDEX_URL= PIP_EXTRA_INDEX_URL=
WORKDIR /src
COPY pyproject.toml README.md ./
COPY crds crds
COPY operator operator
COPY runtime runtime
# pip is not needed at run time, nor OpenVINO's and NNCF's telemetry sender: without it they use
# their no-op stubs, whatever runs in the container (modelkiln/telemetry.py).
RUN python -m venv /opt/modelkiln \
 && /opt/modelkiln/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/modelkiln/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && /opt/modelkiln/bin/pip install --no-cache-dir --find-links /wheels "modelkiln[convert]" \
 && /opt/modelkiln/bin/pip uninstall --yes --quiet pip setuptools openvino-telemetry

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
ENTRYPOINT ["modelkiln"]
CMD ["convert", "--help"]
