"""The serve/index bad-input table (issue 22): one row per command or request, the exit code or HTTP status it must
get, a fragment of the one line it must say, and what must be kept: the user's files, the dataset and the index as
they were, the server answering the next good request. No row may end in a traceback, a 5xx or a hang.

Rows that damage an index work on a copy of the demo index; "recorded" rows also rewrite index.json to match the
damaged file (as a buggy writer or a careless copy would), so the check behind the digests is the one that answers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import numpy as np
import pytest
from click.testing import CliRunner


@dataclass
class Ctx:
    """What a row may use: a fresh folder, the session's demo index, server and engine, the helpers, the eval cache."""

    tmp: Path
    demo_index: Path
    server: Any
    engine: Any
    kit: Any
    cache_dir: Path
    state: dict[str, Any] = field(default_factory=dict)
    """What a row's run hands to its keep check."""


@dataclass
class Row:
    id: str
    run: Callable[[Ctx], tuple[int, str]]
    expected: int
    """Exit code of a command, or HTTP status of a request."""
    fragment: str
    keep: Callable[[Ctx], None] | None = None


ROWS: list[Row] = []


def row(id: str, expected: int, fragment: str, keep: Callable[[Ctx], None] | None = None):
    def add(run: Callable[[Ctx], tuple[int, str]]):
        ROWS.append(Row(id, run, expected, fragment, keep))
        return run

    return add


# ---- how a row runs ----------------------------------------------------------------------------------------------
def _cli():
    from loqi_core.cli import cli
    from loqi_core.plugin import get_plugins

    get_plugins().add_commands(cli)
    return cli


