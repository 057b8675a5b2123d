# syntax=docker/dockerfile:1
# hsm-coordinator image: the coordinator, agentd and hsmctl.
#   docker build -t hsm-coordinator:0.1.0 .
# The Helm chart runs the coordinator as the unprivileged user "hsm"
# (uid 10001, the image default) and agentd as root with a few
# capabilities (a copytool restores files with their owners).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install the project and its dependencies into a virtualenv -------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/hsm-coordinator
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hsm ./hsm
COPY coordinator ./coordinator
COPY agentd ./agentd
COPY hsmctl ./hsmctl
COPY bridge ./bridge
RUN /opt/hsm-coordinator/bin/pip install . \
    && /opt/hsm-coordinator/bin/hsm-coordinator --version \
    && /opt/hsm-coordinator/bin/agentd --version

# --- runtime: the virtualenv only, no build tools, non-root by default -------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="hsm-coordinator" \
      org.opencontainers.image.description="Replicated, sharded, external HSM coordinator for Lustre" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 hsm \
    && useradd --system --uid 10001 --gid hsm --no-create-home \
       --home-dir /var/lib/hsm-coordinator --shell /usr/sbin/nologin hsm \
    && install -d -o hsm -g hsm -m 0700 /var/lib/hsm-coordinator \
    && install -d -m 0755 /etc/hsm-coordinator /etc/hsm-agentd
COPY --from=build /opt/hsm-coordinator /opt/hsm-coordinator
ENV PATH=/opt/hsm-coordinator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /var/lib/hsm-coordinator
# gRPC API (clients, agents, grpc.health.v1); Raft: 7700 + shard.
EXPOSE 7600 7700-7707
USER 10001:10001
CMD ["hsm-coordinator", "--help"]
