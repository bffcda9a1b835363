"""Serverless (AWS Lambda shape) backend: ``executor`` (driver side, invokers), ``handler`` (the
stateless function handler), ``jobs`` (the serverless driver of asynchronous jobs, state in the
object store) and ``emulator`` (``lambda-local``: the Lambda runtime's behaviour on this machine)."""
