# The image docs/cluster's manifests name. Two builds from this one file, at the repository's root:
#
#   CPU (python's slim image, PyTorch's CPU wheels):
#     docker build -t registry.example.com/resnets:cpu .
#   CUDA (PyTorch's own image: torch, torchvision, CUDA and cuDNN already in it):
#     docker build --build-arg BASE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime -t registry.example.com/resnets:cuda .
#
# then `docker push` the tag to a registry the cluster pulls from (registry.example.com stands for yours; the
# manifests say :cuda). For SLURM with pyxis/enroot:
#   enroot import -o resnets-cuda.sqsh docker://registry.example.com#resnets:cuda
# writes the squashfs file that `srun --container-image` takes.
ARG BASE=python:3.12-slim
FROM ${BASE}

# the image's own torch where it has one (PyTorch's images), else the CPU wheels (no CUDA libraries: 1 GB, not 5)
RUN python -c "import torch" 2>/dev/null \
    || pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch torchvision

WORKDIR /opt/resnets
COPY pyproject.toml README.md ./
COPY src ./src
# [tensorboard]: the manifests train with --tensorboard
RUN pip install --no-cache-dir ".[tensorboard]" \
    && python -c "import resnets, tensorboard, torch; print('resnets', resnets.__version__, 'torch', torch.__version__)"

# a user of its own, not root; runs and caches go to the volume mounted at /shared (RESNETS_HOME below)
RUN useradd --create-home --uid 1000 resnets
USER resnets
WORKDIR /home/resnets
ENV RESNETS_HOME=/shared/home \
    PYTHONUNBUFFERED=1

# `resnets train ...`, `resnets serve ...`, or torchrun (the manifests' command)
ENTRYPOINT []
CMD ["resnets", "--help"]
