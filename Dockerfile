# countrytune on a CUDA PyTorch base (for GPU nodes; not buildable on the CPU-only dev machines).
# The base image carries a CUDA build of torch; the constraints keep pip from replacing it.
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 COUNTRYTUNE_RECIPES=/opt/countrytune/recipes
WORKDIR /opt/countrytune
COPY pyproject.toml README.md ./
COPY countrytune countrytune
COPY countrytune_cli countrytune_cli
COPY data_prep data_prep
COPY pipeline pipeline
COPY launch launch
COPY recipes recipes
RUN python -c "import torch; print(f'torch=={torch.__version__.split(\"+\")[0]}')" > /tmp/torch-pin.txt \
    && pip install -c /tmp/torch-pin.txt ".[data,train,kernels]"
ENTRYPOINT ["countrytune"]
CMD ["--help"]