def command(*args: Any) -> tuple[int, str]:
    """``loqi ARGS`` in this process; an exception other than the CLI's exit is code 99 with its traceback. A
    ``loqi serve`` that gets as far as starting its server fails the row instead of serving forever."""
    with mock.patch("loqi_plugin_serve.server.make_server", side_effect=AssertionError("the server started")):
        result = CliRunner().invoke(_cli(), [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return 99, result.output + "".join(traceback.format_exception(result.exception))
    return result.exit_code, result.output


def loqi_process(*args: Any, timeout: float = 120) -> tuple[int, str]:
    """A real ``loqi`` process, for rows that used to hang: a timeout fails the row instead of the suite."""
    done = subprocess.run([str(Path(sys.executable).with_name("loqi")), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def build_args(ctx: Ctx, dataset: Path, out: Path, *extra: Any, cache: Path | None = None) -> list[Any]:
    return ["index", "build", "--method", "lite0-gem", "--weights", "random", "--seed", 3, "--dataset", f"folder:{dataset}",
            "--out", out, "--device", "cpu", "--cache-dir", cache or ctx.cache_dir, "-s", "eval.num_workers=0", *extra]  # fmt: skip


def small_dataset(ctx: Ctx) -> Path:
    from loqi_core.testing.tiny import write_vpr_folder

    root = write_vpr_folder(ctx.tmp / "data", places=6)
    ctx.state["dataset"] = files(root)
    return root


def dataset_untouched(ctx: Ctx) -> None:
    assert files(ctx.tmp / "data") == ctx.state["dataset"]


def answers_well(ctx: Ctx) -> None:
    """The session's server, right after the row: a database image finds itself, promptly."""
    png = ctx.kit.database_files(ctx.engine.index)[42].read_bytes()
    start = time.monotonic()
    status, body = ctx.server.post("/v1/locate?k=3", png, "image/png")
    assert status == 200 and body["results"][0]["index"] == 42, body
    assert time.monotonic() - start < 20


# ---- 1: --force replaces only an index, never the user's folder, never the input -----------------------------------
def _thesis_kept(ctx: Ctx) -> None:
    assert files(ctx.tmp / "out") == {"thesis.tex": b"chapter 1"}


@row("build/force-over-a-folder-of-the-user", 1, "--force replaces only a loqi index", _thesis_kept)
def _(ctx):
    (ctx.tmp / "out").mkdir()
    (ctx.tmp / "out/thesis.tex").write_text("chapter 1")
    return command(*build_args(ctx, small_dataset(ctx), ctx.tmp / "out", "--force"))


@row("build/force-over-the-dataset", 1, "is not one", dataset_untouched)
def _(ctx):
    root = small_dataset(ctx)
    return command(*build_args(ctx, root, root, "--force"))


@row("build/out-inside-the-dataset", 1, "lies inside the images it reads", dataset_untouched)
def _(ctx):
    root = small_dataset(ctx)
    return command(*build_args(ctx, root, root / "images/test/database/index"))


def _index_kept_with_notes(ctx: Ctx) -> None:
    assert (ctx.tmp / "idx/notes.txt").read_text() == "mine"
    assert files(ctx.tmp / "idx") == ctx.state["before"]


@row("build/force-over-an-index-that-holds-more", 1, "also holds notes.txt: move them away", _index_kept_with_notes)
def _(ctx):
    root = small_dataset(ctx)
    code, out = command(*build_args(ctx, root, ctx.tmp / "idx", "--no-thumbnails"))
    assert code == 0, out
    (ctx.tmp / "idx/notes.txt").write_text("mine")
    ctx.state["before"] = files(ctx.tmp / "idx")
    return command(*build_args(ctx, root, ctx.tmp / "idx", "--force"))


def _replaced_cleanly(ctx: Ctx) -> None:
    from loqi_plugin_serve.index import open_index

    index = open_index(ctx.tmp / "idx")
    assert index.meta["thumbnails"] is True and index.size == 6  # the new build, with thumbnails
    assert sorted(p.name for p in ctx.tmp.iterdir()) == ["data", "idx"], "a hidden partial or replaced folder was left"


@row("build/force-over-an-index", 0, "database: 6 images of folder:", _replaced_cleanly)
def _(ctx):
    root = small_dataset(ctx)
    code, out = command(*build_args(ctx, root, ctx.tmp / "idx", "--no-thumbnails"))
    assert code == 0, out
    return command(*build_args(ctx, root, ctx.tmp / "idx", "--force"))


# ---- Also: what killed writers left is removed by the next one (a live writer's is kept) ---------------------------
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _leftovers_handled(ctx: Ctx) -> None:
    gone, kept = ctx.state["dead"], ctx.state["live"]
    assert not any(p.exists() for p in gone), [p for p in gone if p.exists()]
    assert all(p.exists() for p in kept)
    ctx.state["sleeper"].kill()
    ctx.state["sleeper"].wait()
    assert len(gone) == 4 and len(kept) == 2


@row("build/leftovers-of-killed-writers", 0, "left by a build that was killed", _leftovers_handled)
def _(ctx):
    from loqi_core.plugin import writer_tag

    root, cache = small_dataset(ctx), ctx.tmp / "cache"
    code, out = command(*build_args(ctx, root, ctx.tmp / "idx", "--no-thumbnails", cache=cache))
    assert code == 0, out
    host = writer_tag().split("@")[1]
    dead, sleeper = f"{_dead_pid()}@{host}", subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    live = f"{sleeper.pid}@{host}"
    ctx.state["sleeper"] = sleeper
    ctx.state["dead"] = [ctx.tmp / f".idx.partial-{dead}", ctx.tmp / f".idx.replaced-{dead}"]
    ctx.state["live"] = [ctx.tmp / f".idx.partial-{live}"]
    for folder in (*ctx.state["dead"], *ctx.state["live"]):
        folder.mkdir()
        (folder / "descriptors.npy").write_bytes(b"half")
    [entry] = (cache / "eval/descriptors").iterdir()  # a killed extraction's memory map, and a killed write
    for name, holder in ((f"descriptors.{dead}.partial.npy", "dead"), (f"key.json.{dead}.tmp", "dead"),
                         (f"descriptors.{live}.partial.npy", "live")):  # fmt: skip
        (entry / name).write_bytes(b"half")
        ctx.state[holder].append(entry / name)
    return command(*build_args(ctx, root, ctx.tmp / "idx", "--force", "--no-thumbnails", cache=cache))


# ---- 4: names a file system allows round-trip (line breaks, U+2028, bytes that are not UTF-8) ----------------------
def _odd_names_round_trip(ctx: Ctx) -> None:
    from loqi_plugin_serve.app import create_app
    from loqi_plugin_serve.engine import load_engine, printable

    engine = load_engine(ctx.tmp / "idx", device="cpu")
    assert engine.index.names == ctx.state["names"]
    server = ctx.kit.Server(create_app(engine, ctx.kit.LIMITS))
    try:
        for i, name in enumerate(ctx.state["names"]):
            path = ctx.tmp / "data/images/test/database" / name
            status, body = server.post("/v1/locate?k=1", path.read_bytes(), "image/png")
            assert status == 200 and body["results"][0]["index"] == i and body["results"][0]["name"] == printable(name)
    finally:
        server.stop()


@row("build/names-with-line-breaks-and-non-utf8-bytes", 0, "database: 6 images of folder:", _odd_names_round_trip)
def _(ctx):
    root = small_dataset(ctx)
    database = root / "images/test/database"
    odd = ["line\nbreak", "para\u2028graph", os.fsdecode(b"caf\xe9")]
    for path, label in zip(sorted(database.iterdir()), odd):
        path.rename(path.with_name(path.name.replace("@.png", f"{label}@.png")))
    ctx.state["names"] = sorted(p.name for p in database.iterdir())
    assert sum("\n" in n for n in ctx.state["names"]) == 1
    return command(*build_args(ctx, root, ctx.tmp / "idx", "--no-thumbnails"))


# ---- 2: one decoding rule: the database's own 16-bit PNG and EXIF-rotated JPEG find themselves -------------------
def _own_images_find_themselves(ctx: Ctx) -> None:
    from loqi_plugin_serve.app import create_app
    from loqi_plugin_serve.engine import load_engine

    engine = load_engine(ctx.tmp / "idx", device="cpu")
    server = ctx.kit.Server(create_app(engine, ctx.kit.LIMITS))
    try:
        for name, content_type in (("0000", "image/png"), ("0001", "image/jpeg")):
            i = next(i for i, n in enumerate(engine.index.names) if f"@{name}@" in n)
            data = (ctx.tmp / "data/images/test/database" / engine.index.names[i]).read_bytes()
            status, body = server.post("/v1/locate?k=2", data, content_type)
            top = body["results"][0]
            assert status == 200 and top["index"] == i and top["score"] > 0.9999, (name, body)
    finally:
        server.stop()


@row("build/16-bit-png-and-exif-jpeg-find-themselves-through-the-server", 0, "database: 6 images of folder:",
     _own_images_find_themselves)
def _(ctx):
    from PIL import Image

    root = small_dataset(ctx)
    database = sorted((root / "images/test/database").iterdir())
    rgb = np.asarray(Image.open(database[0]).convert("RGB")).astype(np.uint16)
    Image.fromarray(rgb.mean(2).astype(np.uint16) * 200).save(database[0])  # 16-bit grey, values up to 51 000
    jpeg = database[1].with_suffix(".jpg")
    image = Image.open(database[1]).convert("RGB")
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: shown rotated by 90°
    image.save(jpeg, quality=95, exif=exif)
    database[1].unlink()
    return command(*build_args(ctx, root, ctx.tmp / "idx", "--no-thumbnails"))


# ---- 5, 11, 15: index info on a record that lies ---------------------------------------------------------------------
def damaged_copy(ctx: Ctx) -> Path:
    copy = ctx.tmp / "index"
    shutil.copytree(ctx.demo_index, copy)
    return copy


def edit_record(index: Path, change: Callable[[dict], Any]) -> None:
    """``change`` edits index.json's dict in place."""
    meta = json.loads((index / "index.json").read_text())
    change(meta)
    (index / "index.json").write_text(json.dumps(meta))


def record_file(index: Path, name: str) -> None:
    """index.json made to match ``name`` as it is now (size and sha256)."""
    data = (index / name).read_bytes()
    edit_record(index, lambda m: m["files"].__setitem__(name, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}))


def demo_untouched_but(*names: str) -> Callable[[Ctx], None]:
    """The damaged copy lost nothing: every file but the ones the row damaged is still the demo index's."""

    def keep(ctx: Ctx) -> None:
        original, copy = files(ctx.demo_index), files(ctx.tmp / "index")
        assert set(copy) == set(original)
        assert {n for n in original if copy[n] != original[n]} <= {"index.json", *names}

    return keep


@row("info/record-without-files", 1, "index.json: files: Field required", demo_untouched_but())
def _(ctx):
    index = damaged_copy(ctx)
    edit_record(index, lambda m: m.pop("files"))
    return command("index", "info", index)


@row("info/record-a-json-list", 1, "a JSON list where an object is expected", demo_untouched_but())
def _(ctx):
    index = damaged_copy(ctx)
    (index / "index.json").write_text("[1, 2, 3]")
    return command("index", "info", index)


@row("info/record-wrong-type", 1, "database_images: Input should be a valid integer", demo_untouched_but())
def _(ctx):
    index = damaged_copy(ctx)
    edit_record(index, lambda m: m.__setitem__("database_images", "300"))
    return command("index", "info", index)


@row("info/no-files-listed-and-descriptors-truncated", 1, "files must list exactly", demo_untouched_but("descriptors.npy"))
def _(ctx):
    index = damaged_copy(ctx)
    edit_record(index, lambda m: m.__setitem__("files", {}))
    with open(index / "descriptors.npy", "r+b") as f:
        f.truncate(1000)
    return command("index", "info", index, "--verify")


@row("info/a-file-outside-the-index", 1, "not of the format: '../outside_secret.txt'", demo_untouched_but())
def _(ctx):
    index = damaged_copy(ctx)
    (ctx.tmp / "outside_secret.txt").write_text("secret")
    secret = {"size": 6, "sha256": hashlib.sha256(b"secret").hexdigest()}
    edit_record(index, lambda m: m["files"].__setitem__("../outside_secret.txt", secret))
    return command("index", "info", index, "--verify")


@row("info/descriptors-a-link-to-dev-zero", 1, "descriptors.npy: not a regular file", demo_untouched_but("descriptors.npy"))
def _(ctx):
    index = damaged_copy(ctx)
    (index / "descriptors.npy").unlink()
    (index / "descriptors.npy").symlink_to("/dev/zero")
    code, out = loqi_process("index", "info", index, "--verify", timeout=120)
    (index / "descriptors.npy").unlink()  # the keep check reads every file
    shutil.copy(ctx.demo_index / "descriptors.npy", index / "descriptors.npy")
    return code, out


@row("info/an-older-format", 1, "this loqi reads loqi-index v3: rebuild the index", demo_untouched_but())
def _(ctx):
    index = damaged_copy(ctx)
    edit_record(index, lambda m: m.__setitem__("format_version", 1))
    return command("index", "info", index)


@row("info/verify-a-changed-thumbnail", 1, "thumbnails.bin: sha256 differs", demo_untouched_but("thumbnails.bin"))
def _(ctx):
    index = damaged_copy(ctx)
    data = bytearray((index / "thumbnails.bin").read_bytes())
    data[100] ^= 1
    (index / "thumbnails.bin").write_bytes(bytes(data))
    return command("index", "info", index, "--verify")


# ---- 3, 10: loqi serve opens only an index that holds what its record says ------------------------------------------
def serve(index: Path) -> tuple[int, str]:
    return command("serve", index, "--device", "cpu", "--port", 0)


@row("serve/utm-of-shape-n-by-1", 1, "utm.npy: a float64 array of shape (300, 1), expected float64 (300, 2)",
     demo_untouched_but("utm.npy"))
def _(ctx):
    index = damaged_copy(ctx)
    np.save(index / "utm.npy", np.load(index / "utm.npy")[:, :1])
    record_file(index, "utm.npy")
    return serve(index)


@row("serve/utm-changed-same-size", 1, "utm.npy: sha256 differs from index.json", demo_untouched_but("utm.npy"))
def _(ctx):
    index = damaged_copy(ctx)
    np.save(index / "utm.npy", np.load(index / "utm.npy")[::-1].copy())
    return serve(index)


@row("serve/thumbnail-offsets-short", 1, "thumbnails.npy: a int64 array of shape (16,)", demo_untouched_but("thumbnails.npy"))
def _(ctx):
    index = damaged_copy(ctx)
    np.save(index / "thumbnails.npy", np.load(index / "thumbnails.npy")[:16])
    record_file(index, "thumbnails.npy")
    return serve(index)


@row("serve/thumbnail-offsets-past-the-end", 1, "the offsets do not cut thumbnails.bin", demo_untouched_but("thumbnails.npy"))
def _(ctx):
    index = damaged_copy(ctx)
    offsets = np.load(index / "thumbnails.npy")
    offsets[-1] += 10_000
    np.save(index / "thumbnails.npy", offsets)
    record_file(index, "thumbnails.npy")
    return serve(index)


@row("serve/descriptors-truncated", 1, "descriptors.npy: 1000 bytes, expected", demo_untouched_but("descriptors.npy"))
def _(ctx):
    index = damaged_copy(ctx)
    with open(index / "descriptors.npy", "r+b") as f:
        f.truncate(1000)
    return serve(index)


@row("serve/descriptors-truncated-and-recorded", 1, "descriptors.npy: not a readable .npy array",
     demo_untouched_but("descriptors.npy"))
def _(ctx):
    index = damaged_copy(ctx)
    with open(index / "descriptors.npy", "r+b") as f:
        f.truncate(1000)
    record_file(index, "descriptors.npy")
    return serve(index)


def _faiss_of_other_vectors(index: Path) -> None:
    """A same-size flat index over the descriptors in another order: every vector a real one, half in wrong places."""
    import faiss

    descriptors = np.load(index / "descriptors.npy")
    other = faiss.IndexFlatIP(descriptors.shape[1])
    other.add(np.ascontiguousarray(descriptors[np.random.default_rng(0).permutation(len(descriptors))]))
    size = (index / "faiss.index").stat().st_size
    faiss.write_index(other, str(index / "faiss.index"))
    assert (index / "faiss.index").stat().st_size == size


@row("serve/faiss-of-other-vectors", 1, "faiss.index: sha256 differs from index.json", demo_untouched_but("faiss.index"))
def _(ctx):
    index = damaged_copy(ctx)
    _faiss_of_other_vectors(index)
    return serve(index)


@row("serve/faiss-of-other-vectors-recorded", 1, "does not hold the vectors of descriptors.npy", demo_untouched_but("faiss.index"))
def _(ctx):
    index = damaged_copy(ctx)
    _faiss_of_other_vectors(index)
    record_file(index, "faiss.index")
    return serve(index)


@row("serve/faiss-not-an-index", 1, "faiss.index: not a FAISS index", demo_untouched_but("faiss.index"))
def _(ctx):
    index = damaged_copy(ctx)
    (index / "faiss.index").write_bytes(b"not a faiss index at all" * 10)
    record_file(index, "faiss.index")
    return serve(index)


@row("serve/names-one-short", 1, "names.json: expected a list of 300 names", demo_untouched_but("names.json"))
def _(ctx):
    index = damaged_copy(ctx)
    (index / "names.json").write_text(json.dumps(json.loads((index / "names.json").read_text())[:-1]))
    record_file(index, "names.json")
    return serve(index)


@row("serve/descriptors-not-normalised", 1, "is not a finite L2-normalised descriptor", demo_untouched_but("descriptors.npy"))
def _(ctx):
    index = damaged_copy(ctx)
    np.save(index / "descriptors.npy", np.load(index / "descriptors.npy") * 2)
    record_file(index, "descriptors.npy")
    return serve(index)


# ---- issue 23: maps from folders, index add, positions; issue 21: a student's lineage ---------------------------------
def map_folder(ctx: Ctx, name: str = "map", count: int = 4, prefix: str = "m") -> Path:
    from PIL import Image

    folder = ctx.tmp / name
    folder.mkdir()
    rng = np.random.default_rng(len(name))
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 48, 3)).astype(np.uint8)).save(folder / f"{prefix}{i}.png")
    return folder


