#!/usr/bin/env bash
# Run the test suite against other releases of hf_vq's dependencies, in a virtual environment of their own: how the
# lower bounds in pyproject.toml and the version list in the README were checked.
#
#   bash examples/benchmarks/suite_on_versions.sh PYTHON VENV_DIR REQUIREMENT...
#   bash examples/benchmarks/suite_on_versions.sh python3.11 /tmp/oldest torch==2.8.0 transformers==5.4.0 \
#       diffusers==0.40.0 accelerate==1.15.0 datasets==5.2.0 huggingface_hub==1.33.0
#
# The named releases are installed together with whatever else hf_vq and its tests need (pip keeps the named ones).
# hf_vq itself runs from src/ (PYTHONPATH), so the checkout is not installed into that environment. The Space test
# needs gradio and is left out. A torch from PyPI is its CUDA build (several GB); the tests run on the CPU either way.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:?usage: suite_on_versions.sh PYTHON VENV_DIR REQUIREMENT...}
venv=${2:?usage: suite_on_versions.sh PYTHON VENV_DIR REQUIREMENT...}
shift 2
if [ -e "$venv" ] && [ ! -e "$venv/pyvenv.cfg" ]; then
    echo "$venv exists and is not a virtual environment: name another folder" >&2; exit 2
fi
[ -e "$venv" ] || "$python" -m venv "$venv"
# hf_vq's requirements and its test extras, with the named releases held where they are
"$venv/bin/python" -m pip install -q "$@" $("$venv/bin/python" - <<'PY'
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
requirements = project["dependencies"] + [r for r in project["optional-dependencies"]["test"] if not r.startswith("gradio")]
print(" ".join(re.sub(r"\s+", "", r) for r in requirements))
PY
)
"$venv/bin/python" -m pip list 2>/dev/null | grep -iE '^(torch|transformers|diffusers|accelerate|datasets|huggingface.hub) '
PYTHONPATH="$PWD/src" "$venv/bin/python" -m pytest tests -p no:cacheprovider --deselect tests/test_space.py -rfEx
