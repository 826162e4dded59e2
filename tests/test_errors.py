"""Exit codes: exits_on_error and run_command follow run_summary.exit_code_for."""

from __future__ import annotations

import json

import pytest
from omegaconf.errors import ConfigKeyError

from seqchurn.data.schema import InputError
from seqchurn.errors import exits_on_error, run_command
from seqchurn.utils.run_summary import exit_code_for

FAILURES = [
    (InputError("bad value", file="log.csv", row=3), 2),
    (FileNotFoundError("missing.yaml"), 2),
    (ConfigKeyError("unknown key"), 2),
    (ValueError("a bug"), 1),
    (KeyError("a bug"), 1),
    (RuntimeError("a bug"), 1),
]


@pytest.mark.parametrize("error,code", FAILURES, ids=[type(e).__name__ for e, _ in FAILURES])
def test_exits_on_error_codes(error, code, capsys):
    @exits_on_error
    def task():
        raise error

    with pytest.raises(SystemExit) as exit_info:
        task()

    assert exit_info.value.code == code
    assert exit_info.value.code == exit_code_for(error)
    err = capsys.readouterr().err
    if code == 2:
        assert err.startswith("error: ")
        assert str(error) in err
    else:
        assert err == ""


def test_exits_on_error_passes_results_and_exits():
    @exits_on_error
    def task(value):
        return value * 2

    @exits_on_error
    def interrupted():
        raise KeyboardInterrupt

    @exits_on_error
    def exits_three():
        raise SystemExit(3)

    assert task(21) == 42
    with pytest.raises(KeyboardInterrupt):
        interrupted()
    with pytest.raises(SystemExit) as exit_info:
        exits_three()
    assert exit_info.value.code == 3


@pytest.mark.parametrize("error,code", FAILURES, ids=[type(e).__name__ for e, _ in FAILURES])
def test_run_command_writes_summary(error, code, tmp_path, capsys):
    def body(summary):
        summary.details["started"] = True
        raise error

    result_code, result = run_command("demo", tmp_path / "out" / "run_summary.json", {"api_token": "s3cret", "n": 1}, body)

    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert result_code == code
    assert result is None
    assert summary["exit_code"] == code
    assert summary["status"] == "error"
    assert summary["details"] == {"started": True}
    assert summary["config"] == {"api_token": "***", "n": 1}
    assert ("seqchurn demo: error:" in capsys.readouterr().err) == (code == 2)


def test_run_command_success(tmp_path):
    code, result = run_command("demo", tmp_path / "run_summary.json", {}, lambda summary: "done")

    summary = json.loads((tmp_path / "run_summary.json").read_text())
    assert (code, result) == (0, "done")
    assert summary["status"] == "ok"
    assert summary["exit_code"] == 0
    assert "python" in summary["versions"]
