"""``loqi eval`` (recall@N of one model) and ``loqi report`` (several runs in one table and plot)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable

import click

from loqi_core.commands.options import common_options, config_from_flags, split_list, take_deprecated
from loqi_core.errors import ConfigError


def parse_recall(text: str | None) -> list[int] | None:
    """``"1 2 5 10"`` or ``"1,2,5,10"`` → [1, 2, 5, 10]."""
    from loqi_core.config import check_recall

    if text is None:
        return None
    try:
        values = [int(v) for v in re.split(r"[,\s]+", text.strip()) if v]
    except ValueError:
        raise ConfigError(f'--recall: expected numbers such as "1 2 5 10", got "{text}"') from None
    try:
        return check_recall(values)
    except ValueError as exc:
        raise ConfigError(f"--recall: {exc}") from None


def eval_levels(text: str | None) -> list[str] | None:
    """``--eval-degrade jpeg5,jpeg10`` → its levels (commas inside choices and ranges kept); an empty one is refused."""
    from loqi_core.config import check_levels
    from loqi_core.degrade.base import split_top

    if text is None:
        return None
    try:
        return check_levels(split_top(text, ",", text))
    except ValueError as exc:
        raise ConfigError(f'--eval-degrade "{text}": {exc}') from None


def eval_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The shared flags plus the protocol, the search and the cache: eval, run and sweep take these."""
    options = [
        click.option("--image-size", type=(int, int), default=None, metavar="H W", help="Input size overriding the method's (quick CPU runs)."),
        click.option("--recall", help='Recall@N values, e.g. "1 2 5 10" (default) or 1,5,10.'),
        click.option("--positive-radius", type=float, help="Metres: a database image this close to the query is a positive (default 25)."),
        click.option("--clean-database/--degraded-database", default=None, help="Degrade only the queries (default: database and queries, the paper's protocol)."),
        click.option("--index", type=click.Choice(["auto", "flat", "torch", "ivfpq"]), help="Search: auto (torch top-k on CUDA, else FAISS flat), flat, torch, ivfpq (approximate)."),
        click.option("--eval-batch-size", type=int, help="Images per descriptor-extraction batch (default 32)."),
        click.option("--batch-size", "old_batch_size", type=int, hidden=True),  # deprecated spelling of --eval-batch-size
        click.option("--cache-dir", type=click.Path(file_okay=False), help="Evaluation cache (default $LOQI_CACHE or ~/.cache/loqi)."),
        click.option("--no-cache", is_flag=True, help="Neither read nor write cached degraded images and descriptors."),
        click.option("--eval-degrade", help="Evaluate at each of these degradations (comma-separated, e.g. jpeg5,jpeg10,jpeg30): a row per level, the pretrained model beside each."),
        click.option("--database", "--database-folder", "database", type=click.Path(file_okay=False, exists=True),
                     help="A folder of database images (gmberton's evaluator's convention), with --queries: evaluated instead of "
                          "the default test set. Names @east@north@...@.jpg give positions; plain names: label-free (no recall)."),
        click.option("--queries", "--queries-folder", "queries", type=click.Path(file_okay=False, exists=True),
                     help="The folder of query images that goes with --database."),
        click.option("--save-descriptors", is_flag=True, default=None,
                     help="Write database and query descriptors (.npy float32, image names beside) to descriptors/<set>__<row>/."),
        click.option("--pairs", type=click.IntRange(min=1), metavar="K",
                     help="Write hloc retrieval pairs to pairs/<set>__<row>.txt: the K best database images per query."),
        click.option("--sequence", type=click.IntRange(min=1), metavar="L",
                     help="Also score each query by sequence matching (SeqSLAM) over the L frames ending at it, from the "
                          "same descriptors: recall beside the single-frame one. Test sets with capture order only "
                          "(nordland, demo, video360, folder:ROOT?order=frame). -s eval.sequence_window, "
                          "eval.sequence_v_min/v_max/v_step and eval.sequence_rate tune it (docs/evaluation.md)."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return common_options(f)


def eval_overrides(kw: dict[str, Any]) -> dict[str, Any]:
    """The RunConfig fields the evaluation flags set (None = flag not given)."""
    take_deprecated(kw, "old_batch_size", "eval_batch_size", "--batch-size", "--eval-batch-size", "in eval, run and sweep",
                    "the extraction batch; --batch-size is the training batch of loqi distill")
    return {
        "model.image_size": list(kw["image_size"]) if kw.get("image_size") else None,
        "eval.recall": parse_recall(kw.get("recall")), "eval.positive_radius": kw.get("positive_radius"),
        "eval.clean_database": kw.get("clean_database"), "eval.index": kw.get("index"),
        "eval.batch_size": kw.get("eval_batch_size"), "eval.cache_dir": kw.get("cache_dir"),
        "eval.cache": False if kw.get("no_cache") else None,
        "eval.degrade": eval_levels(kw.get("eval_degrade")),
        "eval.database": kw.get("database"), "eval.queries": kw.get("queries"),
        "eval.save_descriptors": kw.get("save_descriptors"), "eval.pairs": kw.get("pairs"),
        "eval.sequence": kw.get("sequence"),
    }  # fmt: skip


@click.command("eval")
@eval_options
@click.option("--dataset", "--test", "-t", "dataset", help="Test set(s), comma-separated: NAME or NAME:PATH (default demo).")
def eval_command(dataset: str | None, **kw: Any) -> None:
    """Recall@N of one model on one or more test sets, with the protocol stated next to the numbers.

    The paper's protocol by default: the database AND the queries are degraded (--degrade) and both are
    encoded by the model under test (--clean-database degrades the queries only). A database image is a
    positive when it lies within --positive-radius metres (UTM east/north) of the query, or the dataset gives
    its ground truth; a query without any positive counts as a miss. Recall@N is the percentage of all
    queries with a positive among the top N.

    Degraded images and descriptors are cached on disk (keyed by data, degradation, weights and code
    version, each file checked by size and sha256), so evaluating the same model again costs only the search.

    --database DIR --queries DIR take two folders as gmberton's evaluator does. Images named without
    @east@north@ make a label-free test set: predictions, grids, pairs and descriptors, no recall.

    The run directory gets config.json, plugins.json, run.log, metrics.json, results.md, recall.png,
    predictions/*.csv and grids/*.png; with --save-descriptors, descriptors/<set>__<row>/ (database.npy,
    queries.npy, their image names in database.txt and queries.txt); with --pairs K, pairs/<set>__<row>.txt
    (hloc's "query db" lines, K per query, best first). With --sequence L, each query is also scored by the L
    frames ending at it (SeqSLAM over the same descriptors) and the report gives both recalls side by side.

    \b
    Examples:
      loqi eval --method lite0-gem --dataset demo --degrade jpeg10
      loqi eval --method mixvpr --weights runs/run-mixvpr-jpeg10-.../ --dataset nordland --degrade jpeg10
      loqi eval --method salad --dataset msls:/data/msls --degrade none --index ivfpq
      loqi eval --method lite0-gem --database map/ --queries frames/ --degrade none --pairs 20 --save-descriptors
      loqi eval --method lite0-gem --dataset nordland --degrade jpeg10 --sequence 10
    """
    from loqi_core.experiments.runner import run_eval

    config = config_from_flags(kw, {**eval_overrides(kw), "eval.test": split_list(dataset)})
    run_eval(config, echo=click.echo)


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Where to write report.md, report.json, recall.png (default runs/report-<time>).")
def report_command(run_dirs: tuple[str, ...], out: str | None) -> None:
    """Combine several run directories (loqi run, sweep or eval) into one table and one recall@N plot.

    Reads each run's metrics.json; writes report.md (one table over all runs, then each run's Table II),
    report.json (all metrics, labelled) and recall.png (every row of every run, one panel per dataset), and prints
    the tables.

    \b
    Example:
      loqi report runs/run-mixvpr-jpeg10-* runs/run-salad-jpeg10-*
    """
    from loqi_core.report.results import combine

    target = Path(out) if out else Path("runs") / f"report-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = combine([Path(d) for d in run_dirs], target)
    click.echo((folder / "report.md").read_text())
    click.echo(f"report: {folder}")


COMMANDS = [eval_command, report_command]
