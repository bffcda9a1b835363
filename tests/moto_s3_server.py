"""moto's S3 server, with its conditional PUT made atomic as S3's is: the test fixtures run this.

moto checks ``If-None-Match: *`` and then stores the object, two steps with nothing between them
(``S3Response.put_object`` in moto 5): two concurrent creates of one key can both succeed there,
which S3 never allows and which mrkit's first-attempt-wins commits rely on. The storage contract's
test of eight concurrent ``put_if_absent`` saw two winners on a loaded machine. Serialising the
PUTs in this one test server gives S3's documented behaviour; nothing else of moto is changed.

Usage: ``python tests/moto_s3_server.py -H 127.0.0.1 -p PORT`` (the arguments of ``moto.server``).
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from moto.s3.responses import S3Response
from moto.server import main

_PUTS = threading.Lock()
_put_object = S3Response.put_object


def _atomic_put_object(self: Any) -> Any:
    with _PUTS:
        return _put_object(self)


if __name__ == "__main__":
    S3Response.put_object = _atomic_put_object  # type: ignore[method-assign]
    main(sys.argv[1:])
