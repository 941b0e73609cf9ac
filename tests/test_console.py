"""Console output: every Lightning line once (through the root handler), no advertisements, no pytree noise."""

from __future__ import annotations

import logging
import warnings


def test_lightning_lines_appear_once_and_adverts_are_dropped(caplog, capfd):
    import lightning.pytorch  # noqa: F401  (installs Lightning's own console handler)
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from mammokit.utils.console import tidy_third_party_output

    assert logging.getLogger().handlers  # pytest's capture handler plays the CLI's root handler
    tidy_third_party_output()
    tidy_third_party_output()  # idempotent
    capfd.readouterr()
    with caplog.at_level(logging.INFO):
        rank_zero_info("GPU available: False")
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/project/x/)")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False"]  # once, and no advert
    assert "GPU available" not in capfd.readouterr().err  # Lightning's own handler no longer prints it again
    assert not [h for h in logging.getLogger("lightning").handlers if type(h) is logging.StreamHandler]


def test_pytree_deprecation_is_silenced():
    from mammokit.utils.console import tidy_third_party_output

    tidy_third_party_output()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        tidy_third_party_output()  # re-applies the filter inside this block
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("something a user can act on", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something a user can act on"]


# --- the CLI's console rule and log file (mammokit.utils.console.command_logging) -----------------------------------


def _emit_one_of_each() -> None:
    from mammokit.metrics.summary import OneClassWarning

    logging.getLogger("mammokit.engine.runner").info("stage 1 (stage1_top): 1 epoch(s)")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False, used: False")
    logging.getLogger("mammokit.cli.predict").info("2 image(s) predicted, 0 failed")
    logging.getLogger("mammokit.cli.predict").warning("mdb001: shrunk by 1.20x to fit")
    warnings.warn("Found 147 module(s) in eval mode at the start of training.", UserWarning, stacklevel=1)
    warnings.warn("AUC is undefined with only one class present", OneClassWarning, stacklevel=1)


def test_console_shows_results_and_warnings_and_the_log_file_has_everything(tmp_path, capsys):
    from mammokit.utils.console import LOG_FILE, command_logging

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with command_logging(verbose=False, folder=tmp_path) as log_path:
            (tmp_path / "predictions.csv").write_text("x\n")  # the command has written: the log joins it
            _emit_one_of_each()
    assert log_path == tmp_path / LOG_FILE
    assert capsys.readouterr().err.splitlines() == [
        "2 image(s) predicted, 0 failed",
        "WARNING: mdb001: shrunk by 1.20x to fit",
        "WARNING: AUC is undefined with only one class present",
    ]
    logged = log_path.read_text()
    for line in ("stage 1 (stage1_top)", "GPU available", "2 image(s) predicted", "shrunk by 1.20x", "eval mode"):
        assert line in logged
    assert "UserWarning: Found 147 module(s) in eval mode" in logged  # where a library warning came from
    # everything is put back: a later program (or test) sees the logging and warnings it had
    assert not [h for h in logging.getLogger().handlers if type(h).__module__ == "mammokit.utils.console"]
    assert warnings.showwarning is warnings._showwarning_orig  # type: ignore[attr-defined]


def test_verbose_shows_everything_on_the_console(capsys):
    from mammokit.utils.console import command_logging

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with command_logging(verbose=True, folder=None) as log_path:
            _emit_one_of_each()
            logging.getLogger("mammokit.engine.runner").debug("a debug line")
    err = capsys.readouterr().err
    assert log_path is None
    for line in ("stage 1 (stage1_top)", "GPU available", "eval mode", "INFO mammokit.cli.predict", "a debug line"):
        assert line in err


def test_log_file_waits_until_the_command_has_written_into_its_folder(tmp_path):
    """An output folder that must be empty (a patch set, a synthetic dataset) is not made non-empty by the log."""
    from mammokit.utils.console import LOG_FILE, command_logging

    out = tmp_path / "patches"
    out.mkdir()
    with command_logging(folder=out):
        logging.getLogger("mammokit.data.patches").info("sampling s10 patches")
        assert list(out.iterdir()) == []  # held, not written: the command's own emptiness check still passes
        (out / "patches.parquet").write_bytes(b"x")
        logging.getLogger("mammokit.data.patches").info("wrote 840 patches")
    messages = [line.split(": ", 1)[1] for line in (out / LOG_FILE).read_text().splitlines()]
    assert messages == ["sampling s10 patches", "wrote 840 patches"]  # the held line first, then the rest
    never = tmp_path / "never-created"
    with command_logging(folder=never):
        logging.getLogger("mammokit.cli.patches").warning("refused")
    assert not never.exists()  # a command refused before writing leaves no folder behind


def test_a_folder_named_once_the_settings_are_read_gets_the_lines_logged_before(tmp_path):
    """evaluate's default output folder is known only inside the command: `log_to_folder` then points the log there."""
    from mammokit.utils.console import LOG_FILE, command_logging, log_to_folder

    out = tmp_path / "eval" / "run-prep-test"
    with command_logging(folder=None, folder_later=True) as log_path:
        logging.getLogger("mammokit.engine.evaluate").info("predicting 44 images")
        out.mkdir(parents=True)
        (out / "metrics.json").write_text("{}")
        log_to_folder(out)
        log_to_folder(tmp_path)  # the first folder named stays
        logging.getLogger("mammokit.engine.evaluate").info("wrote the report")
    assert log_path is None
    messages = [line.split(": ", 1)[1] for line in (out / LOG_FILE).read_text().splitlines()]
    assert messages == ["predicting 44 images", "wrote the report"]
    assert not (tmp_path / LOG_FILE).exists()
    log_to_folder(tmp_path)  # no command running: nothing happens
    assert not (tmp_path / LOG_FILE).exists()
    with command_logging(folder=None):  # a command with no folder to come (serve): nothing is held
        from mammokit.utils import console

        assert console._active_log is None
        log_to_folder(tmp_path)
        logging.getLogger("mammokit.serve").info("request 1")
    assert not (tmp_path / LOG_FILE).exists()


def test_a_nested_command_keeps_the_outer_set_up_and_its_results_go_to_the_log(tmp_path, capsys):
    from mammokit.utils.console import LOG_FILE, command_logging, results_to_log

    (tmp_path / "started").write_text("")
    with command_logging(folder=tmp_path):
        print("[1/7] prepare ...")
        with results_to_log("prepare"), command_logging(folder=tmp_path / "inner") as inner_log:
            print("prepared 40/40 images")  # the step's own report
            logging.getLogger("mammokit.cli.prepare").info("a result line of the step")
            logging.getLogger("mammokit.data.sources").warning("2 patients have rows in both official splits")
        print("[1/7] prepare: done in 3 s")
    assert inner_log is None  # nested: no second console or log file
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["[1/7] prepare ...", "[1/7] prepare: done in 3 s"]
    assert captured.err.splitlines() == ["WARNING: 2 patients have rows in both official splits"]
    logged = (tmp_path / LOG_FILE).read_text()
    assert "INFO mammokit.cli.prepare: prepared 40/40 images" in logged and "a result line of the step" in logged


def test_training_bar_is_one_compact_line_and_only_on_a_terminal(monkeypatch):
    from mammokit.engine.progress import CompactProgressBar, training_progress_bar

    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert training_progress_bar(True) is None  # a pipe or CI log gets no bar (the log file has the epochs)

    class FakeTerminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", FakeTerminal())
    assert isinstance(training_progress_bar(True), CompactProgressBar)
    assert training_progress_bar(False) is None  # trainer.progress_bar: false
    bar = CompactProgressBar()
    logged = {"train_loss_step": 0.5, "train_loss_epoch": 0.6, "val_acc": 0.7, "val_auc": 0.8, "v_num": 3}
    monkeypatch.setattr(
        "lightning.pytorch.callbacks.TQDMProgressBar.get_metrics", lambda self, trainer, module: dict(logged)
    )
    assert bar.get_metrics(None, None) == {"loss": 0.5, "val_auc": 0.8}  # type: ignore[arg-type]
    assert bar.init_validation_tqdm().disable
