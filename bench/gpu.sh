#!/bin/sh
# The GPU check in one line: uses the project's virtualenv when there is one, else python3.
cd "$(dirname "$0")/.." && exec "$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )" bench/gpu.py "$@"
