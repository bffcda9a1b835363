# Sourced by scripts/demo and scripts/test: make the project environment .venv from python3 (once) and
# install mrkit with the extras in $1 from the committed lock (requirements/constraints.txt), so that
# nothing touches the system interpreter and every machine gets the same versions without resolving.
# The lock is a plain constraints file that pip reads; the install itself goes through uv (pinned,
# bootstrapped into .venv by pip) because it installs the test set in ~15 s where pip takes ~2.5 min;
# where uv cannot be had, pip does the same install from the same lock.
# uv is told to compile the bytecode, as pip does by default: without it, a process that cannot
# write Python's cache (PYTHONDONTWRITEBYTECODE set, a read-only environment) compiles every module it
# imports from source, each time it starts (measured: `import distributed` 1.25 s against 0.44 s).
# Skips the install altogether when pyproject.toml, the lock and the extras are unchanged.
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
want="$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16) [$extras] bytecode"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    target=".${extras:+[$extras]}"
    if .venv/bin/python -m pip install -q --disable-pip-version-check uv==0.13.9 >/dev/null 2>&1; then
        .venv/bin/python -m uv pip install -q --compile-bytecode --python .venv/bin/python -c requirements/constraints.txt -e "$target"
    else
        .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e "$target"
    fi
    echo "$want" >"$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
