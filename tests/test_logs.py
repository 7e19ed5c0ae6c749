"""Observable runs: run.log through stdlib logging (argv, config digest, stages, warnings, the error), timings in
metrics.json, and the progress helper's modes (bar, lines without carriage returns, off)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import sys
import warnings

import pytest
from click.testing import CliRunner

from loqi_core.cli import cli
from loqi_core.errors import ConfigError, DataError
from loqi_core.testing import isolated_plugins
from loqi_core.testing.tiny import tiny_plugin, write_vpr_folder
from loqi_core.util import logs, progress
from loqi_core.util.logs import RunLog, command_of

QUICK = ["-s", "distill.batch_size=4", "-s", "distill.num_workers=0", "-s", "eval.num_workers=0",
         "-s", "eval.batch_size=4", "-s", "eval.grid_queries=0"]  # fmt: skip


# ---- progress ----------------------------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_mode_follows_stderr_and_the_switch(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress.progress_mode() == "lines"
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert progress.progress_mode() == "bar"
    for value, mode in [("0", "off"), ("off", "off"), ("1", "bar"), ("lines", "lines"), ("auto", "bar")]:
        monkeypatch.setenv(progress.ENV, value)
        assert progress.progress_mode() == mode, value
    monkeypatch.setenv(progress.ENV, "sometimes")
    with pytest.raises(ConfigError, match='LOQI_PROGRESS="sometimes"'):
        progress.progress_mode()


def test_progress_mode_in_a_notebook_is_a_bar(monkeypatch):
    """In a Jupyter kernel stderr is no terminal, yet tqdm.auto resolves to its widget: bars, not lines."""
    from tqdm import autonotebook

    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(autonotebook, "tqdm", type("NotebookTqdm", (), {}))
    assert progress.progress_mode() == "bar"


def test_progress_bar_off_and_disabled_print_nothing(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv(progress.ENV, "0")
    assert sum(progress.progress(range(50), desc="off")) == sum(range(50))  # iterates all the same
    monkeypatch.setenv(progress.ENV, "lines")
    with progress.progress(total=10, desc="rank 1", disable=True) as bar:
        bar.update(10)
    assert err.getvalue() == ""


def test_progress_bar_mode_is_tqdm_auto(monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.setenv(progress.ENV, "1")
    err = io.StringIO()
    with progress.progress(total=3, desc="forced", file=err) as bar:
        assert isinstance(bar, tqdm)
        bar.update(3)
    assert "forced" in err.getvalue() and "\r" in err.getvalue()  # a redrawn bar, as on a terminal


def test_progress_lines_have_no_carriage_return(monkeypatch):
    monkeypatch.setenv(progress.ENV, "lines")
    monkeypatch.setattr(progress, "LINE_GAP", 0.0)  # every 10 % step prints
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(progress.progress(range(100), desc="encode", unit="img")) == list(range(100))
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue()
    assert len(lines) == 10 and lines[0].startswith("encode:  10% 10/100") and lines[-1].startswith("encode: 100% 100/100")
    assert all("img/s" in line for line in lines)


def test_progress_lines_of_a_short_loop_print_one_line(monkeypatch):
    monkeypatch.setenv(progress.ENV, "lines")
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with progress.progress(total=40, desc="steps", unit="step", initial=10) as bar:
        for _ in range(30):
            bar.update(1)
        bar.set_postfix({"loss": "0.25"})
    with progress.progress(desc="frames", unit="frame") as bar:  # no total known
        bar.update(7)
    lines = err.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("steps: 100% 40/40") and lines[0].endswith("loss=0.25]")
    assert lines[1].startswith("frames: 7frame [")


def test_progress_lines_every_interval_without_a_total(monkeypatch):
    monkeypatch.setenv(progress.ENV, "lines")
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with progress.progress(desc="slicing", unit="frame") as bar:
        for _ in range(3):
            bar.update(1)
    assert err.getvalue().splitlines()[:3] == [line for line in err.getvalue().splitlines() if "slicing" in line][:3]
    assert len(err.getvalue().splitlines()) == 3  # one per update; close adds none for an unchanged count


# ---- RunLog ------------------------------------------------------------------------------------------------------


def test_run_log_collects_before_the_directory_exists(tmp_path):
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as shown, RunLog("eval") as runlog:
        warnings.simplefilter("always")
        warnings.warn("an early warning, before the run directory", UserWarning)
        logging.getLogger("loqi.cache").warning("cache file x is corrupt; rebuilding it")
        with runlog.stage("setup"):
            pass
        out.mkdir()
        runlog.open(out, '{"seed": 0}')
        logs.log.info("what the command printed")
    text = (out / "run.log").read_text()
    lines = text.splitlines()
    assert "== loqi eval" in lines[0] and "argv: " in lines[1]
    assert "UserWarning: an early warning, before the run directory" in text
    assert "cache file x is corrupt" in text and "stage setup: " in text and "what the command printed" in text
    digest = hashlib.sha256(b'{"seed": 0}').hexdigest()
    assert f"config: sha256 {digest} ({out / 'config.json'})" in text
    assert [str(w.message) for w in shown] == ["an early warning, before the run directory"]  # still shown
    assert command_of(out) == "eval"


def test_run_log_leaves_the_terminal_as_it_was(tmp_path):
    """In a process that configured no logging (the CLI): the same warnings on stderr with and without a run log
    (``warnings.warn`` ones and ``loqi.*`` loggers' ones), and nothing of what goes to run.log alone."""
    script = (
        "import logging, pathlib, sys, warnings\n"
        "from loqi_core.util.logs import RunLog\n"
        "def emit(tag):\n"
        "    warnings.warn(f'warned {tag}', UserWarning)\n"
        "    logging.getLogger('loqi.cache').warning(f'logged {tag}')\n"
        "    logging.getLogger('loqi.run').info(f'printed {tag}')\n"
        "emit('before')\n"
        "with RunLog('eval') as r:\n"
        "    r.open(pathlib.Path(sys.argv[1]))\n"
        "    emit('during')\n"
        "emit('after')\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    err = [line for line in done.stderr.splitlines() if "warnings.warn(" not in line]
    assert [line.split("UserWarning: ")[-1] for line in err] == [
        "warned before", "logged before", "warned during", "logged during", "warned after", "logged after"
    ]
    text = (tmp_path / "run.log").read_text()
    assert all(f"{what} during" in text for what in ("warned", "logged", "printed")) and "before" not in text


def test_run_log_without_a_directory_writes_nothing_and_detaches(tmp_path):
    root = logging.getLogger("loqi")
    level, handlers, shown = root.level, list(root.handlers), warnings.showwarning
    with pytest.raises(DataError):
        with RunLog("run"):
            assert warnings.showwarning is not shown and root.getEffectiveLevel() <= logging.INFO
            raise DataError("refused before the run directory")
    assert root.level == level and root.handlers == handlers and warnings.showwarning is shown
    assert list(tmp_path.iterdir()) == []


def test_run_log_logs_the_error_once_and_the_stages(tmp_path):
    with pytest.raises(DataError):
        with RunLog("distill") as runlog:
            runlog.open(tmp_path)
            with runlog.stage("training"):
                pass
            try:
                raise DataError("img.jpg: truncated")
            except DataError as exc:
                runlog.error(exc)
                raise
    text = (tmp_path / "run.log").read_text()
    assert text.count("Error: img.jpg: truncated") == 1 and "ERROR" in text
    t = runlog.timings("cpu")
    assert t["device"] == "cpu" and set(t["stages_s"]) == {"training"} and t["total_s"] >= t["stages_s"]["training"]


def test_nested_run_logs(tmp_path):
    """`loqi run` trains in distill/: that training run has its own run.log; the run's log gets its warnings too,
    but not its header or stages."""
    (tmp_path / "distill").mkdir()
    with pytest.warns(UserWarning, match="left out"), RunLog("run") as outer:
        outer.open(tmp_path)
        with RunLog("distill") as inner:
            inner.open(tmp_path / "distill")
            with inner.stage("training"):
                warnings.warn("a training image was left out", UserWarning)
        logs.log.info("after the training")
    top, sub = (tmp_path / "run.log").read_text(), (tmp_path / "distill" / "run.log").read_text()
    assert top.count("a training image was left out") == 1 and sub.count("a training image was left out") == 1
    assert "== loqi distill" not in top and "stage training" not in top and "after the training" not in sub
    assert command_of(tmp_path) == "run" and command_of(tmp_path / "distill") == "distill"


# ---- through the command line ------------------------------------------------------------------------------------


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)  # CliRunner's stderr is no terminal: progress comes as lines
    root = write_vpr_folder(tmp_path / "data", places=8)
    with isolated_plugins(("tiny", tiny_plugin)):
        yield tmp_path, root


def _invoke(monkeypatch, args: list[str]):
    monkeypatch.setattr(sys, "argv", ["loqi", *args])
    return CliRunner().invoke(cli, args)


def test_run_log_and_timings_of_loqi_run(env, monkeypatch):
    tmp, root = env
    out = tmp / "run"
    out.mkdir()
    (out / ".loqi.lock").write_text("pid 999999 on elsewhere: loqi run\n")  # a stale lock: taken over with a warning
    args = ["run", "--method", "tiny", "--degrade", "blur3", "--weights", "random", "--train", f"folder:{root}/images/test",
            "--test", f"folder:{root}", "--max-steps", "2", "--out", str(out), "--cache-dir", str(tmp / "cache"), *QUICK]  # fmt: skip
    with pytest.warns(UserWarning, match="took over a stale lock"):
        result = _invoke(monkeypatch, args)
    assert result.exit_code == 0, result.output
    text = (out / "run.log").read_text()
    assert "\r" not in text and "\r" not in result.output
    assert "argv: loqi run --method tiny --degrade blur3" in text
    digest = hashlib.sha256((out / "config.json").read_bytes()).hexdigest()
    assert f"config: sha256 {digest} ({out / 'config.json'})" in text
    assert "UserWarning: " in text and "took over a stale lock" in text
    for stage in ("setup", "preflight", "teacher clean eval", "teacher degraded eval", "distillation", "student eval", "writing"):
        assert f"stage {stage}: " in text, stage
    assert "2 steps (" in text  # the distillation summary
    assert "Distilled, blur3" in text  # the results, as printed

    metrics = json.loads((out / "metrics.json").read_text())
    timings = metrics["timings"]
    assert timings["device"] == "cpu"
    assert {"setup", "preflight", "teacher clean eval", "teacher degraded eval", "distillation", "student eval",
            "writing"} <= set(timings["stages_s"])  # fmt: skip
    assert all(v >= 0 for v in timings["stages_s"].values())
    assert sum(timings["stages_s"].values()) <= timings["total_s"] + 0.01
    assert {"schema", "run", "datasets"} <= set(metrics)  # the keys other code reads are still there

    sub = (out / "distill" / "run.log").read_text()
    assert "== loqi distill" in sub and "stage training: " in sub and "config: sha256 " in sub
    assert any(": 100% " in line and "step/s" in line for line in result.output.splitlines())  # progress as lines


def test_run_log_of_a_failed_eval_holds_the_error(env, monkeypatch):
    tmp, root = env
    out = tmp / "ev"
    args = ["eval", "--method", "tiny", "--degrade", "blur3", "--weights", "random", "--dataset", f"folder:{root}",
            "--out", str(out), "--cache-dir", str(tmp / "cache"), *QUICK]  # fmt: skip
    from loqi_core.report import results as report

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report.Report, "write", full_disk)
    result = _invoke(monkeypatch, args)
    assert result.exit_code == 1
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("Error: ") and "No space left on device" in error
    text = (out / "run.log").read_text()
    assert error in text and "stage eval: " in text and "== loqi eval" in text
    assert "Traceback" not in text


def test_distill_writes_its_run_log_and_resumes(env, monkeypatch):
    tmp, root = env
    out = tmp / "d"
    base = ["distill", "--method", "tiny", "--degrade", "blur3", "--weights", "random", "--train", f"folder:{root}/images/test",
            "--out", str(out), "--device", "cpu", *QUICK]  # fmt: skip
    from loqi_core.training import engine as distillation

    def ctrl_c(self, done, target):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(distillation._Trainer, "_save", ctrl_c)
        killed = _invoke(monkeypatch, [*base, "--max-steps", "2"])
    assert killed.exit_code != 0
    assert "Interrupted (Ctrl-C); start the same command again to resume" in (out / "run.log").read_text()
    for steps in ("2", "3"):  # the run.log of a training run does not make --resume take it for a `loqi run`
        resumed = _invoke(monkeypatch, ["distill", "--resume", str(out), "--max-steps", steps])
        assert resumed.exit_code == 0, resumed.output
    text = (out / "run.log").read_text()
    assert text.count("== loqi distill") == 3 and "argv: loqi distill --resume" in text
    assert "2 steps (" in text and "3 steps (" in text and "stage training: " in text
    assert command_of(out) == "distill"


def test_degrade_out_writes_a_run_log(env, monkeypatch):
    tmp, root = env
    out = tmp / "copy"
    result = _invoke(monkeypatch, ["degrade", "blur3", "--dataset", f"folder:{root}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = (out / "run.log").read_text()
    assert "== loqi degrade" in text and "argv: loqi degrade blur3" in text and '"spec": "blur3"' in text
    assert "stage degrading: " in text and "wrote 16 images" in text and "\r" not in text
