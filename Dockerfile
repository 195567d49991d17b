# syntax=docker/dockerfile:1
# GPU training image for embedopt.
#
#   docker build -t REGISTRY/embedopt:0.1.0 .
#   docker run --gpus all --rm REGISTRY/embedopt:0.1.0 demo
#
# The base image brings CUDA, cuDNN and TensorFlow 2.21 (GPU); the project is
# installed on top from a wheel (no dev or test extras). The fused CPU kernels
# (optimizers/kernels) are built into the image for any x86-64 CPU (--portable),
# so a pod never compiles; g++ is removed again after the build. Runs as the fixed
# non-root UID/GID 1000 that the Kubernetes manifests name in runAsUser.
# Kubernetes pods start it as `embedopt k8s entrypoint -- train ...`, which
# derives TF_CONFIG for Indexed Jobs and leaves a TFJob's TF_CONFIG alone.

FROM tensorflow/tensorflow:2.21.0-gpu AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY optimizers/ optimizers/
COPY components/ components/
COPY benchmarks/ benchmarks/
RUN python3 -m pip wheel --no-deps --no-cache-dir --wheel-dir /wheels .

FROM tensorflow/tensorflow:2.21.0-gpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOME=/tmp
# The wheel is bind-mounted, not copied, so it adds no layer of its own.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python3 -c "import sys; assert sys.version_info >= (3, 11), 'embedopt needs Python >= 3.11, image has ' + sys.version" \
    && python3 -m pip install --no-cache-dir /wheels/*.whl \
    && apt-get update && apt-get install -y --no-install-recommends g++ \
    && python3 -m optimizers.kernels build --portable \
        --output "$(python3 -c 'import os, optimizers.kernels as k; print(os.path.dirname(k.__file__))')/prebuilt" \
    && apt-get purge -y g++ && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 embedopt \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin embedopt \
    && mkdir -p /workspace && chown 1000:1000 /workspace
WORKDIR /workspace
USER 1000:1000
ENTRYPOINT ["embedopt"]
CMD ["--help"]
