# syntax=docker/dockerfile:1
# CPU image. Build: docker build -t mvretrieval:cpu .
# Artifacts are mounted at /artifacts (never baked in); see k8s/ and docs/DEPLOY.md.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY constraints.txt pyproject.toml README.md ./
COPY model ./model
COPY index ./index
COPY service ./service
# The CPU torch build from the PyTorch index (the plain PyPI wheel pulls CUDA), then the rest
# from the lock file.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install -c constraints.txt ".[serve,train]"

FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SERVICE_ARTIFACTS=/artifacts \
    SERVICE_HOST=0.0.0.0 \
    SERVICE_PORT=8000 \
    HF_HUB_OFFLINE=1
USER 10001
EXPOSE 8000
ENTRYPOINT ["service"]
CMD ["serve"]
