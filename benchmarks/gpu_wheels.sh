#!/usr/bin/env bash
# Wheels for a bare GPU machine that has CUDA torch (2.11+, Python 3.12) but none of this
# project's other dependencies and no internet (the lent `device` machine): downloaded here
# into .gpu/ (git-ignored), carried there, installed without touching its torch.
#
#   bash benchmarks/gpu_wheels.sh                       # here, once
#   # there (device tool, carry [".gpu"]):
#   python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site \
#       .gpu/*.whl .gpu/*.tar.gz && export PYTHONPATH=/tmp/site:$PWD
#   python3 benchmarks/update_speed.py --device cuda --updates 512 --rounds 3 \
#       --modes reference cudagraphs cudagraphs-k8 x64-cudagraphs-k8 --matmul-precision high
# (keep only wheels and the one sdist in .gpu/: pip treats any other file there as a requirement)
#
# Leave MUJOCO_GL unset there: MUJOCO_GL=egl breaks the gymnasium-robotics import.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
pip download --dest .gpu --no-deps --python-version 3.12 --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
  tensordict==0.14.3 torchrl==0.14.1 importlib_metadata orjson pyvers==0.2.3 hoptorch==0.1.4 \
  mujoco==4.0.0 mujoco-core==4.0.0 gymnasium==1.4.0 gymnasium-robotics==1.4.2 minari==0.5.4 \
  hydra-core==1.3.8 omegaconf==2.3.1 farama-notifications PettingZoo==1.27.0 glfw pyopengl \
  imageio cloudpickle packaging tqdm
pip download --dest .gpu --no-deps --no-binary=:all: antlr4-python3-runtime==4.9.3
ls .gpu
