#!/usr/bin/env bash
# The GPU check: the CUDA tests (pytest marker `gpu`) and examples/benchmarks/gpu_check.py, numbers as one JSON.
#
#   bash examples/benchmarks/gpu_check.sh prepare [FQGAN_CHECKOUT] [LLAMAGEN_CHECKOUT]   # on a machine with an index
#   bash examples/benchmarks/gpu_check.sh run OUT_DIR                                   # on the GPU machine
#
# A GPU machine with torch and CUDA but no package index lacks diffusers, datasets and evaluate: `prepare` downloads
# this environment's versions of those (and of datasets' dill and multiprocess) as Python 3.12 wheels into .whl/.
# They go beside the machine's own torch, transformers, accelerate and huggingface_hub, which the report records:
# carrying those too would pull in dependencies that the machine's versions satisfy and ours may not (huggingface_hub
# 2.x needs httpx2, which such a machine lacks). `prepare` also copies the official samplers' packages
# (`autoregressive`, `utils`) from local checkouts (folders or bare repositories) into .official/, both git-ignored,
# then runs the whole check on tiny models on the CPU. `run` installs the wheels into a temporary folder, puts src/
# on the path, names any requirement the machine does not meet, and runs the tests and the benchmark. Carry .whl and
# .official to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/../.."

prepare() {
    # .whl is rebuilt whole, so that no wheel of an earlier prepare goes along; a folder holding anything besides
    # wheels was not made here and is left alone
    if [ -d .whl ] && [ -n "$(find .whl -mindepth 1 ! -name '*.whl' -print -quit)" ]; then
        echo ".whl holds files other than wheels, so this script did not make it: move it away, then prepare again" >&2
        exit 1
    fi
    mkdir -p .official
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)  # a worktree's .git is a file
    mkdir -p "$(dirname "$exclude")"
    for ignored in /.whl/ /.whl.tmp/ /.official/; do
        grep -qx "$ignored" "$exclude" 2>/dev/null || echo "$ignored" >> "$exclude"
    done
    local packages=()
    for name in diffusers datasets evaluate dill multiprocess; do
        packages+=("$name==$(python -c "import importlib.metadata as m; print(m.version('$name'))")")
    done
    rm -rf .whl.tmp && mkdir .whl.tmp
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl.tmp "${packages[@]}"
    rm -rf .whl && mv .whl.tmp .whl
    local name source
    for pair in "FQGAN:${1:-}" "LlamaGen:${2:-}"; do
        name=${pair%%:*} source=${pair#*:}
        [ -n "$source" ] || continue
        rm -rf ".official/$name.tmp" && mkdir -p ".official/$name.tmp"
        if [ -d "$source/autoregressive" ]; then
            cp -r "$source/autoregressive" "$source/utils" ".official/$name.tmp/"
        else  # a bare repository; one subtree per archive, so that no other blob is read (a mirror may lack some)
            for folder in autoregressive utils; do
                git --git-dir="$source" archive --prefix="$folder/" "HEAD:$folder" | tar -x -C ".official/$name.tmp"
            done
        fi
        rm -rf ".official/$name" && mv ".official/$name.tmp" ".official/$name"
    done
    du -sh .whl .official
    # every step of the check on tiny models on this machine's CPU, the official samplers included, so that a
    # broken script or checkout shows here and not on the GPU's time
    local official=()
    [ -d .official/FQGAN ] && official+=(--official-fqgan .official/FQGAN)
    [ -d .official/LlamaGen ] && official+=(--official-llamagen .official/LlamaGen)
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" python \
        examples/benchmarks/gpu_check.py --tiny --device cpu --runs 1 --train-steps 6 ${official[@]+"${official[@]}"} \
        --out .official/dry-run.json > .official/dry-run.log 2>&1 || { tail -20 .official/dry-run.log; exit 1; }
    grep -q '"error"' .official/dry-run.json && { echo "an official sampler failed: see .official/dry-run.json"; exit 1; }
    echo "dry run on CPU passed (.official/dry-run.json)"
}

run() {
    local out=${1:?usage: gpu_check.sh run OUT_DIR}
    mkdir -p "$out"
    local carried=()
    if compgen -G ".whl/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
        carried=(/tmp/site)
    else
        export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
    # a library at another version than hf_vq or a carried wheel needs is named here, before any test; the check
    # goes on, as the gap may not matter to it
    python3 examples/benchmarks/check_environment.py ${carried[@]+"${carried[@]}"} 2>&1 | tee "$out/environment.txt" || true
    local official=()
    [ -d .official/FQGAN ] && official+=(--official-fqgan .official/FQGAN)
    [ -d .official/LlamaGen ] && official+=(--official-llamagen .official/LlamaGen)
    local status=0
    timeout 180 python3 -m pytest -m gpu tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$out/tests.log" || status=1
    timeout 360 python3 examples/benchmarks/gpu_check.py --out "$out/gpu_check.json" ${official[@]+"${official[@]}"} 2>&1 \
        | tee "$out/gpu_check.log" || status=1
    return $status
}

case "${1:-}" in
    prepare) shift; prepare "$@" ;;
    run) shift; run "$@" ;;
    *) echo "usage: gpu_check.sh prepare [FQGAN_CHECKOUT] [LLAMAGEN_CHECKOUT] | run OUT_DIR" >&2; exit 2 ;;
esac
