"""``loqi index build|info`` and ``loqi serve`` (torch, faiss and starlette are imported inside the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.group("index")
def index_group() -> None:
    """Place-recognition indexes for `loqi serve`: a database encoded once, with the model that encoded it."""


@index_group.command("build")
@click.option("--method", "-m", help="VPR method (see `loqi plugins`), e.g. lite0-gem, mixvpr, salad.")
@click.option("--encoder", help="Mix and match: encoder name (instead of, or overriding, --method).")
@click.option("--aggregator", help="Mix and match: aggregator name.")
@click.option("--weights", "-w", help='"default", a variant ("official"), "random", a file or a checkpoint folder (a student: RUN/distill).')
@click.option("--database-weights", metavar="W",
              help='Encode the database with these weights instead ("default": the method\'s pretrained ones, a run '
                   "directory or a file), e.g. the teacher's map for its student's queries (--weights RUN/distill).")
@click.option("--dataset", "-t", help="A test set whose database to index: NAME or NAME:PATH, e.g. demo, nordland:/data/nordland.")
@click.option("--database", type=click.Path(file_okay=False, path_type=Path),
              help="Or any folder of images to index (a map): every image under it, named by its path there.")
@click.option("--order", type=click.Choice(["none", "name", "frame", "timestamp"]), default="none", show_default=True,
              help="With --database: the images' capture order (one traverse per sub-folder), by name, by gmberton's "
                   "frame-index or timestamp field; sessions (sequence matching) need one.")
@click.option("--utm-zone", help="UTM zone (e.g. 33T) of names that carry UTM east/north but no zone: answers then "
                                 "also give latitude and longitude.")
@click.option("--degrade", "-d", default="none", show_default=True, help="Degrade the database before encoding (none: the images as they are).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="The index directory to write.")
@click.option("--index", "backend", type=click.Choice(["flat", "ivfpq"]), default="flat", show_default=True,
              help="flat: exact search; ivfpq: approximate, for millions of images, re-ranked exactly.")
@click.option("--image-size", type=(int, int), default=None, metavar="H W", help="Input size overriding the method's.")
@click.option("--eval-batch-size", type=int, help="Images per extraction batch (default 32), as in loqi eval.")
@click.option("--batch-size", "old_batch_size", type=int, hidden=True)  # deprecated spelling of --eval-batch-size
@click.option("--no-thumbnails", is_flag=True, help="Do not store thumbnails (the page then shows names only).")
@click.option("--force", is_flag=True, help="Replace an existing index at --out.")
@click.option("--seed", type=int, help="Seed of the degradation and of a random initialisation.")
@click.option("--device", help='"auto" (CUDA when available), "cpu", "cuda".')
@click.option("--data-root", type=click.Path(file_okay=False), help="Dataset root (default $LOQI_DATA).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Evaluation cache (default $LOQI_CACHE or ~/.cache/loqi).")
@click.option("--no-cache", is_flag=True, help="Neither read nor write cached degraded images and descriptors.")
@click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False), help="TOML or YAML config file (any RunConfig field).")
@click.option("--set", "-s", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any config field, e.g. -s eval.ivf_nlist=1024 -s eval.ivf_refine=20 -s eval.num_workers=0.")
def build_command(dataset: str | None, database: Path | None, order: str, utm_zone: str | None, out: Path,
                  backend: str, no_thumbnails: bool, force: bool, **kw: Any) -> None:  # fmt: skip
    """Encode a database once and write a self-describing index directory: a test set's database (--dataset), or
    any folder of images (--database), a map.

    The images go through the evaluation engine (same extraction, same descriptor cache as `loqi eval`), then
    INDEX/ gets descriptors.npy, a FAISS index (flat by default; ivfpq trains IVF-PQ and the server re-ranks its
    top refine·k candidates exactly from the descriptors), the names, positions (UTM east/north from gmberton's
    @east@north@ names; latitude, longitude and zone where the names or --utm-zone give them), the capture order,
    thumbnails, and index.json with the model's identity (method, parts, preprocessing, weights and their
    fingerprint). `loqi serve` refuses to serve the index with a model that is not it or its distilled student.
    A folder whose names carry no position indexes too: answers then give names and scores only.

    \b
    Examples:
      loqi index build --method lite0-gem --dataset demo --out indexes/demo
      loqi index build --method mixvpr --database /data/city-map --order name --out indexes/city
      loqi index build --method lite0-gem --database /data/route --utm-zone 33W --out indexes/route
      loqi index build --method salad --dataset msls:/data/msls --index ivfpq -s eval.ivf_nlist=4096 --out indexes/msls
    """
    from loqi_core.plugin import ConfigError, IVFPQParams, config_from_flags, take_deprecated
    from loqi_plugin_serve.geo import parse_zone
    from loqi_plugin_serve.index import build_index
    from loqi_plugin_serve.record import describe, read_meta

    if (dataset is None) == (database is None):
        raise ConfigError("give the images to index: --dataset NAME (a test set's database) or --database FOLDER, not both")
    if order != "none" and database is None:
        raise ConfigError("--order applies to --database (a test set has its own capture order)")

    take_deprecated(kw, "old_batch_size", "eval_batch_size", "--batch-size", "--eval-batch-size", "in index build",
                    "the extraction batch, as in loqi eval")
    extra = {"model.image_size": list(kw["image_size"]) if kw.get("image_size") else None,
             "eval.batch_size": kw.get("eval_batch_size"), "eval.cache_dir": kw.get("cache_dir"),
             "eval.cache": False if kw.get("no_cache") else None, "eval.database_weights": kw.pop("database_weights")}  # fmt: skip
    config = config_from_flags(kw, extra)
    ev = config.eval
    ivf = IVFPQParams(nlist=ev.ivf_nlist, m=ev.ivf_m, nprobe=ev.ivf_nprobe, refine=ev.ivf_refine)
    path = build_index(config, dataset, out, database=database, order=order,
                       utm_zone=parse_zone(utm_zone) if utm_zone else None, backend=backend, ivf=ivf,
                       thumbnails=not no_thumbnails, force=force, echo=click.echo)  # fmt: skip
    click.echo(describe(read_meta(path), path))


@index_group.command("add")
@click.argument("index", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("folder", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--order", type=click.Choice(["none", "name", "frame", "timestamp"]), default="none", show_default=True,
              help="The new images' capture order (new traverses, one per sub-folder), as in index build.")
@click.option("--utm-zone", help="UTM zone (e.g. 33T) of new names that carry UTM east/north but no zone.")
@click.option("--device", help='"auto" (CUDA when available), "cpu", "cuda".')
@click.option("--eval-batch-size", type=int, help="Images per extraction batch (default 32).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Evaluation cache (default $LOQI_CACHE or ~/.cache/loqi).")
@click.option("--no-cache", is_flag=True, help="Neither read nor write cached degraded images and descriptors.")
@click.option("--set", "-s", "sets", multiple=True, metavar="KEY=VALUE", help="Any eval config field, e.g. -s eval.num_workers=0.")
def add_command(index: Path, folder: Path, order: str, utm_zone: str | None, device: str | None,
                eval_batch_size: int | None, cache_dir: str | None, no_cache: bool, sets: tuple[str, ...]) -> None:  # fmt: skip
    """Add every image under FOLDER to INDEX without encoding again what it holds.

    The index is verified first (every file's sha256, then opened as `loqi serve` opens it). The new images are
    encoded with the index's own model, weights, degradation, seed and precision (through the evaluation cache),
    named by their path under FOLDER (a name the index already holds is refused: added twice?), and appended:
    descriptors, positions, capture order, thumbnails. A flat FAISS index gets the new vectors; an IVF-PQ index
    gets their codes, or is trained again when the database has more than doubled since it was trained. The new
    index is written beside the old one, opened and checked like a build, and only then takes its place: a kill at
    any moment leaves the old index or the new one, whole.

    \b
    Example:
      loqi index add indexes/city /data/city-map-2025-06 --order name
    """
    from loqi_core.plugin import config_from_flags
    from loqi_plugin_serve.geo import parse_zone
    from loqi_plugin_serve.index import add_to_index
    from loqi_plugin_serve.record import describe, read_meta

    record = read_meta(index)["model"]  # the index's method: its run defaults (batch size ...) apply
    flags = {"method": record["method"], "encoder": record["encoder"], "aggregator": record["aggregator"],
             "device": device, "sets": sets}  # fmt: skip
    config = config_from_flags(flags, {"eval.batch_size": eval_batch_size, "eval.cache_dir": cache_dir,
                                       "eval.cache": False if no_cache else None})  # fmt: skip
    add_to_index(index, folder, config, order=order, utm_zone=parse_zone(utm_zone) if utm_zone else None, echo=click.echo)
    click.echo(describe(read_meta(index), index))


@index_group.command("info")
@click.argument("index", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--verify", is_flag=True,
              help="Also check every file's sha256 against index.json, and open the index as `loqi serve` would.")
@click.option("--json", "as_json", is_flag=True, help="Print index.json as it is.")
def info_command(index: Path, verify: bool, as_json: bool) -> None:
    """What an index holds: database, model identity, search settings, files (checked by size, or sha256)."""
    import json

    from loqi_plugin_serve.index import open_index
    from loqi_plugin_serve.record import IndexDirError, describe, read_meta, verify_files

    meta = read_meta(index)
    click.echo(json.dumps(meta, indent=2) if as_json else describe(meta, index))
    problems = verify_files(index, meta, full=verify)
    if problems:
        raise IndexDirError(f"{index} is incomplete or corrupt: {'; '.join(problems)}")
    if verify:
        open_index(index)  # shapes, offsets, and the FAISS index against the descriptors it claims to hold
    if not as_json:
        checked = "sha256, shapes and the FAISS index checked" if verify else "sizes checked"
        click.echo(f"files: {len(meta['files'])} intact ({checked})")


@click.command("serve")
@click.argument("index", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port; 0 picks a free one (printed).")
@click.option("--device", default="auto", show_default=True, help='"auto" (CUDA when available), "cpu", "cuda", "cuda:1".')
@click.option("--weights", "-w", help="Weights that encode the queries: the index's own (default), or a student distilled from "
              "exactly the index's model (its checkpoint's lineage says so); anything else is refused.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="auto: bf16 autocast on CUDA, fp32 on CPU.")
@click.option("--max-batch", type=click.IntRange(1),
              help="Images per model call (default 32 on CUDA, 8 on a CPU, where larger batches run slower); 1 turns micro-batching off.")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=click.FloatRange(0), help="How long the first image of a batch waits for others.")
@click.option("--max-body-mb", default=32.0, show_default=True, type=click.FloatRange(0, min_open=True), help="Largest request body.")
@click.option("--max-pixels", default=25_000_000, show_default=True, type=click.IntRange(1), help="Largest image or video frame (width × height).")
@click.option("--max-aspect", default=20.0, show_default=True, type=click.FloatRange(1),
              help="Largest aspect ratio (long side / short side) of an image or frame.")
@click.option("--max-model-pixels", default=16_777_216, show_default=True, type=click.IntRange(1),
              help="Most pixels an image may reach in the model's preprocessing (a thin strip is upscaled), judged before decoding.")
@click.option("--max-frames", default=120, show_default=True, type=click.IntRange(1), help="Most frames per video segment.")
@click.option("--max-segment-pixels", default=100_000_000, show_default=True, type=click.IntRange(1),
              help="Most pixels a video segment may decode to, all frames together (bounds its memory).")
@click.option("--max-k", default=100, show_default=True, type=click.IntRange(1), help="Largest k a client may ask for.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds per request once its headers are in: the body, then the work.")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds a connection may take to send a request's headers (then 408 and closed): slow clients.")
@click.option("--max-idle-connections", default=100, show_default=True, type=click.IntRange(1),
              help="Connections that may wait for a request's headers at once; beyond, the longest waiting is closed.")
@click.option("--graceful-timeout", default=30.0, show_default=True, type=click.FloatRange(0),
              help="On SIGTERM or Ctrl-C, seconds the requests in flight get to finish.")
@click.option("--threads", type=click.IntRange(1), help="CPU threads for the model (torch.set_num_threads).")
@click.option("--api-key-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Require Authorization: Bearer KEY for /v1/* and /metrics; the file holds the keys, one per line.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Let a page from ORIGIN (https://app.example.org, or *) call the API from a browser; repeatable.")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="One line per request on stderr: client, method, path, status, ms, request id (never a key).")
@click.option("--sequence-length", default=10, show_default=True, type=click.IntRange(1),
              help="Frames per sequence of a session that does not say (SeqSLAM's d_s).")
@click.option("--max-sequence-length", default=100, show_default=True, type=click.IntRange(1),
              help="Longest sequence a session may ask for.")
@click.option("--max-sessions", default=64, show_default=True, type=click.IntRange(0), help="Sessions held at once.")
@click.option("--session-idle", default=300.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds without a frame after which a session expires.")
@click.option("--session-memory-mb", default=512.0, show_default=True, type=click.FloatRange(0),
              help="Memory all sessions together may hold (each: length x database images x 8 bytes).")
def serve_command(index: Path, host: str, port: int, device: str, weights: str | None, precision: str, max_batch: int | None,
                  max_wait_ms: float, max_body_mb: float, max_pixels: int, max_aspect: float, max_model_pixels: int,
                  max_frames: int, max_segment_pixels: int, max_k: int, timeout: float, header_timeout: float,
                  max_idle_connections: int, graceful_timeout: float, threads: int | None, api_key_file: Path | None,
                  cors_origins: tuple[str, ...], access_log: bool, sequence_length: int, max_sequence_length: int,
                  max_sessions: int, session_idle: float, session_memory_mb: float) -> None:  # fmt: skip
    """Serve place recognition over HTTP for frames a robot or a phone sends: images, video segments, sequences.

    Loads the index and its model once (refusing a --weights that is neither the model the index was built with
    nor a student distilled from it), then answers:

    \b
      POST /v1/locate?k=5          an image (raw bytes, or curl -F file=@frame.jpg) -> the top-k places (JSON)
      POST /v1/locate/stream?k=5   an H.264/HEVC segment (raw, MP4, MPEG-TS, Matroska) -> top-k per frame
      POST /v1/sessions            a sequence session; then POST /v1/sessions/ID/locate (or /locate/stream):
                                   each frame's own top-k and the top-k of the sequence ending at it
      GET  /                       a page: upload an image or a video, see the answers on a map
      GET  /docs, /openapi.json    the API's description (OpenAPI 3.1)
      GET  /healthz, /readyz       liveness; readiness (warm and not stopping)
      GET  /metrics                Prometheus: requests, errors, stage latencies, batch sizes, sessions

    Concurrent requests share model calls (dynamic micro-batching: --max-batch, --max-wait-ms; a lone request
    does not wait). Bad input gets a 4xx JSON with the reason; an image is judged from its header (pixels, aspect
    ratio, size in the model's preprocessing) before it is decoded, and slow clients are held to --header-timeout
    and --timeout. Sessions live in memory only: bounded in number and memory, they expire when idle and do not
    survive a restart. Put a TLS proxy in front of it and --api-key-file on it before exposing it (docs/serving.md).
    SIGTERM makes /readyz answer 503, lets the requests in flight finish, then exits.

    \b
    Example:
      loqi index build --method lite0-gem --dataset demo --out indexes/demo
      loqi serve indexes/demo --port 8000
      curl -F file=@frame.jpg 'http://127.0.0.1:8000/v1/locate?k=5'
    """
    import logging
    import sys

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from loqi_plugin_serve.access import read_api_keys, readable_by_others
    from loqi_plugin_serve.app import Access, Limits, create_app
    from loqi_plugin_serve.engine import load_engine
    from loqi_plugin_serve.server import bind, make_server, url_of
    from loqi_plugin_serve.sessions import SessionLimits

    keys = read_api_keys(api_key_file) if api_key_file is not None else ()
    if api_key_file is not None and readable_by_others(api_key_file):
        click.echo(f"Warning: {api_key_file} is readable by other users of this machine: chmod 600 it", err=True)
    if sequence_length > max_sequence_length:
        raise click.BadParameter(f"{sequence_length} is longer than --max-sequence-length {max_sequence_length}",
                                 param_hint="--sequence-length")  # fmt: skip
    engine = load_engine(index, weights, device, precision)
    max_batch = max_batch or (32 if engine.device.type == "cuda" else 8)
    limits = Limits(max_body_bytes=int(max_body_mb * 2**20), max_pixels=max_pixels, max_aspect=max_aspect,
                    max_model_pixels=max_model_pixels, max_frames=max_frames, max_segment_pixels=max_segment_pixels,
                    max_k=max_k, timeout_s=timeout, header_timeout_s=header_timeout,
                    max_idle_connections=max_idle_connections, max_batch=max_batch, max_wait_ms=max_wait_ms)  # fmt: skip
    sessions = SessionLimits(max_sessions=max_sessions, idle_s=session_idle, memory_bytes=int(session_memory_mb * 2**20),
                             max_length=max_sequence_length, default_length=sequence_length)  # fmt: skip
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    served = logging.getLogger("loqi.serve")
    served.addHandler(handler)
    served.setLevel(logging.INFO)
    served.propagate = False
    app = create_app(engine, limits, Access(keys, cors_origins, access_log), sessions)
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    meta = engine.index.meta
    student = " (a student of the index's model encodes the queries)" if engine.lineage else ""
    click.echo(f"serving {index} ({engine.index.size} images, {meta['model']['info']['method']}{student}, {engine.device}, "
               f"micro-batching {max_batch} / {max_wait_ms:g} ms, API keys {'on' if keys else 'off'}) on {url_of(sock)}")  # fmt: skip
    click.echo("SIGTERM or Ctrl-C stops it after the requests in flight")
    make_server(app, limits, graceful_timeout).run(sockets=[sock])
