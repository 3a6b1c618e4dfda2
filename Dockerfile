# syntax=docker/dockerfile:1
# CPU image (the CUDA image is Dockerfile.cuda; docs/DEPLOY.md says why two files).
#
#   docker build -t registry.example.com/mvretrieval:0.1.0-cpu .
#   docker run --rm -p 8000:8000 -v "$PWD/var/artifacts:/artifacts:ro" registry.example.com/mvretrieval:0.1.0-cpu
#
# Artifacts are mounted at /artifacts, never baked in: one image serves every artifact version.
# Every dependency comes from the lock file constraints.txt; torch is its CPU build (the
# `+cpu` local version in the lock) from the PyTorch index, everything else from PyPI.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the locked dependencies, then the project itself (no sources kept)
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=serve,train
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml constraints.txt ./
# The dependency list of the project and its extras, read from pyproject.toml, installed under the
# lock's constraints. A layer of its own, so a code change does not reinstall torch.
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [d for e in os.environ['EXTRAS'].split(',') for d in p['optional-dependencies'][e]]))" \
      > requirements.txt \
 && pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" -c constraints.txt -r requirements.txt
COPY README.md ./
COPY model ./model
COPY index ./index
COPY service ./service
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
 && python -c "import torch; assert torch.version.cuda is None, torch.version.cuda"

# ---- runtime: the base image, the virtualenv and a non-root user; no compilers, no sources
FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
# HOME and the caches point at /tmp: the root filesystem is read-only in Kubernetes (an emptyDir
# is mounted at /tmp). SERVICE_HOST: listen on all interfaces inside the container.
# SERVICE_SCHED_BATCH: the served image runs under SCHED_BATCH (off by default for library use;
# docs/SERVING.md).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    HF_HUB_OFFLINE=1 \
    SERVICE_ARTIFACTS=/artifacts \
    SERVICE_HOST=0.0.0.0 \
    SERVICE_PORT=8000 \
    SERVICE_SCHED_BATCH=true
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
# For `docker run`; Kubernetes uses the probes in k8s/ instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SERVICE_PORT', '8000'), timeout=2)"]
# Exec form: `service` is PID 1 and gets SIGTERM itself (uvicorn drains, then exits).
ENTRYPOINT ["service"]
CMD ["serve"]
