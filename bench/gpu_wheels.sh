#!/usr/bin/env bash
# The Python packages the GPU suite needs on the device tool's machine that its image lacks (or has at
# another version), as x86-64 / CPython 3.12 wheels in .whl/ (git-ignored), for `carry: [".whl"]`.
# The machine has torch, accelerate, safetensors, numpy, pillow, pyyaml, huggingface_hub, psutil, tqdm,
# requests, filelock (KINDS.md's package list); these are the project's pins (pyproject.toml) and their
# missing requirements. About 33 MB; the call's limit is 64 MiB with the working tree.
# PYTHON_VERSION=3.11 fetches wheels for this machine's Python instead (the local dry run of the command).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || grep -qx '/.whl/' .gitignore || echo /.whl/ >> .git/info/exclude
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl \
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing-extensions==4.16.0 diffusers==0.42.1 importlib-metadata==10.2.0 peft==0.21.2 \
  transformers==5.23.0 tokenizers==0.23.3 regex==2026.12.2 minio==7.2.20 argon2-cffi==25.1.0 \
  argon2-cffi-bindings==26.2.0 pycryptodome==4.5.0 torchao==0.18.0
du -sh .whl
