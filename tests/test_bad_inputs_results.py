"""Fail loud, lose nothing: one row per bad input or fault (issue 12, items 1-10 and 13; issue 22, items 7, 8, 13 and
the killed writers' leftovers).

Each row runs a command (through the CLI, or a child ``loqi`` process where plugins must load as installed)
or an API call, and states the exit code, a fragment of the message, and what else must hold: nothing
overwritten, nothing copied from outside the dataset, the lock released, the fallback used. No row may let
a Python traceback reach the user.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from loqi_core import build_model, encode, evaluate, load_dataset, parse_degradation, wrap_model
from loqi_core.cli import cli
from loqi_core.errors import LoqiError
from loqi_core.hooks.specs import DegradationSpec, LossSpec
from loqi_core.plugin import hookimpl
from loqi_core.testing import isolated_plugins
from loqi_core.testing.tiny import tiny_plugin, write_vpr_folder

QUICK = ["-s", "distill.batch_size=4", "-s", "distill.num_workers=0", "-s", "eval.num_workers=0", "-s", "eval.batch_size=8",
         "-s", "distill.lr=0.001", "-s", "eval.grid_queries=0", "-s", "distill.tensorboard=false"]  # fmt: skip


# ---- plugins with faults, registered next to the tiny method ------------------------------------------
def _poison(params):
    """A finite loss whose gradient is infinite: the weights turn NaN after one step, the loss never does."""

    def loss(batch):
        x = batch.student_desc.sum()
        return (x - x.detach()).abs().sqrt()

    return loss


def _raises(params):
    raise RuntimeError("no CUDA kernels for this loss")


def _raises_degradation(params):
    raise RuntimeError("libfoo.so not found")


@hookimpl
def loqi_register_losses(register):
    register(LossSpec("poison", _poison, description="NaN gradients"))
    register(LossSpec("boom", _raises, description="a factory that raises"))


@hookimpl
def loqi_register_degradations(register):
    register(DegradationSpec("boomdeg", r"boom\d+", _raises_degradation, description="a factory that raises"))


faulty_plugin = SimpleNamespace(loqi_register_losses=loqi_register_losses, loqi_register_degradations=loqi_register_degradations)


# ---- how a row is run ---------------------------------------------------------------------------------
def run_cli(args: list[str]) -> tuple[int, str]:
    """``loqi ARGS`` in this process; warnings are part of what the user sees; a stray exception is rc 99."""
    with isolated_plugins(("tiny", tiny_plugin), ("faulty", faulty_plugin)), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(cli, [str(a) for a in args])
    output = result.output + "".join(f"Warning: {w.message}\n" for w in caught if issubclass(w.category, UserWarning))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return 99, output + "".join(traceback.format_exception(result.exception))
    return result.exit_code, output


def run_api(call: Callable[[], object]) -> tuple[int, str]:
    """An API call: 0 when it returns, 1 with the message of a LoqiError, 99 with the traceback of anything else."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = call()
        except LoqiError as exc:
            return 1, str(exc)
        except Exception:
            return 99, traceback.format_exc()
    return 0, f"{value}\n" + "".join(f"Warning: {w.message}\n" for w in caught)


