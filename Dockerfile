# samie-node: a DICOM node that runs SAM-IE and returns SEG and SR to the PACS.
# PyPI's torch 2.14.1 wheels for Linux x86_64 are CUDA builds: run with `--gpus all` (NVIDIA container
# toolkit) and the node uses the GPU; without a GPU it runs on the CPU with the same image.
#   docker build -t samie-node .
#   docker run -p 11112:11112 -p 127.0.0.1:8765:8765 -e SAMIE_HTTP__HOST=0.0.0.0 -v samie-data:/data samie-node
# (the console and /metrics on port 8765; publish it on the host's loopback, or behind a reverse proxy)
# With the Ray engine (docker-compose.ray.yml): docker build --build-arg EXTRAS='[ray]' -t samie-node:ray .
FROM python:3.11-slim-bookworm
ARG EXTRAS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SAMIE_NODE__DATA_DIR=/data \
    SAMIE_ENGINE__CACHE_DIR=/data/cache

RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/samie-node
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY samie_node ./samie_node
COPY dicom_templates ./dicom_templates
COPY config ./config
RUN pip install ".${EXTRAS}" && useradd --system --create-home --home-dir /home/samie samie \
 && mkdir -p /data /etc/samie-node && cp config/samie-node.toml /etc/samie-node/ && chown samie /data

USER samie
VOLUME ["/data"]
EXPOSE 11112 8765
# /readyz: listener bound, models loaded, index writable, disk above the floor (503 otherwise).
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s \
  CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8765/readyz', timeout=5)" || exit 1
ENTRYPOINT ["samie-node"]
CMD ["serve", "--config", "/etc/samie-node/samie-node.toml"]