def folder_index(ctx: Ctx, folder: Path, *extra: Any) -> Path:
    code, out = command("index", "build", "--method", "lite0-gem", "--weights", "random", "--seed", 3, "--database",
                        folder, "--out", ctx.tmp / "idx", "--device", "cpu", "--cache-dir", ctx.cache_dir, "-s",
                        "eval.num_workers=0", "--no-thumbnails", *extra)  # fmt: skip
    assert code == 0, out
    ctx.state["index"] = files(ctx.tmp / "idx")
    return ctx.tmp / "idx"


def index_kept(ctx: Ctx) -> None:
    assert files(ctx.tmp / "idx") == ctx.state["index"]
    assert not [p.name for p in ctx.tmp.iterdir() if p.name.startswith(".")], "a hidden partial folder was left"


def add(ctx: Ctx, index: Path, folder: Path) -> tuple[int, str]:
    return command("index", "add", index, folder, "--device", "cpu", "--cache-dir", ctx.cache_dir, "-s", "eval.num_workers=0")


@row("build/database-folder-missing", 1, "folder not found")
def _(ctx):
    return command("index", "build", "--method", "lite0-gem", "--database", ctx.tmp / "nowhere", "--out", ctx.tmp / "idx")


@row("build/database-names-some-with-positions", 1, "file name has no UTM coordinates, but other images")
def _(ctx):
    folder = map_folder(ctx)
    (folder / "m0.png").rename(folder / "@500000.00@4000000.00@33@T@@@@@@@@@@.png")
    return command("index", "build", "--method", "lite0-gem", "--database", folder, "--out", ctx.tmp / "idx")


