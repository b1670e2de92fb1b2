# The operator image: `modelkiln operator` (kopf), without OpenVINO. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/modelkiln/operator:0.1.0 .

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY crds crds
COPY operator operator
COPY runtime runtime
RUN python -m venv /opt/modelkiln \
 && /opt/modelkiln/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/modelkiln/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && /opt/modelkiln/bin/pip install --no-cache-dir --find-links /wheels "modelkiln[operator]"

FROM python:3.11-slim
RUN useradd --uid 1000 --user-group --no-create-home --home-dir /tmp modelkiln
COPY --from=build /opt/modelkiln /opt/modelkiln
ENV PATH=/opt/modelkiln/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 1000:1000
EXPOSE 8080 9090
ENTRYPOINT ["modelkiln"]
CMD ["operator"]
