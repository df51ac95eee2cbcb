"""The container image: one multi-stage Dockerfile for the gateway and every worker (the
command picks the role). The wheel and its dependencies' wheels are built in the first stage;
the second installs them offline and runs as a non-root user. Pure text; no I/O.
"""

from __future__ import annotations

from core.settings import Settings

from .common import HEADER, IMAGE, VERSION, comment, worker_metrics_port

PYTHON_IMAGE = "python:3.11.10-slim-bookworm"
USER_ID = 10001
PACKAGES = ("core", "gateway", "workers", "loadtest", "ops")

# The image's HEALTHCHECK probes $TIERGATE_HEALTH_URL, by default the gateway's /healthz; a worker
# container sets it to its /metrics port (prometheus-client answers any path there).
HEALTH_URL_ENV = "TIERGATE_HEALTH_URL"


def health_probe(url: str) -> str:
    """A Python one-liner that exits non-zero unless `url` answers 2xx (no curl in a slim image)."""
    return f"import os, urllib.request; urllib.request.urlopen(os.environ.get('{HEALTH_URL_ENV}', '{url}'), timeout=2)"


def dockerfile(settings: Settings) -> str:
    port = settings.gateway.port or 8080
    probe = health_probe(f"http://127.0.0.1:{port}/healthz")
    copies = "".join(f"COPY {name}/ {name}/\n" for name in PACKAGES)
    return (
        comment([HEADER, f"Build from the repository root: docker build -f deploy/Dockerfile -t {IMAGE} ."])
        + f"""
FROM {PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
{copies}RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM {PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 \\
    TIERGATE_HOST=0.0.0.0
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \\
    pip install --no-cache-dir --no-index --find-links=/wheels tiergate=={VERSION} \\
    && useradd --system --uid {USER_ID} --no-create-home --shell /usr/sbin/nologin tiergate
USER {USER_ID}
EXPOSE {port} {worker_metrics_port(settings)}
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \\
    CMD ["python", "-c", "{probe}"]
ENTRYPOINT ["tiergate"]
CMD ["gateway"]
"""
    )
