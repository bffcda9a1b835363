"""``mrkit dashboard``: a web page that follows jobs live (``pip install 'mrkit[dashboard]'``).

It lists the runs of this machine (the job registry) and the jobs of every ``--executor`` given
(Redis, serverless, Dask), and shows each job live: state, progress per phase, counters, the task
table, failures with their sentence and traceback, workers, a timeline and a histogram of task
durations, the logs' tail, and a cancel button. See docs/dashboard.md.

* :mod:`mrkit.dashboard.sources`: where jobs are found;
* :mod:`mrkit.dashboard.views`: what is shown of a job, as data;
* :mod:`mrkit.dashboard.app`: the web application and its security;
* :mod:`mrkit.dashboard.server`: serving it (foreground, or beside a run).

``import mrkit`` imports none of this; Starlette, uvicorn and Jinja2 load only when a dashboard
starts.
"""
