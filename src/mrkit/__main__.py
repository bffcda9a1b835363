"""``python -m mrkit``: the ``mrkit`` command, or the futures launcher for a script.

``python -m mrkit run …`` (or any other subcommand) is the ``mrkit`` command;
``python -m mrkit [-n WORKERS] [--executor E] script.py [args]`` runs a script with its futures
executor set up (seed 002's ``python -m scoop script.py``).
"""

from __future__ import annotations

import sys


def _main() -> None:
    argv = sys.argv[1:]
    from mrkit.launcher import looks_like_script

    if looks_like_script(argv):
        from mrkit.launcher import main as launch

        sys.exit(launch(argv))
    from mrkit.cli.main import main

    if argv in (["-h"], ["--help"]):  # both tools answer to python -m mrkit: show both
        from mrkit.launcher import USAGE

        print(USAGE)
        print("python -m mrkit COMMAND ... is also the mrkit command:\n")
    main(argv)


if __name__ == "__main__":  # keep the guard: spawn/forkserver workers import this module as __mp_main__
    _main()
