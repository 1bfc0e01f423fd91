"""Logging setup (mmfusion/logs.py): JSON lines, text lines, level filtering, request ids, the CLI's flags."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from mmfusion import logs
from mmfusion.cli.main import build_parser, main


def json_lines(text: str) -> list[dict]:
    """Every line of `text` parsed as JSON (fails on a line that is not)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_lines_parse_and_carry_time_level_logger_message_request_id_and_extras(capsys):
    log = logging.getLogger("mmfusion.test.json")
    with logs.configured("debug", "json"):
        log.info("plain %s", "message")
        with logs.request_id_bound("req-1"):
            log.warning("inside a call", extra={"model": "tiny", "items": 3})
        try:
            raise ValueError("broken")
        except ValueError:
            log.exception("failed")
    lines = json_lines(capsys.readouterr().err)
    assert [line["message"] for line in lines] == ["plain message", "inside a call", "failed"]
    plain, inside, failed = lines
    assert set(plain) == {"time", "level", "logger", "message"}  # no request id outside a call
    assert plain["level"] == "INFO" and plain["logger"] == "mmfusion.test.json"
    assert plain["time"].endswith("Z") and "T" in plain["time"]
    assert inside["request_id"] == "req-1" and inside["model"] == "tiny" and inside["items"] == 3
    assert inside["level"] == "WARNING"
    assert failed["level"] == "ERROR" and "ValueError: broken" in failed["exception"]


def test_level_filtering_drops_records_below_the_level(capsys):
    log = logging.getLogger("mmfusion.test.levels")
    with logs.configured("warning", "json"):
        log.debug("debug")
        log.info("info")
        log.warning("warning")
        log.error("error")
    assert [line["message"] for line in json_lines(capsys.readouterr().err)] == ["warning", "error"]
    with logs.configured("debug", "text"):
        log.debug("now shown")
    assert "DEBUG mmfusion.test.levels: now shown" in capsys.readouterr().err


def test_text_lines_name_the_request_id_and_the_root_logger_is_restored(capsys):
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    with logs.configured("info", "text") as handler:
        assert handler in root.handlers and root.level == logging.INFO
        with logs.request_id_bound("abc-123"):
            logging.getLogger("mmfusion.test.text").info("hello")
        with logs.configured("info", "json"):  # nested: ours replaced, never stacked
            assert sum(getattr(h, "mmfusion", False) for h in root.handlers) == 1
        assert handler in root.handlers
    assert root.level == level and root.handlers == handlers
    line = capsys.readouterr().err.strip()
    assert line.endswith("INFO mmfusion.test.text: hello request_id=abc-123")


def test_the_request_id_is_per_thread_and_unbound_after_the_block():
    seen = {}

    def worker():
        seen["thread"] = logs.current_request_id()

    with logs.request_id_bound("outer"):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert logs.current_request_id() == "outer"
    assert seen["thread"] is None and logs.current_request_id() is None


def test_settings_come_from_flags_then_environment_then_the_commands_default():
    assert logs.settings(None, None, None, environ={}) is None  # nothing asked: Python's defaults stay
    assert logs.settings(None, None, "info", environ={}) == (logging.INFO, "text")
    assert logs.settings("debug", None, "info", environ={"MMFUSION_LOG_LEVEL": "error"}) == (logging.DEBUG, "text")
    environ = {"MMFUSION_LOG_LEVEL": "ERROR", "MMFUSION_LOG_FORMAT": "JSON"}
    assert logs.settings(None, None, None, environ=environ) == (logging.ERROR, "json")
    with pytest.raises(ValueError, match="MMFUSION_LOG_LEVEL 'loud': expected one of debug, info, warning"):
        logs.settings(None, None, None, environ={"MMFUSION_LOG_LEVEL": "loud"})
    with pytest.raises(ValueError, match="MMFUSION_LOG_FORMAT 'xml': expected one of text, json"):
        logs.settings(None, None, "info", environ={"MMFUSION_LOG_FORMAT": "xml"})


def test_cli_flags_before_or_after_the_command():
    parser = build_parser()
    args = parser.parse_args(["--log-level", "DEBUG", "serve"])
    assert (args.log_level, args.log_format) == ("debug", None)
    args = parser.parse_args(["--log-level", "debug", "serve", "--log-level", "error", "--log-format", "json"])
    assert (args.log_level, args.log_format) == ("error", "json")  # the command's own flag wins
    args = parser.parse_args(["--log-format", "json", "list"])
    assert (args.log_level, args.log_format) == (None, "json")
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--log-format", "xml"])


def test_a_command_logs_in_json_when_asked(monkeypatch, capsys):
    from mmfusion.serving import server

    def fake_serve(*args, **kwargs):
        logging.getLogger("mmfusion.serving.server").info("serving nothing")
        logging.getLogger("mmfusion.serving.server").debug("hidden at info")
        return 0

    monkeypatch.setattr(server, "serve", fake_serve)
    assert main(["serve", "--port", "0", "--log-format", "json"]) == 0
    lines = json_lines(capsys.readouterr().err)
    assert [(line["level"], line["message"]) for line in lines] == [("INFO", "serving nothing")]
    assert main(["serve", "--port", "0", "--no-require-manifest", "--log-format", "json"]) == 0
    warning = json_lines(capsys.readouterr().err)[0]  # the user's warning is a JSON line too
    assert warning["level"] == "WARNING" and "load UNVERIFIED" in warning["message"]
    monkeypatch.setenv("MMFUSION_LOG_LEVEL", "loud")
    assert main(["serve", "--port", "0"]) == 2
    assert "mmfusion: error: MMFUSION_LOG_LEVEL 'loud': expected one of" in capsys.readouterr().err
