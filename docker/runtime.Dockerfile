# The runtime image: `modelkiln serve` (serving pods) and `modelkiln convert` (conversion Jobs),
# with OpenVINO, NNCF and the ONNX Runtime reference. Build from the repository root:
#   docker build -f docker/runtime.Dockerfile -t ghcr.io/modelkiln/runtime:0.1.0 .
# Intel GPU/NPU nodes also need their user-space drivers in the image (Intel compute runtime,
# NPU driver): add them in a derived image for those pools.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY crds crds
COPY operator operator
COPY runtime runtime
RUN python -m venv /opt/modelkiln \
 && /opt/modelkiln/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/modelkiln/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && /opt/modelkiln/bin/pip install --no-cache-dir --find-links /wheels "modelkiln[runtime,int8,verify]"

FROM python:3.11-slim
# uid 1000 is what the operator's pods run as (runAsUser/fsGroup 1000).
RUN useradd --uid 1000 --user-group --no-create-home --home-dir /tmp modelkiln
COPY --from=build /opt/modelkiln /opt/modelkiln
ENV PATH=/opt/modelkiln/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 1000:1000
EXPOSE 8080 8081
ENTRYPOINT ["modelkiln"]
CMD ["serve", "--repository", "/models"]
