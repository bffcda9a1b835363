# Sourced by scripts/demo and scripts/test: make the project environment .venv from python3 (once) and
# install mrkit with the extras in $1 from the committed lock (requirements/constraints.txt), so that
# nothing touches the system interpreter and every machine gets the same versions without resolving.
# Skips pip altogether when pyproject.toml, the lock and the extras are unchanged since the last install.
set -euo pipefail
extras=${1:-}
python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
    echo "mrkit: $python was not found: install Python 3.10 or newer (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "mrkit: needs Python 3.10 or newer, but $python is $("$python" -V 2>&1): set PYTHON=/path/to/python3.x" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        echo "mrkit: $python has no venv module: run apt-get install python3-venv (or your system's equivalent)" >&2
        exit 1
    fi
    "$python" -m venv .venv
fi
stamp=.venv/.mrkit-install
want="$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16) [$extras]"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check \
        -c requirements/constraints.txt -e ".${extras:+[$extras]}"
    echo "$want" >"$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
