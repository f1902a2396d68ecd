# One image for every service of docker-compose.yml: migrate, the API, workers, beat and the
# ingestors. `pip install .` takes exactly what pyproject.toml ships (packages and package data;
# tests/core/test_packaging.py keeps that list complete), .dockerignore keeps local state out.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# The dependencies first, from pyproject.toml alone: a change to the code rebuilds only the last layers.
COPY pyproject.toml .
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY . .
RUN pip install --no-deps . \
 && useradd --create-home coldchain \
 && mkdir -p /var/lib/coldchain/proofs /var/lib/coldchain/data \
 && chown -R coldchain /var/lib/coldchain
WORKDIR /home/coldchain
USER coldchain
EXPOSE 8000
CMD ["coldchain", "serve", "--host", "0.0.0.0", "--port", "8000"]