@row("build/database-and-dataset", 1, "--dataset NAME (a test set's database) or --database FOLDER, not both")
def _(ctx):
    return command("index", "build", "--method", "lite0-gem", "--dataset", "demo", "--database", map_folder(ctx),
                   "--out", ctx.tmp / "idx")  # fmt: skip


@row("build/utm-zone-not-a-zone", 1, '--utm-zone: "61X" is not a UTM zone')
def _(ctx):
    return command("index", "build", "--method", "lite0-gem", "--database", map_folder(ctx), "--utm-zone", "61X",
                   "--out", ctx.tmp / "idx")  # fmt: skip


@row("add/the-same-folder-twice", 1, "the index already holds an image named 'm0.png' (added twice?)", index_kept)
def _(ctx):
    folder = map_folder(ctx)
    return add(ctx, folder_index(ctx, folder), folder)


@row("add/to-a-damaged-index", 1, "descriptors.npy: sha256 differs from index.json", index_kept)
def _(ctx):
    index = folder_index(ctx, map_folder(ctx))
    data = bytearray((index / "descriptors.npy").read_bytes())
    data[-1] ^= 1
    (index / "descriptors.npy").write_bytes(bytes(data))
    ctx.state["index"] = files(index)
    return add(ctx, index, map_folder(ctx, "more", prefix="n"))


