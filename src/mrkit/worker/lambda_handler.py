"""The handler path deployed functions name (``mrkit.worker.lambda_handler.handler``).

An alias of :mod:`mrkit.backends.aws_lambda.handler`: this module *is* that module (one object in
``sys.modules``), so functions deployed before the backends moved keep working unchanged.
"""

import sys

from mrkit.backends.aws_lambda import handler as _handler

sys.modules[__name__] = _handler
