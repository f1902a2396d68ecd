# One image for every service of docker-compose.yml: migrate, the API, workers, beat and the
# ingestors. `pip install .` takes exactly what pyproject.toml ships (packages and package data;
# tests/core/test_packaging.py keeps that list complete), .dockerignore keeps local state out.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
RUN pip install . \
 && useradd --create-home coldchain \
 && mkdir -p /var/lib/coldchain/proofs /tmp/coldchain \
 && chown -R coldchain /var/lib/coldchain /tmp/coldchain
WORKDIR /home/coldchain
USER coldchain
EXPOSE 8000
CMD ["coldchain", "serve", "--host", "0.0.0.0", "--port", "8000"]
