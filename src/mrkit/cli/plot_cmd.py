"""``mrkit plot ID -o timeline.svg``: the timeline and duration histogram of a run ``mrkit run``
recorded in the job registry (:mod:`mrkit.coordination.events`, :mod:`mrkit.coordination.plot`)."""

from __future__ import annotations

import json

import click

from mrkit.errors import ConfigError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("job_id", metavar="ID")
@click.option("-o", "--output", required=True, help="The SVG file to write (timeline.svg).")
def plot(job_id: str, output: str) -> None:
    """Write the timeline (one row per worker, one bar per attempt) and the task-duration
    histogram of the run ID, from the events ``mrkit run`` kept in the job registry
    ($MRKIT_HOME/jobs, default ~/.local/share/mrkit/jobs).

    \b
    Example:
      mrkit run examples/wordcount.py:WordCount texts/ -o out/ --job-id wc1
      mrkit plot wc1 -o wc1.svg
    """
    from mrkit.coordination.events import load_events, registry_dir
    from mrkit.coordination.plot import render_svg

    if not output.endswith(".svg"):
        raise ConfigError(f"mrkit plot writes SVG: give -o a file ending in .svg, not {output!r}")
    try:
        events = load_events(job_id)
    except FileNotFoundError:
        raise ConfigError(
            f"no run {job_id} in the job registry {registry_dir()} (mrkit plot knows runs of mrkit run "
            "on this machine; the newest 200 are kept)"
        ) from None
    status = json.loads((registry_dir(job_id) / "status.json").read_text(encoding="utf-8"))
    title = (
        f"{status.get('name', job_id)} ({job_id}, {status.get('state', '?')}, {status.get('executor', '?')})"
    )
    with open(output, "w", encoding="utf-8") as f:
        f.write(render_svg(events, title))
    click.echo(f"mrkit: wrote {output}: {len(events)} attempts", err=True)