@row("add/to-an-index-that-holds-more", 1, "also holds notes.txt: move them away", index_kept)
def _(ctx):
    index = folder_index(ctx, map_folder(ctx))
    (index / "notes.txt").write_text("mine")
    ctx.state["index"] = files(index)
    return add(ctx, index, map_folder(ctx, "more", prefix="n"))


@row("add/a-folder-that-holds-the-index", 1, "idx lies inside the images it reads", index_kept)
def _(ctx):
    index = folder_index(ctx, map_folder(ctx))
    return add(ctx, index, ctx.tmp)


@row("add/not-an-index", 1, "is not a loqi index (no index.json)")
def _(ctx):
    return add(ctx, map_folder(ctx, "plain"), map_folder(ctx, "more", prefix="n"))


@row("serve/geo-of-shape-n-by-2", 1, "geo.npy: a float64 array of shape (300, 2), expected float64 (300, 3)",
     demo_untouched_but("geo.npy"))
def _(ctx):
    index = damaged_copy(ctx)
    np.save(index / "geo.npy", np.load(index / "geo.npy")[:, :2])
    record_file(index, "geo.npy")
    return serve(index)


@row("serve/order-with-a-position-twice", 1, "order.npy: the positions of a traverse are not 0, 1, 2, ...",
     demo_untouched_but("order.npy"))
