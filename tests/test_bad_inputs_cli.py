"""Bad inputs and faults, one table row each: the command, its exit code, the one line it must print, and that no
traceback reaches the user, no run directory is left by an early error, no partial file is left by a failed write,
and a late error is also in run.log (issue 12, items 11, 12, 14, 15, 16; issue 22, items 4, 6 and 12)."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from click.testing import CliRunner

from loqi_core.cli import cli
from loqi_core.testing import isolated_plugins
from loqi_core.testing.tiny import tiny_plugin, write_vpr_folder

FAST = "-s eval.num_workers=0 -s eval.batch_size=4 -s eval.grid_queries=0"
EVAL = "eval --method tiny --degrade blur3 --dataset folder:{root} --out {out} --cache-dir {cache} " + FAST
TRAIN = "--train folder:{root}/images/test --max-steps 1 -s distill.num_workers=0 -s distill.batch_size=4"
DISTILL = "distill --method tiny --weights random --degrade blur3 --out {out} " + TRAIN
RUN = "run --method tinyw --degrade blur3 --test folder:{root} --out {out} --cache-dir {cache} " + TRAIN + " " + FAST
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_SKIP = "runs as root, where chmod does not stop writes (the row under a regular file covers this case)"


@dataclass
class Case:
    id: str
    args: str
    rc: int
    fragment: str
    setup: Callable[[Any, Path], None] | None = None
    """(monkeypatch, tmp_path) -> None: the fault to inject before the command runs."""
    late: bool = False
    """The error comes after validation: the run directory exists and its run.log must hold the error."""
    absent: tuple[str, ...] = ()
    """Text that must not appear in the output."""
    check: Callable[[Path], None] | None = None
    skip: str | None = None


# ---- faults ---------------------------------------------------------------------------------------------


def _chmod_readonly(name: str) -> Callable[[Any, Path], None]:
    def setup(monkeypatch, tmp: Path) -> None:
        (tmp / name).mkdir()
        (tmp / name).chmod(0o500)

    return setup


def _full_disk_at_write(name_part: str) -> Callable[[Any, Path], None]:
    """The lowest whole-file write (loqi_core.util.fileio._write) writes half, then the disk is full."""

    def setup(monkeypatch, tmp: Path) -> None:
        from loqi_core.util import fileio

        real = fileio._write

        def write(f, data):
            if name_part in Path(f.name).name:
                real(f, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(f, data)

        monkeypatch.setattr(fileio, "_write", write)

    return setup


def _full_disk_in_checkpoint(name: str) -> Callable[[Any, Path], None]:
    """safetensors reports a full disk as text in a SafetensorError, after writing part of the file ``name``."""

    def setup(monkeypatch, tmp: Path) -> None:
        import safetensors.torch
        from safetensors import SafetensorError

        from loqi_core.training import state

        real = safetensors.torch.save_file

        def save_file(tensors, filename, metadata=None):
            if name in str(filename):
                Path(filename).write_bytes(b"partial")
                raise SafetensorError(f'Error while serializing: I/O error: No space left on device (os error 28) at path "{filename}"')
            return real(tensors, filename, metadata=metadata)

        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
        monkeypatch.setattr(state, "save_file", save_file)

    return setup


def _full_disk_for_descriptors(monkeypatch, tmp: Path) -> None:
    def fallocate(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", fallocate)


def _full_disk_for_metrics(monkeypatch, tmp: Path) -> None:
    """metrics.json's write fails as on a full disk (the OSError of write() names no file), half-way through."""
    from loqi_core.util import fileio

    real = fileio._write

    def write(f, data):
        if "metrics.json" in str(getattr(f, "name", "")):
            real(f, data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(f, data)

    monkeypatch.setattr(fileio, "_write", write)


def _full_disk_for_train_log(monkeypatch, tmp: Path) -> None:
    from loqi_core.training import engine as distill

    def write(self, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(distill._CsvLog, "write", write)


def _corrupt_query(monkeypatch, tmp: Path) -> None:
    query = sorted((tmp / "data" / "images" / "test" / "queries").iterdir())[0]
    query.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)


# ---- checks after a row ---------------------------------------------------------------------------------


def _no_partial_files(tmp: Path) -> None:
    left = [p for p in tmp.rglob("*") if p.name.endswith((".tmp", ".partial.npy")) or p.name.startswith(".tmp-")]
    assert not left, f"partial files left behind: {left}"


def _no_eval_work(tmp: Path) -> None:
    _no_partial_files(tmp)
    assert not (tmp / "cache" / "eval" / "descriptors").exists(), "work was done before the error"


def _threads_recorded(tmp: Path) -> None:
    assert json.loads((tmp / "out" / "config.json").read_text())["threads"] == 1


def _default_threads_recorded(tmp: Path) -> None:
    assert json.loads((tmp / "out" / "config.json").read_text())["threads"] == torch.get_num_threads()


def _evaluated(tmp: Path) -> None:
    datasets = json.loads((tmp / "out" / "metrics.json").read_text())["datasets"]
    assert [set(d["rows"]["pretrained_degraded"]) for d in datasets.values()] == [{"R@1", "R@2", "R@5", "R@10"}]


def _rename_database_image(label: str) -> Callable[[Any, Path], None]:
    """The first database image of the test set gets ``label`` in its name (a line break, bytes that are not UTF-8)."""

    def setup(monkeypatch, tmp: Path) -> None:
        first = sorted((tmp / "data/images/test/database").iterdir())[0]
        first.rename(first.with_name(first.name.replace("@.png", f"{label}@.png")))

    return setup


CUDA = torch.cuda.is_available()

CASES = [
    # item 11: config values, validated exactly as the flags are, before any work
    Case("yaml-top-level-list", EVAL + " --weights random -c {tmp}/list.yaml", 1, "list.yaml: the top level must be a mapping"),
    Case("yaml-top-level-scalar", EVAL + " --weights random -c {tmp}/scalar.yaml", 1, "not a single value (42)"),
    Case("config-recall-empty", EVAL + " --weights random -c {tmp}/recall.yaml", 1, "eval.recall: give at least one N"),
    Case("set-recall-zero", EVAL + " --weights random -s eval.recall=[0]", 1, "eval.recall: every N must be at least 1, got [0]"),
    Case("set-recall-negative", EVAL + " --weights random -s eval.recall=[-5]", 1, "eval.recall: every N must be at least 1, got [-5]"),
    Case("flag-recall-zero", EVAL + " --weights random --recall 0", 1, "--recall: every N must be at least 1, got [0]"),
    Case("image-size-zero", EVAL + " --weights random --image-size 0 0", 1, "model.image_size: each side must be between 8 and 8192"),
    Case("image-size-negative", EVAL + " --weights random --image-size -3 5", 1, "model.image_size: each side must be between"),
    Case("image-size-absurd", EVAL + " --weights random --image-size 100000 100000", 1, "got [100000, 100000]"),
    Case("set-image-size-absurd", EVAL + " --weights random -s model.image_size=[100000,100000]", 1, "model.image_size"),
    Case("device-banana", EVAL + " --weights random --device banana", 1, 'device: "banana" is not a device'),
    Case("device-cuda-without-cuda", EVAL + " --weights random --device cuda", 1, "CUDA is not available",
         skip="this machine has CUDA" if CUDA else None),
    Case("device-cuda-99", EVAL + " --weights random --device cuda:99", 1, 'device: "cuda:99" asked for'),
    Case("distill-device-cuda-99", DISTILL + " --device cuda:99", 1, 'device: "cuda:99" asked for'),
    Case("seed-2**66", EVAL + f" --weights random --seed {2**66}", 1, "seed: Input should be less than or equal to"),
    Case("seed-negative", EVAL + " --weights random --seed -1", 1, "seed: Input should be greater than or equal to 0"),
    Case("lr-1e40", DISTILL + " --lr 1e40", 1, "distill.lr: Input should be less than or equal to"),
    Case("lr-zero", DISTILL + " --lr 0", 1, "distill.lr: Input should be greater than 0"),
    Case("lr-nan", DISTILL + " -s distill.lr=.nan", 1, "distill.lr: Input should be a finite number"),
    Case("threads-zero", EVAL + " --weights random -s threads=0", 1, "threads: Input should be greater than or equal to 1"),
    Case("database-weights-missing", EVAL + " --weights random --database-weights {tmp}/nope.safetensors", 1,
         "no loqi checkpoint at"),
    Case("dataset-unknown-user", EVAL.replace("folder:{root}", "folder:~nonuser_loqi/x") + " --weights random", 1,
         'cannot expand "~nonuser_loqi": no such user'),
    # item 12: unwritable or full disk: one line naming the path and the cause, no partial file left
    Case("out-under-a-file", EVAL.replace("{out}", "{tmp}/afile/run") + " --weights random", 1,
         "afile/run: Not a directory"),
    Case("cache-under-a-file", EVAL.replace("{cache}", "{tmp}/afile/cache") + " --weights random", 1,
         "evaluation cache"),
    Case("out-read-only", EVAL.replace("{out}", "{tmp}/ro/run") + " --weights random", 1, "ro/run: Permission denied",
         setup=_chmod_readonly("ro"), skip=ROOT_SKIP if ROOT else None),
    Case("cache-read-only", EVAL.replace("{cache}", "{tmp}/ro/cache") + " --weights random", 1, "Permission denied",
         setup=_chmod_readonly("ro"), skip=ROOT_SKIP if ROOT else None),
    Case("disk-full-checkpoint", DISTILL + " --max-steps 2 -s distill.checkpoint_every=1", 1,
         "model.safetensors: No space left on device", setup=_full_disk_in_checkpoint("model.safetensors"), late=True,
         check=_no_partial_files),
    Case("disk-full-checkpoint-optimizer", DISTILL + " --max-steps 2 -s distill.checkpoint_every=1", 1,
         "optimizer.safetensors: No space left on device", setup=_full_disk_in_checkpoint("optimizer.safetensors"),
         late=True, check=_no_partial_files),
    Case("disk-full-cache-shard", EVAL + " --weights random", 1, "shard_00000.bin: No space left on device",
         setup=_full_disk_at_write("shard_"), late=True, check=_no_partial_files),
    Case("disk-full-cache-shard-in-loader-worker", EVAL + " --weights random -s eval.num_workers=1", 1,
         "shard_00000.bin: No space left on device", setup=_full_disk_at_write("shard_"), late=True, check=_no_partial_files),
    Case("corrupt-image-in-loader-worker", EVAL.replace("folder:{root}", "'folder:{root}?check=none'")
         + " --weights random -s eval.num_workers=1", 1, "cannot read image", setup=_corrupt_query, late=True),
    Case("disk-full-cache-key", EVAL + " --weights random", 1, "key.json: No space left on device",
         setup=_full_disk_at_write("key.json"), late=True, check=_no_partial_files),
    Case("disk-full-descriptors", EVAL + " --weights random --degrade none", 1, ".partial.npy: No space left on device",
         setup=_full_disk_for_descriptors, late=True, check=_no_partial_files),
    Case("disk-full-eval-output", EVAL + " --weights random", 1, "{out}/metrics.json: No space left on device",
         setup=_full_disk_for_metrics, late=True, check=_no_partial_files),
    Case("disk-full-train-log", DISTILL, 1, "{out}: No space left on device", setup=_full_disk_for_train_log,
         late=True, check=_no_partial_files),
    # item 14: a "?" in a path, an empty degradation term, plural of loss, no advice to load pickles unsafely
    Case("path-with-question-mark-quoted", EVAL.replace("folder:{root}", "'folder:\"{qroot}\"'") + " --weights random",
         0, "R@1", check=_evaluated),
    Case("path-with-question-mark-quoted-with-options",
         EVAL.replace("folder:{root}", "'folder:\"{qroot}\"?check=full'") + " --weights random", 0, "R@1"),
    Case("path-with-question-mark-unquoted", EVAL.replace("{root}", "{qroot}") + " --weights random", 1,
         'quote the path: folder:"PATH"'),
    Case("degrade-double-plus", EVAL + " --weights random --degrade blur3++blur3", 1, 'empty term after "blur3" (term 2)'),
    Case("degrade-leading-plus", EVAL + " --weights random --degrade +blur3", 1, "empty term at the start"),
    Case("unknown-loss-plural", DISTILL + " --loss bogus", 1, "Installed losses: ", absent=("losss",)),
    Case("unsafe-pickle", EVAL + " --weights {tmp}/evil.pth", 1, "holds the Python object",
         absent=("weights_only=False", "weights_only` set to `False")),
    # issue 22, item 6: an empty degradation level is refused, never evaluated clean under a degraded name
    Case("eval-degrade-empty-level", EVAL + " --weights random --eval-degrade blur3,,blur5", 1,
         "--eval-degrade \"blur3,,blur5\": level 2 of ['blur3', '', 'blur5'] is empty"),
    Case("eval-degrade-trailing-comma", EVAL + " --weights random --eval-degrade blur3,", 1, "level 2 of ['blur3', ''] is empty"),
    Case("eval-degrade-empty-in-config", EVAL + " --weights random -s 'eval.degrade=[blur3, \" \"]'", 1,
         "eval.degrade: level 2 of ['blur3', ' '] is empty"),
    Case("degrade-empty", EVAL.replace("--degrade blur3", "--degrade ''") + " --weights random", 1,
         'degrade: the degradation is empty: write "none" for the images as they are'),
    # issue 22, item 12: specs bounded in length and nesting, weights and range ends finite, all before any work
    Case("degrade-300-nested-choices", EVAL.replace("--degrade blur3", "--degrade '" + "any(" * 300 + "blur3" + ")" * 300 + "'")
         + " --weights random", 1, "characters, more than the 1000 a spec may have"),
    Case("degrade-20-nested-choices", EVAL.replace("--degrade blur3", "--degrade '" + "any(" * 20 + "blur3" + ")" * 20 + "'")
         + " --weights random", 1, "choices and ranges nested 20 deep, more than the 8 a spec may have"),
    Case("degrade-weight-1e400", EVAL.replace("--degrade blur3", "--degrade 'any(1" + "0" * 400 + "*blur3,1*blur5)'")
         + " --weights random", 1, "the weights of a choice must be finite numbers (their sum is inf)"),
    Case("degrade-range-end-1e400", EVAL.replace("--degrade blur3", "--degrade 'blur[3:1" + "0" * 400 + "]'")
         + " --weights random", 1, "an end is too large to be a number"),
    # issue 22, item 4: name lists (descriptors, pairs) hold one name per line: a name that breaks a line is refused
    Case("save-descriptors-name-with-newline", EVAL + " --weights random --save-descriptors", 1,
         "holds a line break ('\\n'); name lists (descriptors/*.txt, pairs) hold one name per line",
         setup=_rename_database_image("line\nbreak")),
    Case("pairs-name-with-u2028", EVAL + " --weights random --pairs 2", 1, "holds a line break ('\\u2028')",
         setup=_rename_database_image("para\u2028graph")),
    Case("save-descriptors-name-not-utf8", EVAL + " --weights random --save-descriptors", 1, "is not UTF-8",
         setup=_rename_database_image(os.fsdecode(b"caf\xe9"))),
    Case("eval-name-not-utf8-without-name-lists", EVAL + " --weights random", 0, "R@1", check=_evaluated,
         setup=_rename_database_image(os.fsdecode(b"caf\xe9"))),
    # item 15: missing official weights found before any work; the thread count is recorded
    Case("eval-missing-official-weights", EVAL.replace("--method tiny", "--method tinyw"), 1, "are not in the cache",
         check=_no_eval_work),
    Case("run-missing-official-weights", RUN, 1, "are not in the cache", check=_no_eval_work),
    Case("threads-recorded", EVAL + " --weights random -s threads=1", 0, "R@1", check=_threads_recorded),
    Case("default-threads-recorded", EVAL + " --weights random", 0, "R@1", check=_default_threads_recorded),
]


def _weights_plugin(tmp: Path):
    from loqi_core.plugin import hookimpl
    from loqi_core.hooks.specs import AggregatorSpec, EncoderSpec, Preprocess, WeightsSpec
    from loqi_core.testing.tiny import GeMParams, TinyEncoderParams, _encoder, _gem

    weights = WeightsSpec("official", "tinyw-missing.pth", url=(tmp / "nowhere.pth").as_uri())

    class P:
        loqi_register_encoders = hookimpl(lambda register: register(EncoderSpec(
            "tinyw", lambda p: _encoder(TinyEncoderParams()), weights=(weights,), preprocess=Preprocess(size=(32, 32)))))
        loqi_register_aggregators = hookimpl(lambda register: register(AggregatorSpec(
            "tinyw", lambda p, in_channels: _gem(GeMParams(), in_channels))))  # fmt: skip

    return P


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LOQI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LOQI_OFFLINE", "1")
    monkeypatch.delenv("LOQI_DEBUG", raising=False)
    root = write_vpr_folder(tmp_path / "data", places=4)
    shutil.copytree(root, tmp_path / "q?x=1")
    (tmp_path / "afile").write_text("a regular file where a folder is expected")
    (tmp_path / "list.yaml").write_text("- eval\n- recall\n")
    (tmp_path / "scalar.yaml").write_text("42\n")
    (tmp_path / "recall.yaml").write_text("eval:\n  recall: []\n")

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with isolated_plugins(("tiny", tiny_plugin), ("tinyw", _weights_plugin(tmp_path)), entry_points=False):
        yield tmp_path, root


def _fill(text: str, tmp: Path, root: Path) -> str:
    return text.format(tmp=tmp, root=root, qroot=tmp / "q?x=1", out=tmp / "out", cache=tmp / "cache")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input(case: Case, env, monkeypatch):
    if case.skip:
        pytest.skip(case.skip)
    tmp, root = env
    if case.setup is not None:
        case.setup(monkeypatch, tmp)
    result = CliRunner().invoke(cli, shlex.split(_fill(case.args, tmp, root)))
    fragment = _fill(case.fragment, tmp, root)
    output = result.output
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == case.rc, output
    for text in case.absent:
        assert text not in output
    if case.rc:
        errors = [line for line in output.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and fragment in errors[0], output
        assert errors[0] == output.rstrip().splitlines()[-1], "the error must be the last line"
        if case.late:
            log = (tmp / "out" / "run.log").read_text()
            assert errors[0] in log, f"run.log lacks the error:\n{log}"
        else:
            assert not (tmp / "out").exists(), "an early error left a run directory behind"
    else:
        assert fragment in output
    if case.check is not None:
        case.check(tmp)


def test_debug_lets_the_traceback_through(env, monkeypatch):
    tmp, root = env
    monkeypatch.setenv("LOQI_DEBUG", "1")
    result = CliRunner().invoke(cli, shlex.split(_fill(CASES[0].args, tmp, root)))
    assert result.exit_code == 1 and type(result.exception).__name__ == "ConfigError"


def test_os_errors_are_one_line_without_traceback_from_the_console_script(tmp_path):
    (tmp_path / "afile").write_text("x")
    env = {**os.environ, "LOQI_CACHE": str(tmp_path / "cache"), "LOQI_DEBUG": ""}
    out = tmp_path / "afile" / "run"
    result = subprocess.run(
        [sys.executable, "-m", "loqi_core.cli", "eval", "--method", "lite0-gem", "--weights", "random",
         "--dataset", "demo", "--out", str(out)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"Error: {out}: Not a directory (a part of this path is a file, not a folder)"


def test_quoted_dataset_paths_split_as_written():
    from loqi_core.commands.options import split_list
    from loqi_core.data.datasets import split_options
    from loqi_core.errors import ConfigError

    assert split_list('demo, folder:"/d/a,b"?check=full,msls') == ["demo", 'folder:"/d/a,b"?check=full', "msls"]
    assert split_options('folder:"/d/what?x=1"?check=full') == ("folder:/d/what?x=1", {"check": "full"})
    assert split_options('folder:"/d/what?x=1"') == ("folder:/d/what?x=1", {})
    with pytest.raises(ConfigError, match="no closing"):
        split_options('folder:"/d/what?x=1')
    with pytest.raises(ConfigError, match='only \\?key=value options may follow the closing quote, not "x"'):
        split_options('folder:"/d"x')
