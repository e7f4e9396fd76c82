# syntax=docker/dockerfile:1
# One image, two entry points: gptomni-relay (default) and gptomni-operator.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY operator ./operator
COPY scripts/install-into-venv.sh ./scripts/
RUN sh scripts/install-into-venv.sh /opt/gptomni /src

FROM python:3.11-slim
LABEL org.opencontainers.image.title="gptomni" \
      org.opencontainers.image.description="OpenAI-compatible relay for the GPT-Omni web chat, and its cookie-health operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/gptomni/gptomni" \
      org.opencontainers.image.version="0.1.0"
ENV PATH="/opt/gptomni/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 gptomni \
 && useradd --system --uid 10001 --gid gptomni --no-create-home --shell /usr/sbin/nologin gptomni
COPY --from=build /opt/gptomni /opt/gptomni
USER 10001:10001
EXPOSE 8000
# Follows GPTOMNI_HOST / GPTOMNI_PORT, as the relay does.
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-m", "gptomni_relay.healthcheck"]
# No --host/--port here: GPTOMNI_HOST and GPTOMNI_PORT (default 0.0.0.0:8000) must win.
CMD ["gptomni-relay"]
