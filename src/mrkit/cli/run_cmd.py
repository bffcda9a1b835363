"""``mrkit run`` and ``mrkit demo``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import click

from mrkit.cli.main import verbosity
from mrkit.cli.options import apply_storage_options, parse_params, run_options


def _print_counters(counters: dict[str, int]) -> None:
    width = max((len(k) for k in counters), default=10)
    for name in sorted(counters):
        click.echo(f"  {name:<{width}}  {counters[name]:>14,}", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("job_ref", metavar="JOB")
@click.argument("inputs", nargs=-1, metavar="[INPUT]...")
@run_options
@click.option("--job-id", "job_id", default=None, help="The job's id; a named job can be resumed.")
@click.option(
    "--resume",
    is_flag=True,
    default=None,
    help="Continue the failed or interrupted run of --job-id, re-using its committed tasks.",
)
@click.option(
    "--file",
    "files",
    multiple=True,
    metavar="PATH",
    help="A side file shipped with the job (repeatable): tasks open it with mrkit.context().file(NAME).",
)
@click.option(
    "--dashboard",
    is_flag=True,
    default=None,
    help="Serve the web dashboard on 127.0.0.1 while the run lasts, and print the run's page address.",
)
def run(job_ref: str, inputs: tuple[str, ...], **opts: Any) -> None:
    """Run JOB over INPUT files, globs or folders and wait for the result.

    JOB is path/to/file.py:Name, package.module:Name, a module of @mrkit.map_handler/@mrkit.reduce_handler
    functions (path/to/file.py or package.module), or a JSON job file (job.json). Without -o the
    result is printed to stdout, one JSON key TAB JSON value per line.

    \b
    Examples:
      mrkit run examples/wordcount.py:WordCount 'texts/*.txt' -N 8 -M 4 -o out/
      mrkit run examples/montecarlo_pi.json
      cat texts/*.txt | mrkit run examples/wordcount.py:WordCount - -o out/   # - is standard input
      mrkit run examples/wordcount.py:WordCount 'texts/*.txt' -o out/ --job-id wc1 --resume
      mrkit run examples/wordcount.py:WordCount 'texts/*.txt' -o out/ --dashboard
    """
    opts["params"] = parse_params(opts.pop("param"))
    opts["files"] = list(opts.pop("files")) or None
    apply_storage_options(opts.pop("storage_options"))
    show_counters = opts.pop("counters")
    with _stdin_as_file(inputs) as inputs:
        _run(job_ref, inputs, opts, show_counters)


@contextlib.contextmanager
def _stdin_as_file(inputs: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """Inputs with ``-`` replaced by a temporary copy of standard input (removed afterwards).

    A copy, not a pipe, so that standard input is split into byte ranges like any file; it lives in
    the temp folder, which workers on this machine read (remote workers cannot: give them a file).
    """
    if "-" not in inputs:
        yield inputs
        return
    with tempfile.NamedTemporaryFile(prefix="mrkit-stdin-", suffix=".txt") as copy:
        shutil.copyfileobj(sys.stdin.buffer, copy, 1 << 20)
        copy.flush()
        yield tuple(copy.name if item == "-" else item for item in inputs)


def _run(job_ref: str, inputs: tuple[str, ...], opts: dict[str, Any], show_counters: bool) -> None:
    import mrkit
    from mrkit.cli.jobfile import load_request

    job, run_inputs, options = load_request(job_ref, inputs, opts)
    output = options.pop("output", None)
    if output is None and options.get("format"):
        options.pop("format")
    if verbosity() < 0:  # -q: no progress bar, no summary line
        options.update(quiet=True, progress=False)
    result = mrkit.run(job, run_inputs, output=output, **options)
    if output is None:
        out = sys.stdout
        for key, value in result:
            key_text = json.dumps(key, ensure_ascii=False)
            out.write(f"{key_text}\t{json.dumps(value, ensure_ascii=False, default=repr)}\n")
    if show_counters:
        _print_counters(result.counters)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--size-mb", type=float, default=20.0, show_default=True, help="Corpus size to generate.")
@click.option(
    "--data", "data_dir", default="demo-data", show_default=True, help="Where the corpus is written."
)
@click.option("-o", "--output", default="demo-out", show_default=True, help="Output folder (replaced).")
@click.option("--executor", default="processes", show_default=True, envvar="MRKIT_EXECUTOR")
@click.option(
    "--workers", type=int, default=None, envvar="MRKIT_WORKERS", help="Parallelism (default: all cores)."
)
@click.option(
    "--top", type=int, default=10, show_default=True, help="How many of the most common words to print."
)
def demo(size_mb: float, data_dir: str, output: str, executor: str, workers: int | None, top: int) -> None:
    """Generate a deterministic word-count corpus and count its words.

    The corpus is generated once (same bytes on every machine) and reused on later runs.
    """
    import mrkit
    from mrkit.tools.corpus import generate_text
    from mrkit.tools.demo import WordCount

    marker = os.path.join(data_dir, f".complete-{size_mb:g}mb")
    if not os.path.exists(marker):
        click.echo(f"mrkit demo: generating a {size_mb:g} MB corpus in {data_dir}/ ...", err=True)
        if os.path.isdir(data_dir):
            for name in os.listdir(data_dir):
                if name.endswith(".txt") or name.startswith(".complete-"):
                    os.unlink(os.path.join(data_dir, name))
        generate_text(data_dir, size_mb=size_mb, files=8, seed=0)
        open(marker, "w").close()
    quiet = verbosity() < 0
    result = mrkit.run(
        WordCount(),
        data_dir,
        output=output,
        overwrite=True,
        executor=executor,
        workers=workers,
        quiet=quiet,
        progress=False if quiet else None,
    )
    counts = sorted(result, key=lambda kv: (-kv[1], kv[0]))[:top]
    click.echo(f"top {len(counts)} words in {data_dir}/ (full result in {output}/):")
    for word, count in counts:
        click.echo(f"  {count:>10,}  {word}")
