# One image, four entry points: `stylebase serve <service>` and `stylebase migrate`.
# The services share every dependency and most of their code, so one build, one scan and
# one tag keep them in step; each Deployment or compose service picks its command.

# ---- build: install the package and its pinned dependencies into a virtualenv
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/stylebase
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gen ./gen
COPY shared ./shared
COPY services ./services
RUN /opt/stylebase/bin/pip install --no-compile . \
    && /opt/stylebase/bin/python -m compileall -q /opt/stylebase/lib

# ---- runtime: the virtualenv only, run as an unprivileged user
FROM python:3.11.11-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 stylebase \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin stylebase \
    && install -d -o 10001 -g 10001 -m 0700 /backups
COPY --from=build /opt/stylebase /opt/stylebase
ENV PATH=/opt/stylebase/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRPC_HOST=0.0.0.0
USER 10001:10001
WORKDIR /tmp
# gRPC ports, then Prometheus metrics ports (profile_store, similarity, analytics, cache_gateway,
# and 'stylebase backups run'), then the HTTP API (its metrics on the same port).
EXPOSE 50051 50052 50053 50054 9101 9102 9103 9104 9106 8080
ENTRYPOINT ["stylebase"]
CMD ["serve", "profile_store"]