def _(ctx):
    index = damaged_copy(ctx)
    order = np.load(index / "order.npy")
    order[1] = order[0]
    np.save(index / "order.npy", order)
    record_file(index, "order.npy")
    return serve(index)


@row("serve/a-student-of-another-model", 1, "and its checkpoint records no teacher: its descriptors would not be comparable")
def _(ctx):
    import torch

    from loqi_core import build_model
    from loqi_core.plugin import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(build_model("lite0-gem", weights="random"), ctx.tmp / "student")
    return command("serve", ctx.demo_index, "--device", "cpu", "--port", 0, "--weights", ctx.tmp / "student")


# ---- 9: denial of service by shape: refused from the header, and the next request is answered at once -------------
def png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def post(ctx: Ctx, path: str, body: bytes, content_type: str) -> tuple[int, str]:
    status, answer = ctx.server.post(path, body, content_type)
    return status, f"{answer.get('code')}: {answer.get('error')}"


@row("http/strip-of-20000-by-1", 413, "aspect_ratio: the PNG image is 20000×1, an aspect ratio over the limit of 20:1",
     answers_well)
def _(ctx):
    return post(ctx, "/v1/locate", png(20000, 1), "image/png")


@row("http/thin-strip-upscaled-by-preprocessing", 413, "the model's preprocessing would make it 1920×128 = 245760 pixels",
     answers_well)
