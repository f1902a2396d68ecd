# One image for every service of docker-compose.yml: the API, workers, beat and the ingestor.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY warehouses warehouses
COPY fulfillment fulfillment
COPY routing routing
COPY telemetry telemetry
COPY traceability traceability
COPY api api
COPY scripts scripts
COPY migrations migrations
RUN pip install . && useradd --create-home coldchain
USER coldchain
EXPOSE 8000
CMD ["coldchain", "serve", "--host", "0.0.0.0", "--port", "8000"]
