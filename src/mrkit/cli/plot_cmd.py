"""``mrkit plot ID -o timeline.svg|png``: a job's timeline and task-duration histogram, from its task
events (:mod:`mrkit.coordination.events`, :mod:`mrkit.coordination.plot`): a run of this machine
(the job registry), or a job submitted to ``--executor``."""

from __future__ import annotations

import click

from mrkit.cli.jobs_cmd import _OPTIONAL_EXECUTOR, _handle
from mrkit.errors import ConfigError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("job_id", metavar="ID")
@click.option("-o", "--output", required=True, help="The file to write: timeline.svg or timeline.png.")
@_OPTIONAL_EXECUTOR
def plot(job_id: str, output: str, executor: str | None) -> None:
    """Write the timeline (one row per worker, one bar per attempt) and the task-duration
    histogram of job ID: a run of this machine, from the job registry ($MRKIT_HOME/jobs, default
    ~/.local/share/mrkit/jobs), or a job submitted to --executor. PNG needs the dashboard extra.

    \b
    Example:
      mrkit run examples/wordcount.py:WordCount texts/ -o out/ --job-id wc1
      mrkit plot wc1 -o wc1.svg
    """
    from mrkit.coordination.plot import render_png, render_svg

    kind = output.rsplit(".", 1)[-1].lower()
    if kind not in ("svg", "png"):
        raise ConfigError(
            f"mrkit plot writes SVG or PNG: give -o a file ending in .svg or .png, not {output!r}"
        )
    handle = _handle(job_id, executor)
    status = handle.status()
    events = handle.events()
    title = f"{status.name or job_id} ({job_id}, {status.state}, {status.executor or '?'})"
    if not events:
        raise ConfigError(f"job {job_id} has no task events to plot (yet)")
    note = ""
    if status.cost:  # a serverless job's cost report, under the drawing
        from mrkit.coordination.cost import describe

        note = describe(status.cost)
    if kind == "svg":
        with open(output, "w", encoding="utf-8") as f:
            f.write(render_svg(events, title, note))
    else:
        data = render_png(events, title, note)
        with open(output, "wb") as f:
            f.write(data)
    click.echo(f"mrkit: wrote {output}: {len(events)} attempts", err=True)
