# The difflab image: the project and its venv, installed exactly as the README's `make` targets do.
# One image serves every role of compose.yaml (Prefect server, MLflow server, workers, the deploy step)
# and the `difflab-docker` work pool's flow runs (prefect.yaml: part_b/tiny-docker).
#   docker build -t difflab:latest .
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    HF_HUB_OFFLINE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends make git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . /app

# The README's install step (`make dev`: python3 -m venv .venv, then pip install -e '.[dev]', which
# includes the `ops` extra: psycopg and asyncpg for PostgreSQL, boto3 for MinIO/S3).
RUN make dev

ENV PATH=/app/.venv/bin:$PATH \
    DIFFLAB_ROOT=/app \
    DIFFLAB_PROJECT_DIR=/app

CMD ["difflab", "--help"]