def _(ctx):
    return post(ctx, "/v1/locate", png(1500, 100), "image/png")


@row("http/video-of-strips", 413, "aspect_ratio: each frame is 1024×16", answers_well)
def _(ctx):
    import torch

    frames = [torch.full((3, 16, 1024), v, dtype=torch.uint8) for v in (60, 120)]
    return post(ctx, "/v1/locate/stream", ctx.kit.video_bytes(frames), "video/h264")


# ---- 14: slow and idle clients are bounded; the server keeps answering ------------------------------------------------
def guarded_server(ctx: Ctx, **limits: Any):
    from dataclasses import replace

    from loqi_plugin_serve.app import create_app

    return ctx.kit.Server(create_app(ctx.engine, replace(ctx.kit.LIMITS, **limits)))


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (a reset is a close, after what arrived)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


@row("http/header-sent-in-part-then-nothing", 408, "header_timeout: the request headers did not arrive within 1 s")
def _(ctx):
    server = guarded_server(ctx, header_timeout_s=1.0)
    try:
        with socket.create_connection((ctx.kit.HOST, server.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/locate HTTP/1.1\r\nHost: x\r\nContent-Ty")
            start = time.monotonic()
            reply = _read_all(sock, 30).decode()  # the server closes the connection: recv returns b""
            waited = time.monotonic() - start
        assert 0.9 <= waited < 10, waited
        assert server.post("/v1/locate", ctx.kit.database_files(ctx.engine.index)[5].read_bytes(), "image/png")[0] == 200
        metrics = server.request("GET", "/metrics")[2].decode()
        assert 'loqi_connections_dropped_total{reason="header_timeout"} 1' in metrics
    finally:
        server.stop()
    status = int(reply.split()[1])
    answer = json.loads(reply.split("\r\n\r\n", 1)[1])
    return status, f"{answer['code']}: {answer['error']}"


@row("http/forty-idle-connections-over-a-cap-of-8", 200, "results")
def _(ctx):
    server = guarded_server(ctx, header_timeout_s=60.0, max_idle_connections=8)
    idle = [socket.create_connection((ctx.kit.HOST, server.port), timeout=30) for _ in range(40)]
    try:
        for sock in idle[:-1]:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers begun, never ended
        time.sleep(1)
        start = time.monotonic()
        status, body = server.post("/v1/locate?k=1", ctx.kit.database_files(ctx.engine.index)[7].read_bytes(), "image/png")
        assert time.monotonic() - start < 20
        closed = sum(_read_all(sock, 5) == b"" for sock in idle[:32])  # the 32 that waited longest were closed
        metrics = server.request("GET", "/metrics")[2].decode()
    finally:
        for sock in idle:
            sock.close()
        server.stop()
    assert closed == 32, closed
    assert 'loqi_connections_dropped_total{reason="too_many_idle"}' in metrics
    return status, json.dumps(body)


# ---- issue 23/24: keys, uploads and sessions -------------------------------------------------------------------------
@row("serve/api-key-file-with-a-line-that-is-no-key", 1, "line 2: not an API key")
def _(ctx):
    (ctx.tmp / "keys").write_text("good-key-0123456789abcdef\nshort secret\n")
    code, out = command("serve", ctx.demo_index, "--device", "cpu", "--port", 0, "--api-key-file", ctx.tmp / "keys")
    assert "short secret" not in out and "good-key" not in out
    return code, out


@row("serve/api-key-file-without-a-key", 1, "holds no key")
def _(ctx):
    (ctx.tmp / "keys").write_text("# to do\n")
    return command("serve", ctx.demo_index, "--device", "cpu", "--port", 0, "--api-key-file", ctx.tmp / "keys")


@row("http/key-required-and-missing", 401, "unauthorized: no Authorization header")
def _(ctx):
    from loqi_plugin_serve.access import read_api_keys
    from loqi_plugin_serve.app import Access, create_app

    (ctx.tmp / "keys").write_text("table-key-0123456789abcdef\n")
    server = ctx.kit.Server(create_app(ctx.engine, ctx.kit.LIMITS, Access(read_api_keys(ctx.tmp / "keys"))))
    try:
        status, answer = server.post("/v1/locate", ctx.kit.database_files(ctx.engine.index)[5].read_bytes(), "image/png")
    finally:
        server.stop()
    return status, f"{answer.get('code')}: {answer.get('error')}"


def _two_files(ctx: Ctx) -> tuple[bytes, str]:
    png = ctx.kit.database_files(ctx.engine.index)[5].read_bytes()
    part = lambda name: (f'--b\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'  # noqa: E731
                         "Content-Type: image/png\r\n\r\n").encode() + png + b"\r\n"  # fmt: skip
    return part("one") + part("two") + b"--b--\r\n", "multipart/form-data; boundary=b"


@row("http/multipart-with-two-files", 400, 'bad_multipart: the multipart body holds 2 files: send one, as the field "file"',
     answers_well)
def _(ctx):
    return post(ctx, "/v1/locate", *_two_files(ctx))


@row("http/multipart-of-many-parts", 400, "bad_multipart: the multipart body has more than 8 parts", answers_well)
def _(ctx):
    body = b"".join(f'--b\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n'.encode() for i in range(50))
    return post(ctx, "/v1/locate", body + b"--b--\r\n", "multipart/form-data; boundary=b")


@row("http/multipart-image-to-the-stream-endpoint", 400, "not_a_video", answers_well)
def _(ctx):
    png = ctx.kit.database_files(ctx.engine.index)[5].read_bytes()
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + png + b"\r\n--b--\r\n"
    return post(ctx, "/v1/locate/stream", body, "multipart/form-data; boundary=b")


@row("http/session-that-does-not-exist", 404, "unknown_session: no session 'nope'", answers_well)
def _(ctx):
    return post(ctx, "/v1/sessions/nope/locate", ctx.kit.database_files(ctx.engine.index)[5].read_bytes(), "image/png")


@row("http/session-settings-not-json", 400, "bad_session: the body is not JSON", answers_well)
def _(ctx):
    return post(ctx, "/v1/sessions", b"length=10", "application/json")


@row("http/session-of-a-huge-length", 400, "bad_session: length must be between 1 and 100", answers_well)
def _(ctx):
    return post(ctx, "/v1/sessions", b'{"length": 1000000}', "application/json")


@row("http/sessions-over-their-bound", 503, "too_many_sessions", answers_well)
def _(ctx):
    from loqi_plugin_serve.app import create_app
    from loqi_plugin_serve.sessions import SessionLimits

    server = ctx.kit.Server(create_app(ctx.engine, ctx.kit.LIMITS, session_limits=SessionLimits(max_sessions=1)))
    try:
        assert server.post("/v1/sessions", b"{}", "application/json")[0] == 201
        status, answer = server.post("/v1/sessions", b"{}", "application/json")
    finally:
        server.stop()
    return status, f"{answer.get('code')}: {answer.get('error')}"


# ---- the table ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_serve_bad_input(row: Row, tmp_path, demo_index, server, engine, kit, cache_dir) -> None:
    ctx = Ctx(tmp_path, demo_index, server, engine, kit, cache_dir)
    code, output = row.run(ctx)
    assert "Traceback" not in output, output
    assert code == row.expected, output
    assert row.fragment in output, output
    if row.id.split("/")[0] in ("build", "info", "serve") and code:
        errors = [line for line in output.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and errors[0] == output.rstrip().splitlines()[-1], output
    if row.keep is not None:
        row.keep(ctx)
