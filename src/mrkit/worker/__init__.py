"""Kept for deployed functions only: ``mrkit.worker.lambda_handler.handler`` is the handler path a
deployed Lambda function names (:mod:`mrkit.backends.aws_lambda.handler`)."""
