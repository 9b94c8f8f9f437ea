# AiR Studio for a CUDA box.
#
#   docker build -t air-studio .
#   docker run --gpus all -p 7860:7860 -v $PWD/data:/data air-studio
#
# PyPI's torch 2.14.1 for Linux x86_64 is a CUDA 13.0 build that brings the CUDA user-space libraries as nvidia-*
# wheels, so a slim Python image is enough. The host needs an NVIDIA driver of the R580 series or newer and the
# NVIDIA Container Toolkit (`--gpus all`). Without a GPU the same image runs on the CPU.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Dependencies first, so code changes do not reinstall them.
COPY requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

# Non-root user (uid 1000, as on Hugging Face Spaces); /data is the volume for workspaces and model caches.
RUN useradd -m -u 1000 user && mkdir -p /data && chown user:user /data
USER user
ENV HOME=/home/user
WORKDIR /home/user/app
COPY --chown=user . .

# GRADIO_SERVER_NAME=0.0.0.0: listen on every interface *inside the container* so that `-p 7860:7860` reaches the
# app (outside Docker the app binds 127.0.0.1). HF_HOME and AIR_APP_CACHE keep downloaded weights and the tiny
# offline models in the volume.
ENV GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    MPLBACKEND=Agg \
    PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HOME=/data/hf \
    AIR_APP_CACHE=/data/air_app_cache

VOLUME /data
EXPOSE 7860

# The image has no curl; a 200 from / (the login page when --auth is on) means the app is up.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=8)" || exit 1

# Server folders (images, workspaces) must be inside /data. The default workspace opens when it exists; otherwise
# create one in the Setup tab (see README, "Docker").
CMD ["python", "app.py", "--root", "/data", "--workspace", "/data/workspaces/demo"]
