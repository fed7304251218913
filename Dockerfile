# The disagg operator image: `disagg run` as a non-root user on a read-only root filesystem.
# Build:  docker build -t ghcr.io/disagg/disagg-operator:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
# only what `pip install .` needs (see .dockerignore)
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --no-compile --prefix=/install . \
 && find /install -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim
LABEL org.opencontainers.image.title="disagg-operator" \
      org.opencontainers.image.description="Kubernetes operator for disaggregated prefill/decode LLM serving" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /install /usr/local
# a numeric UID, so the kubelet can verify runAsNonRoot without an /etc/passwd lookup
RUN groupadd --system --gid 65532 disagg \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin disagg
USER 65532:65532
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# kopf's liveness endpoint (`disagg run --liveness http://0.0.0.0:8080/healthz`, set by the chart)
EXPOSE 8080
ENTRYPOINT ["disagg"]
CMD ["run"]
