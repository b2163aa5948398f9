#!/usr/bin/env bash
# Stage this checkout's HEAD for the device machine with everything the daemon imports, split so
# that each call carries under 64 MiB. Run here, from the project root, after committing:
#   bash bench/gpu-stage.sh
# then on the device (../shared/gpu/README.md): call 1 carry [".stage/p1"]: bash .stage/p1/device.sh stage1
#   call 2 carry [".stage/p2"], at once:
#     bash /tmp/stage/device.sh stage2 && python3 -m pip install -q --no-index --no-deps --no-compile \
#       --no-cache-dir --upgrade --target /tmp/site .stage/p2/*.whl && GPU=h100 bash bench/gpu.sh STEPS
#   later calls on the warm machine, no carry: GPU=h100 bash bench/gpu.sh STEPS
# (stage.sh fetches wheels for the device's CPython 3.12; the daemon stops at once without these. The
# last line's wheels are for mlx-vlm's server (gpu.sh openai): its FastAPI imports opentelemetry, and
# mlx_vlm.server imports mlx_audio and cryptography at start.)
set -euo pipefail
EXTRA_WHEELS="pikepdf==10.18.0 img2pdf==0.6.3 fpdf2==2.8.9 fonttools==4.68.0 defusedxml==0.7.1 lxml==6.2.0
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 anyio==4.16.0 sniffio idna==3.21 python-multipart==0.0.34 uvicorn==0.55.0
  h11==0.16.0 httpx==0.29.0 httpcore==1.0.9 certifi prometheus-client==0.26.0 packaging
  opentelemetry-api==1.45.3 importlib-metadata==10.2.0 zipp==4.1.2 mlx-audio==0.6.2 cryptography==51.0.1
  cffi==2.1.1 pycparser==3.12" \
  ../shared/gpu/stage.sh
# part 1 holds MLX-CUDA's first half and every wheel: move the big daemon-only ones to part 2
for w in pydantic_core pikepdf lxml fonttools fastapi starlette pydantic- img2pdf fpdf2 python_multipart \
         uvicorn httpx httpcore prometheus cryptography mlx_audio; do
  mv .stage/p1/${w}*.whl .stage/p2/
done
du -sh .stage/p1 .stage/p2