def run_loqi(args: list[str], site: Path, strict: str = "0") -> tuple[int, str]:
    """A real ``loqi`` process with the third-party distributions under ``site`` installed."""
    env = {**os.environ, "PYTHONPATH": str(site), "LOQI_STRICT_PLUGINS": strict}
    done = subprocess.run([sys.executable, "-m", "loqi_core.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    return done.returncode, done.stdout + done.stderr


def make_dist(site: Path, dist: str, module: str, source: str, entry_name: str) -> None:
    """What pip would install: a module and a dist-info with a ``loqi`` entry point."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[loqi]\n{entry_name} = {module}\n")


# ---- data -----------------------------------------------------------------------------------------------
def vpr(tmp: Path, name: str = "data", places: int = 8) -> Path:
    return write_vpr_folder(tmp / name, places=places)


def train_images(tmp: Path, n: int = 8) -> Path:
    folder = tmp / "train"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    return folder


def corrupt_jpeg(path: Path) -> Path:
    """A JPEG with valid start and end markers whose entropy-coded data is garbage: only decoding finds it."""
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(path, quality=90)
    data = bytearray(path.read_bytes())
    sos = data.find(b"\xff\xda")
    for i in range(sos + 20, len(data) - 10):
        data[i] = 0xFF if i % 2 else 0x00
    path.write_bytes(bytes(data))
    return path


def bomb_png(path: Path, width: int = 40000, height: int = 40000) -> Path:
    """A PNG whose header claims 1.6 gigapixels (a decompression bomb) in a few bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def model_args(tmp: Path) -> list:
    return ["--method", "tiny", "--weights", "random", "--degrade", "blur3", *QUICK]


def distill_args(tmp: Path, train: Path, out: str, steps: int = 2) -> list:
    return ["distill", *model_args(tmp), "--train", f"folder:{train}", "--max-steps", steps, "--out", tmp / out, "--device", "cpu"]


def eval_args(tmp: Path, dataset: str, out: str = "ev") -> list:
    return ["eval", *model_args(tmp), "--dataset", dataset, "--out", tmp / out, "--device", "cpu", "--cache-dir", tmp / "cache"]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- the table ------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One bad input: ``run(tmp)`` → (exit code, what the user saw); ``check(tmp)`` asserts the rest."""

    id: str
    run: Callable[[Path], tuple[int, str]]
    code: int
    fragment: str
    check: Callable[[Path], None] | None = None


CASES: list[Case] = []


def case(id: str, code: int, fragment: str, check: Callable[[Path], None] | None = None):
    def add(run: Callable[[Path], tuple[int, str]]):
        CASES.append(Case(id, run, code, fragment, check))
        return run

    return add


# 1. one writer per run directory -----------------------------------------------------------------------------
def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding the lock of ``folder`` until killed."""
    code = f"import time; from loqi_core.util.rundir import locked\nwith locked({str(folder)!r}):\n    print('held', flush=True); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _locked_run(tmp: Path, args: list) -> tuple[int, str]:
    (tmp / "out").mkdir()
    holder = _hold_lock(tmp / "out")
    try:
        return run_cli(args)
    finally:
        holder.kill()
        holder.wait()


def _nothing_written(tmp: Path) -> None:
    assert sorted(p.name for p in (tmp / "out").iterdir()) == [".loqi.lock"]  # only the holder's lock file


@case("lock/distill-second-writer", 1, "is in use by another loqi process (pid", _nothing_written)
def _(tmp):
    return _locked_run(tmp, distill_args(tmp, train_images(tmp), "out"))


@case("lock/eval-second-writer", 1, "is in use by another loqi process", _nothing_written)
def _(tmp):
    return _locked_run(tmp, eval_args(tmp, f"folder:{vpr(tmp)}", "out"))


def _lock_released(tmp: Path) -> None:
    assert not (tmp / "out" / ".loqi.lock").exists() and (tmp / "out" / "checkpoints" / "final").is_dir()


@case("lock/degrade-second-writer", 1, "is in use by another loqi process", _nothing_written)
def _(tmp):
    return _locked_run(tmp, ["degrade", "blur3", "--dataset", f"folder:{vpr(tmp)}", "--out", tmp / "out"])


@case("lock/stale-lock-taken-over", 0, "took over a stale lock (pid 999999", _lock_released)
def _(tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / ".loqi.lock").write_text("pid 999999 on elsewhere: loqi distill\n")  # its holder is gone
    return run_cli(distill_args(tmp, train_images(tmp), "out"))


# 2. test sets that share a name ---------------------------------------------------------------------------
def _two_keys(tmp: Path) -> None:
    metrics = json.loads((tmp / "ev" / "metrics.json").read_text())
    names = list(metrics["datasets"])
    assert len(names) == 2 and f"good [folder:{tmp / 'A' / 'good'}]" in names and f"good [folder:{tmp / 'B' / 'good'}]" in names
    assert metrics["datasets"][names[0]]["n_queries"] == 8 and metrics["datasets"][names[1]]["n_queries"] == 6
    assert len(list((tmp / "ev" / "predictions").glob("*.csv"))) == 2
    assert all(n in (tmp / "ev" / "results.md").read_text() for n in names)


@case("names/two-test-sets-called-good", 0, "run directory:", _two_keys)
def _(tmp):
    vpr(tmp / "A", "good", places=8), vpr(tmp / "B", "good", places=6)
    return run_cli(eval_args(tmp, f"folder:{tmp / 'A' / 'good'},folder:{tmp / 'B' / 'good'}"))


@case("names/same-test-set-twice", 1, "lists folder:")
def _(tmp):
    root = vpr(tmp)
    return run_cli(eval_args(tmp, f"folder:{root},folder:{root}"))


# 3. loqi degrade --out copies nothing from outside the dataset ----------------------------------------------
def _linked_dataset(tmp: Path) -> Path:
    root = vpr(tmp / "inside")
    (root / "ground_truth.csv").write_text("query,positives\n")
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not part of the dataset")
    (tmp / "top_secret.txt").write_text("nor is this")
    query = next((root / "images/test/queries").iterdir())
    shutil.move(query, outside / query.name)
    query.symlink_to(outside / query.name)  # an image linked from outside the dataset
    (root / "images/test/notes.txt").symlink_to(outside / "secret.txt")  # a side file that is a link out
    return root


def _only_inside_copied(tmp: Path) -> None:
    copied = sorted(p.name for p in (tmp / "copy").rglob("*") if p.is_file() and p.suffix != ".png")
    assert copied == ["ground_truth.csv", "loqi-degrade.json", "loqi-degrade.progress.jsonl", "run.log"], copied
    assert len(list((tmp / "copy" / "images/test/queries").glob("*.png"))) == 8  # the linked image, degraded, in place


@case("degrade/symlink-out-of-the-dataset", 0, "wrote 16 images", _only_inside_copied)
def _(tmp):
    root = _linked_dataset(tmp)
    return run_cli(["degrade", "blur3", "--dataset", f"folder:{root}", "--out", tmp / "copy"])


# 4. clashing plugins name both distributions and keep the built-in ----------------------------------------
JPEG_IMPOSTOR = """
    from loqi_core.plugin import hookimpl
    from loqi_core.hooks.specs import DegradationSpec
    @hookimpl
    def loqi_register_degradations(register):
        register(DegradationSpec("jpegx", r"jpegx(?P<q>\\d+)", lambda p: None, description="impostor"))
"""
DEMO_IMPOSTOR = """
    from loqi_core.plugin import hookimpl
    from loqi_core.hooks.specs import DatasetSpec
    @hookimpl
    def loqi_register_datasets(register):
        register(DatasetSpec("demo", test=lambda p: None, description="impostor"))
"""
EVAL_IMPOSTOR = """
    import click
    from loqi_core.plugin import hookimpl
    @hookimpl
    def loqi_register_commands(cli):
        @cli.command("eval")
        def hijack():
            "A command that would replace loqi eval."
            click.echo("HIJACKED")
"""


@case("plugins/entry-point-named-jpeg", 0, 'Two plugins use the entry-point name "jpeg": dist loqi-plugin-jpeg and dist evil-jpeg')
def _(tmp):
    make_dist(tmp / "site", "evil-jpeg", "thirdparty_jpeg", JPEG_IMPOSTOR, "jpeg")
    code, out = run_loqi(["plugins"], tmp / "site")
    rows = {tuple(line.split()[:2]): line for line in out.splitlines() if line.startswith("jpeg ")}
    assert "degradation: jpeg" in rows["jpeg", "loqi-plugin-jpeg"] and "FAILED" in rows["jpeg", "evil-jpeg"]
    return code, out


@case("plugins/jpeg10-still-the-builtin", 0, "jpeg10")
def _(tmp):
    make_dist(tmp / "site", "evil-jpeg", "thirdparty_jpeg", JPEG_IMPOSTOR, "jpeg")
    return run_loqi(["degrade", "--report", "jpeg10", "--dataset", "demo", "--limit", "2"], tmp / "site")


@case("plugins/dataset-named-demo", 0, 'dataset "demo" is registered twice: by plugin "demo" (dist loqi-plugin-demo')
def _(tmp):
    make_dist(tmp / "site", "evil-demo", "thirdparty_demo", DEMO_IMPOSTOR, "evildemo")
    code, out = run_loqi(["plugins"], tmp / "site")
    demo = next(line for line in out.splitlines() if line.startswith("demo "))
    assert "loqi-plugin-demo" in demo and "dataset: demo" in demo and "FAILED" not in demo
    assert "FAILED" in next(line for line in out.splitlines() if line.startswith("evildemo "))
    return code, out


@case("plugins/command-named-eval", 0, 'command "eval" is already provided by dist loqi-core; kept that one, not dist evil-eval')
def _(tmp):
    make_dist(tmp / "site", "evil-eval", "thirdparty_eval", EVAL_IMPOSTOR, "evileval")
    code, out = run_loqi(["eval", "--help"], tmp / "site")
    assert "HIJACKED" not in out and "Recall@N of one model" in out
    return code, out


@case("plugins/command-clash-strict", 1, "Error: Error loading plugin \"evileval\" (dist evil-eval 1.0)")
def _(tmp):
    make_dist(tmp / "site", "evil-eval", "thirdparty_eval", EVAL_IMPOSTOR, "evileval")
    return run_loqi(["--help"], tmp / "site", strict="1")


@case("plugins/commands-added-twice-in-one-process", 0, "failed=[] commands=['anyloc', ")
def _(tmp):
    import click

    from loqi_core.hooks.manager import Plugins

    def call():
        plugins = Plugins()
        plugins.load_defaults()
        plugins.load_entry_points()
        group = click.Group(commands={"eval": click.Command("eval")})
        plugins.add_commands(group, strict=True)
        plugins.add_commands(group, strict=True)  # as tests do: the same plugin re-adding its commands is no clash
        failed = [p.name for p in plugins.info.values() if p.error]
        return f"failed={failed} commands={sorted(n for n in group.commands if n != 'eval')}"

    return run_api(call)


# 5. non-finite weights are never saved, non-finite descriptors never searched -------------------------------
def _no_checkpoint(tmp: Path) -> None:
    assert not (tmp / "out" / "checkpoints").exists() or not list((tmp / "out" / "checkpoints").iterdir())


@case("nonfinite/final-not-saved", 1, "the student after step 1 is not saved: its weights hold NaN/Inf", _no_checkpoint)
def _(tmp):
    return run_cli([*distill_args(tmp, train_images(tmp), "out", steps=1), "--loss", "poison"])


@case("nonfinite/no-poisoned-last-good", 1, "is not saved: its weights hold NaN/Inf (5 tensor(s), e.g. encoder.3.weight, encoder.3.bias, encoder.6.weight). Last good checkpoint: none", _no_checkpoint)
def _(tmp):
    return run_cli([*distill_args(tmp, train_images(tmp), "out", steps=3), "--loss", "poison", "-s", "distill.checkpoint_every=1"])


@case("nonfinite/diverged-but-finite-weights-not-saved", 1, "its descriptors of the last batch are NaN/Inf", _no_checkpoint)
def _(tmp):
    args = distill_args(tmp, train_images(tmp), "out", steps=1)
    args[args.index("distill.lr=0.001")] = "distill.lr=1e10"  # the largest lr allowed: finite weights of ~1e10 whose outputs overflow
    return run_cli(args)


def _nan_checkpoint(tmp: Path) -> Path:
    import torch

    from loqi_core.models.checkpoint import save_checkpoint
    from loqi_core.models.model import build_model

    with isolated_plugins(("tiny", tiny_plugin), entry_points=False):
        model = build_model("tiny", weights="random")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    save_checkpoint(model, tmp / "nan")
    return tmp / "nan"


@case("nonfinite/eval-refuses-nan-descriptors", 1, "returned NaN or Inf descriptors for 8 of 8 images")
def _(tmp):
    args = eval_args(tmp, f"folder:{vpr(tmp)}")
    args[args.index("--weights") + 1] = _nan_checkpoint(tmp)
    return run_cli(args)


# 6. checkpoint digests, fallback to the newest intact checkpoint -------------------------------------------
def _trained(tmp: Path) -> Path:
    """A 3-step run with a checkpoint after every step; returns its final weights' bytes stored aside. The student is
    the last step's weights (no moving average), so final/ holds the whole training state these cases damage."""
    code, out = run_cli([*distill_args(tmp, train_images(tmp), "out", steps=3), "-s", "distill.checkpoint_every=1",
                         "-s", "distill.keep_checkpoints=5", "-s", "distill.ema=null"])  # fmt: skip
    assert code == 0, out
    shutil.copy(tmp / "out/checkpoints/final/model.safetensors", tmp / "final_before.safetensors")
    return tmp / "out/checkpoints"


def _resume(tmp: Path) -> tuple[int, str]:
    return run_cli(["distill", "--resume", tmp / "out", "--device", "cpu"])


def _same_final(tmp: Path) -> None:
    """The fallback retrained the lost steps to the very same weights, and every checkpoint is intact again."""
    from loqi_core.models.checkpoint import verify
    from loqi_core.training.state import REQUIRED

    assert (tmp / "out/checkpoints/final/model.safetensors").read_bytes() == (tmp / "final_before.safetensors").read_bytes()
    assert verify(tmp / "out/checkpoints/final", REQUIRED) is None


def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@case("digest/bit-flip-in-final-weights", 0, "model.safetensors does not match its sha256", _same_final)
def _(tmp):
    _flip_bit(_trained(tmp) / "final/model.safetensors")
    return _resume(tmp)


@case("digest/truncated-optimizer-falls-back-two", 0, "resuming from the newest intact one", _same_final)
def _(tmp):
    ckpts = _trained(tmp)
    _flip_bit(ckpts / "final/optimizer.safetensors")
    opt = ckpts / "step-00000002/optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[:100])
    code, out = _resume(tmp)
    assert "step-00000001" in out
    return code, out


@case("digest/garbled-train-state", 0, "train_state.json has", _same_final)
def _(tmp):
    (_trained(tmp) / "final/train_state.json").write_text("{not json")
    return _resume(tmp)


def _edit_digests(folder: Path, change: Callable[[dict], None]) -> None:
    record = json.loads((folder / "digests.json").read_text())
    change(record)
    (folder / "digests.json").write_text(json.dumps(record))


@case("digest/record-names-a-file-outside-the-checkpoint", 0, "lists '../../secret.txt', which is not a file of the checkpoint", _same_final)
def _(tmp):
    (tmp / "secret.txt").write_text("not the checkpoint's")
    secret = {"size": 20, "sha256": "0" * 64}
    _edit_digests(_trained(tmp) / "final", lambda r: r["files"].__setitem__("../../secret.txt", secret))
    return _resume(tmp)


@case("digest/record-files-a-list", 0, "digests.json is unreadable (its files are not a mapping", _same_final)
def _(tmp):
    _edit_digests(_trained(tmp) / "final", lambda r: r.__setitem__("files", ["model.safetensors"]))
    return _resume(tmp)


@case("digest/every-checkpoint-damaged", 1, "no intact checkpoint in")
def _(tmp):
    for c in _trained(tmp).iterdir():
        (c / "model.json").write_text("garbage")
    return _resume(tmp)


@case("digest/eval-of-damaged-checkpoint", 1, "model.json has")
def _(tmp):
    final = _trained(tmp) / "final"
    (final / "model.json").write_text("{")
    args = eval_args(tmp, f"folder:{vpr(tmp)}")
    args[args.index("--weights") + 1] = final
    return run_cli(args)


@case("digest/truncated-bare-safetensors", 1, "not a complete safetensors file")
def _(tmp):
    folder = _nan_checkpoint(tmp)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    args = eval_args(tmp, f"folder:{vpr(tmp)}")
    args[args.index("--weights") + 1] = folder
    return run_cli(args)


@case("digest/garbled-bare-model-json", 1, "unreadable checkpoint description")
def _(tmp):
    folder = _nan_checkpoint(tmp)
    (folder / "model.json").write_text("[[[")
    args = eval_args(tmp, f"folder:{vpr(tmp)}")
    args[args.index("--weights") + 1] = folder
    return run_cli(args)


# 7. 16-bit and float images -----------------------------------------------------------------------------------
def _mid_grey(path: Path) -> tuple[int, str]:
    from loqi_core.data.images import read_image

    def call():
        image = read_image(path)
        assert image.dtype.is_floating_point is False and image.shape == (3, 32, 64)
        return f"mean {image.float().mean().item():.1f} max {int(image.max())}"

    return run_api(call)


@case("images/16-bit-png", 0, "mean 127.5 max 255")
def _(tmp):
    Image.fromarray(np.linspace(0, 65535, 32 * 64).reshape(32, 64).astype(np.uint16)).save(tmp / "g16.png")
    return _mid_grey(tmp / "g16.png")


@case("images/float-tiff-0-1", 0, "mean 127.5 max 255")
def _(tmp):
    Image.fromarray(np.linspace(0, 1, 32 * 64).reshape(32, 64).astype(np.float32), mode="F").save(tmp / "f.tif")
    return _mid_grey(tmp / "f.tif")


@case("images/float-tiff-unknown-range", 1, "F image with values in [-5, 1000]")
def _(tmp):
    Image.fromarray(np.linspace(-5, 1000, 32 * 64).reshape(32, 64).astype(np.float32), mode="F").save(tmp / "f.tif")
    return _mid_grey(tmp / "f.tif")


@case("images/16-bit-png-in-training", 0, "uint8 128")
def _(tmp):
    from loqi_core.training.data import load_image

    Image.fromarray(np.full((32, 64), 32896, dtype=np.uint16)).save(tmp / "g16.png")
    return run_api(lambda: f"{str(load_image(tmp / 'g16.png').dtype).removeprefix('torch.')} {int(load_image(tmp / 'g16.png').max())}")


# 8. skip_bad: every unreadable image, in workers too, and the list is written -------------------------------
def _bad_test_set(tmp: Path) -> Path:
    root = vpr(tmp)
    corrupt_jpeg(root / "images/test/database/@500300.00@4000000.00@33@T@@@@@0003@.jpg")
    return root


@case("skip_bad/eval-corrupt-jpeg-in-worker", 1, "broken data stream when reading image file")
def _(tmp):
    return run_cli([*eval_args(tmp, f"folder:{_bad_test_set(tmp)}"), "-s", "eval.num_workers=1"])


def _eval_skipped(tmp: Path) -> None:
    listed = (tmp / "ev" / "skipped_data.txt").read_text()
    assert "@0003@.jpg: broken data stream" in listed and "bomb" in listed
    metrics = json.loads((tmp / "ev" / "metrics.json").read_text())["datasets"]["data"]
    assert (metrics["n_database"], metrics["n_queries"]) == (8, 8)  # 9 files each, one unreadable


@case("skip_bad/eval-corrupt-jpeg-and-bomb-skipped", 0, "unreadable file(s) left out (skip_bad), listed in", _eval_skipped)
def _(tmp):
    root = _bad_test_set(tmp)
    bomb_png(root / "images/test/queries/@500000.00@4000000.00@33@T@@@@@bomb@.png")
    return run_cli([*eval_args(tmp, f"folder:{root}?skip_bad=true"), "-s", "eval.num_workers=1"])


def _strip_args(tmp: Path, params: str = "") -> list:
    """lite0-gem (short side resized to 128) on a test set with a 20000×1 query: 128×2,560,000 once preprocessed."""
    root = vpr(tmp)
    Image.new("RGB", (20000, 1), (90, 90, 90)).save(root / "images/test/queries/@500000.00@4000000.00@33@T@@@@@strip@.png")
    args = eval_args(tmp, f"folder:{root}{params}")
    args[args.index("tiny")] = "lite0-gem"
    return args


@case("images/eval-strip-the-model-would-enlarge", 1, "would enlarge it to 2560000×128 = 327,680,000 pixels")
def _(tmp):
    return run_cli(_strip_args(tmp))


def _strip_skipped(tmp: Path) -> None:
    assert "@strip@.png: cannot encode image" in (tmp / "ev" / "skipped_data.txt").read_text()
    metrics = json.loads((tmp / "ev" / "metrics.json").read_text())["datasets"]["data"]
    assert (metrics["n_database"], metrics["n_queries"]) == (8, 8)  # the strip alone left out


@case("skip_bad/eval-strip-left-out", 0, "could not be decoded or preprocessed (skip_bad)", _strip_skipped)
def _(tmp):
    return run_cli(_strip_args(tmp, "?skip_bad=true"))


@case("skip_bad/train-corrupt-jpeg-in-worker", 1, "add ?skip_bad=true to the training set")
def _(tmp):
    train = train_images(tmp)
    corrupt_jpeg(train / "img99.jpg")
    return run_cli([*distill_args(tmp, train, "out"), "-s", "distill.num_workers=1", "-s", "distill.batch_size=9"])


def _train_skipped(tmp: Path) -> None:
    assert "img99.jpg: broken data stream" in (tmp / "out" / "skipped_train.txt").read_text()
    assert (tmp / "out/checkpoints/final").is_dir()


@case("skip_bad/train-corrupt-jpeg-skipped", 0, "left out 1 unreadable training image(s) (skip_bad), listed in", _train_skipped)
def _(tmp):
    train = train_images(tmp)
    corrupt_jpeg(train / "img99.jpg")
    args = distill_args(tmp, train, "out")
    args[args.index("--train") + 1] = f"folder:{train}?skip_bad=true"
    return run_cli([*args, "-s", "distill.num_workers=1", "-s", "distill.batch_size=9"])


# 9. refusals that keep results ----------------------------------------------------------------------------------
def _run_args(tmp: Path, steps: int) -> list:
    root = tmp / "data" if (tmp / "data").exists() else vpr(tmp)
    return ["run", *model_args(tmp), "--train", f"folder:{train_images(tmp)}", "--test", f"folder:{root}",
            "--max-steps", steps, "--out", tmp / "run", "--device", "cpu", "--cache-dir", tmp / "cache"]  # fmt: skip


def _run_untouched(tmp: Path) -> None:
    now = {k: v for k, v in files(tmp / "run").items() if k != "run.log"}
    before = {k: bytes.fromhex(v) for k, v in json.loads((tmp / "before.json").read_text()).items()}
    assert now == before


def _snapshot(folder: Path, into: Path) -> None:
    into.write_text(json.dumps({k: v.hex() for k, v in files(folder).items() if k != "run.log"}))


@case("refuse/run-again-with-fewer-steps", 1, "was trained with distill.max_steps=2; started again on the same --out", _run_untouched)
def _(tmp):
    code, out = run_cli(_run_args(tmp, 2))
    assert code == 0, out
    _snapshot(tmp / "run", tmp / "before.json")
    return run_cli(_run_args(tmp, 1))


def _eval_dir_untouched(tmp: Path) -> None:
    before = {k: bytes.fromhex(v) for k, v in json.loads((tmp / "before.json").read_text()).items()}
    assert {k: v for k, v in files(tmp / "ev").items() if k != "run.log"} == before


@case("refuse/distill-resume-on-eval-dir", 1, "not of a training run", _eval_dir_untouched)
def _(tmp):
    code, out = run_cli(eval_args(tmp, f"folder:{vpr(tmp)}"))
    assert code == 0, out
    _snapshot(tmp / "ev", tmp / "before.json")
    return run_cli(["distill", "--resume", tmp / "ev", "--device", "cpu"])


def _dataset_unchanged(tmp: Path) -> None:
    assert sorted(p.name for p in (tmp / "data").iterdir()) == ["images"]


@case("refuse/degrade-out-inside-dataset", 1, "lies inside the dataset", _dataset_unchanged)
def _(tmp):
    root = vpr(tmp)
    return run_cli(["degrade", "blur3", "--dataset", f"folder:{root}", "--out", root / "blurred"])


@case("refuse/report-out-over-a-run", 1, "is a run directory (metrics.json, config.json)", _eval_dir_untouched)
def _(tmp):
    code, out = run_cli(eval_args(tmp, f"folder:{vpr(tmp)}"))
    assert code == 0, out
    _snapshot(tmp / "ev", tmp / "before.json")
    return run_cli(["report", tmp / "ev", "--out", tmp / "ev"])


# 10. silent settings ----------------------------------------------------------------------------------------------
@case("settings/zero-weight-loss", 1, 'term "0*mse" in "0*mse" has weight 0')
def _(tmp):
    return run_cli([*distill_args(tmp, train_images(tmp), "out"), "--loss", "0*mse"])


@case("settings/empty-loss", 1, "loss: the expression is empty")
def _(tmp):
    return run_cli([*distill_args(tmp, train_images(tmp), "out"), "--loss", ""])


@case("settings/empty-loss-in-run", 1, "loss: the expression is empty")
def _(tmp):
    return run_cli([*_run_args(tmp, 1), "--loss", ""])


@case("settings/positive-radius-inf", 1, "eval.positive_radius: Input should be a finite number")
def _(tmp):
    return run_cli([*eval_args(tmp, f"folder:{vpr(tmp)}"), "--positive-radius", "inf"])


def _strict(value: str) -> Callable[[Path], tuple[int, str]]:
    def run(tmp: Path) -> tuple[int, str]:
        from loqi_core.hooks.manager import strict_from_env

        old = os.environ.get("LOQI_STRICT_PLUGINS")
        os.environ["LOQI_STRICT_PLUGINS"] = value
        try:
            return run_api(lambda: f"strict={strict_from_env()}")
        finally:
            os.environ["LOQI_STRICT_PLUGINS"] = old if old is not None else ""

    return run


for _value, _expected in [("False", False), ("off", False), ("0", False), ("no", False), ("", False),
                          ("true", True), ("1", True), ("ON", True), ("yes", True)]:  # fmt: skip
    case(f"settings/strict-plugins-{_value or 'unset'}", 0, f"strict={_expected}")(_strict(_value))
case("settings/strict-plugins-maybe", 1, 'LOQI_STRICT_PLUGINS="maybe": expected 1, true, yes, on or 0, false, no, off')(_strict("maybe"))


@case("settings/strict-plugins-false-keeps-loqi-usable", 0, "FAILED: ZeroDivisionError")
def _(tmp):
    make_dist(tmp / "site", "broken-one", "thirdparty_div", "1/0", "broken")
    return run_loqi(["plugins"], tmp / "site", strict="False")


# 13. faults inside plugins name the plugin and its distribution ------------------------------------------------
@case("plugin-faults/raising-loss-factory", 1, 'loss "boom" of plugin "faulty" (dist test-faulty 0) failed to build: RuntimeError')
def _(tmp):
    return run_cli([*distill_args(tmp, train_images(tmp), "out"), "--loss", "boom"])


@case("plugin-faults/raising-degradation-factory", 1, 'degradation "boomdeg" of plugin "faulty" (dist test-faulty 0) failed to build')
def _(tmp):
    args = eval_args(tmp, f"folder:{vpr(tmp)}")
    args[args.index("--degrade") + 1] = "boom3"
    return run_cli(args)


RAISING_COMMANDS = """
    from loqi_core.plugin import hookimpl
    @hookimpl
    def loqi_register_commands(cli):
        raise RuntimeError("click 7 API")
"""


@case("plugin-faults/raising-register-commands", 0, "loqi_register_commands raised RuntimeError: click 7 API")
def _(tmp):
    make_dist(tmp / "site", "cmd-broken", "thirdparty_cmd", RAISING_COMMANDS, "cmdbroken")
    code, out = run_loqi(["--help"], tmp / "site")
    assert "eval" in out and "Error loading plugin \"cmdbroken\" (dist cmd-broken 1.0)" in out
    return code, out


@case("plugin-faults/sys-exit-at-import", 0, "FAILED: SystemExit: 3")
def _(tmp):
    make_dist(tmp / "site", "exits", "thirdparty_exit", "import sys\nsys.exit(3)\n", "exits")
    code, out = run_loqi(["plugins"], tmp / "site")
    code_help, out_help = run_loqi(["--help"], tmp / "site")
    assert code_help == 0 and "Commands:" in out_help
    return code, out


# 14. issue 22: the Python API checks its arguments as the CLI does -------------------------------------------------
def _tiny(tmp: Path):
    import torch

    torch.manual_seed(0)
    return build_model("tiny", weights="random")


class _Returns:
    """A module whose output breaks the wrapped-module interface in one way."""

    def __new__(cls, kind: str):
        import torch

        class Module(torch.nn.Module):
            def forward(self, x):
                b = x.shape[0]
                return {"3d": torch.ones(b, 8, 2), "short": torch.ones(b - 1, 8), "list": [torch.ones(b, 8), torch.ones(b, 8)],
                        "nan": torch.full((b, 8), float("nan"))}[kind]  # fmt: skip

        return Module()


def _api(call: Callable[[Path], object]) -> Callable[[Path], tuple[int, str]]:
    def run(tmp: Path) -> tuple[int, str]:
        with isolated_plugins(("tiny", tiny_plugin), entry_points=False):
            return run_api(lambda: call(tmp))

    return run


def _quick(**kw):
    return {"num_workers": 0, "device": "cpu", "cache": False, **kw}


for _id, _fragment, _call in [
    ("evaluate-degrade-an-int", 'degradation: give a spec such as "jpeg10"',
     lambda tmp: evaluate(_tiny(tmp), f"folder:{vpr(tmp)}", 5, **_quick())),
    ("evaluate-dataset-an-int", 'dataset: give a name such as "demo" or "folder:PATH", a pathlib.Path',
     lambda tmp: evaluate(_tiny(tmp), 5, **_quick())),
    ("evaluate-seed-negative", "seed: Input should be greater than or equal to 0",
     lambda tmp: evaluate(_tiny(tmp), f"folder:{vpr(tmp)}", "none", seed=-1, **_quick())),
    ("parse_degradation-None", "degradation: give a spec such as", lambda tmp: parse_degradation(None)),
    ("load_dataset-None", 'dataset: give a name such as "demo" or "folder:PATH", not NoneType',
     lambda tmp: load_dataset(None)),
    ("encode-images-an-int", "images: give a folder, an image file or a list of image files, not int",
     lambda tmp: encode(_tiny(tmp), 5, **_quick())),
    ("wrap_model-returns-B-by-8-by-2", "returned descriptors of shape (4, 8, 2) for 4 images: expected a tensor 4×D",
     lambda tmp: encode(wrap_model(_Returns("3d"), size=(16, 16)), vpr(tmp, places=4) / "images/test/database", **_quick())),
    ("wrap_model-returns-one-row-too-few", "returned descriptors of shape (3, 8) for 4 images",
     lambda tmp: encode(wrap_model(_Returns("short"), size=(16, 16)), vpr(tmp, places=4) / "images/test/database", **_quick())),
    ("wrap_model-returns-a-list", "returned descriptors of a list for 4 images",
     lambda tmp: encode(wrap_model(_Returns("list"), size=(16, 16)), vpr(tmp, places=4) / "images/test/database", **_quick())),
    ("encode-refuses-nan-as-evaluate-does", "returned NaN or Inf descriptors for 4 of 4 images",
     lambda tmp: encode(wrap_model(_Returns("nan"), size=(16, 16)), vpr(tmp, places=4) / "images/test/database", **_quick())),
    ("build_model-image-size-0-by-0", "image_size (0, 0): each side must be between 8 and 8192 pixels",
     lambda tmp: build_model("tiny", weights="random", image_size=(0, 0))),
    ("build_model-unknown-protocol", 'protocol: "papr" is not one of upstream, paper',
     lambda tmp: build_model("tiny", weights="random", protocol="papr")),
]:  # fmt: skip
    case(f"api/{_id}", 1, _fragment)(_api(_call))


# 15. issue 22: --protocol paper rewrites every form of the last stage, and every --eval-degrade level -----------------
def _resolved_degrade(expected_run: str, expected_levels: list[str]) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        config = json.loads((tmp / "ev" / "config.json").read_text())
        assert (config["degrade"], config["eval"]["degrade"]) == (expected_run, expected_levels)

    return check


@case("protocol/paper-range-gets-q95-like-its-values", 0, "res[18:22]p-q95",
      _resolved_degrade("res[18:22]p-q95", ["res20p-q95", "any(res[18:22]p-q95,jpeg10)", "res270p+qp40"]))
def _(tmp):
    args = eval_args(tmp, f"folder:{vpr(tmp, places=4)}")
    args[args.index("--degrade") + 1] = "res[18:22]p"
    return run_cli([*args, "--protocol", "paper", "--eval-degrade", "res20p,any(res[18:22]p,jpeg10),res270p+qp40"])


# 16. issue 22 (also): what a killed extraction left in the cache is removed by the next one; a live writer's stays ---
def _dead_and_live(tmp: Path) -> tuple[str, str, subprocess.Popen]:
    from loqi_core.util.rundir import writer_tag

    host = writer_tag().split("@")[1]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    return f"{gone.pid}@{host}", f"{sleeper.pid}@{host}", sleeper


def _leftovers(tmp: Path) -> None:
    entry = next((tmp / "cache/eval/descriptors").iterdir())
    assert json.loads((tmp / "left.json").read_text())["left"] == sorted(
        p.name for p in entry.iterdir() if p.name.endswith((".partial.npy", ".tmp"))
    )


@case("leftovers/a-killed-extraction-in-the-cache", 0, "R@1", _leftovers)
def _(tmp):
    root = vpr(tmp, places=4)
    args = eval_args(tmp, f"folder:{root}")
    args[args.index("--degrade") + 1] = "none"
    code, out = run_cli(args)
    assert code == 0, out
    dead, live, sleeper = _dead_and_live(tmp)
    try:
        for entry in (tmp / "cache/eval/descriptors").iterdir():
            for name in (f"descriptors.{dead}.partial.npy", f"shard_00000.bin.{dead}.tmp", f"descriptors.{live}.partial.npy"):
                (entry / name).write_bytes(b"half a file")
        (tmp / "left.json").write_text(json.dumps({"left": [f"descriptors.{live}.partial.npy"]}))
        shutil.rmtree(tmp / "ev")
        return run_cli(args)
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    code, output = case.run(tmp_path)
    assert "Traceback" not in output, output
    assert code == case.code, output
    assert case.fragment in output, output
    if code == 1 and "Error:" in output:  # one error line, not a cascade
        assert sum(line.startswith("Error:") for line in output.splitlines()) == 1, output
    if case.check is not None:
        case.check(tmp_path)


def test_first_party_list_is_every_shipped_plugin() -> None:
    """The built-ins that win every clash are exactly the plugin packages this repository ships."""
    from loqi_core.hooks.manager import FIRST_PARTY

    shipped = {p.name for p in (Path(__file__).parents[1] / "plugins").iterdir() if p.name.startswith("loqi-plugin-")}
    assert FIRST_PARTY == shipped
