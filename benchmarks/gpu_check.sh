#!/bin/bash
# The GPU checks, in one call on a lent CUDA machine (at most about 9 minutes on an H200), from the repo root:
#   bash benchmarks/gpu_check.sh            # results under $OUT (or /tmp/cf-gpu-check)
# 1. the GPU tests (tests/models/test_gpu.py: generation vs CPU, compiled vs eager gradients, bf16 sampling,
#    HF parity, bf16 pretraining), first: the MFU below means nothing if compiled training is wrong;
# 2. MFU of `pretrain` for the ~100M model in bf16 (benchmarks/gpu_mfu.py -> mfu.json), and of the bare
#    compiled step with its kernel profile (profile.txt);
# 3. KV-cache generation vs transformers' generate on the GPU, 100m, batch 1 and 16 (generate_cuda.json).
# Each step has its own time limit and the next runs whatever the last did; nothing is installed: the
# machine's python3 has torch, transformers, tokenizers and safetensors, and the package runs from src/.
set -u
O=${OUT:-/tmp/cf-gpu-check}
mkdir -p "$O"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi; python3 -c 'import sys, torch, transformers; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(), "transformers", transformers.__version__)'; } > "$O/env.txt" 2>&1
timeout 90 python3 -m pytest -q -m gpu tests/models/test_gpu.py -p no:cacheprovider -o filterwarnings=default > "$O/gpu_tests.log" 2>&1; echo "gpu tests rc=$?" >> "$O/env.txt"
timeout 380 python3 benchmarks/gpu_mfu.py --out "$O" > "$O/mfu.log" 2>&1; echo "gpu_mfu rc=$?" >> "$O/env.txt"
timeout 80 python3 benchmarks/generate_throughput.py --device cuda --size 100m --vocab 32768 --batches 1,16 --repeat 2 --no-speculative --json "$O/generate_cuda.json" > "$O/generate.log" 2>&1; echo "generate rc=$?" >> "$O/env.txt"
cat "$O/env.txt" "$O/mfu.log" "$O/gpu_tests.log" "$O/generate.log" | tail -60
