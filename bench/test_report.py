"""The report's command line: a partial run (-k) never touches the committed results.

Plain tests (no benchmark fixture): they run in CI's untimed bench run.
"""
import pytest

from bench import report


@pytest.mark.parametrize("extra", [["--with-training"], ["--json", "bench/results/latest.json"]])
def test_partial_run_refuses_options_that_rewrite_committed_results(extra, capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the suite ran")

    monkeypatch.setattr(report, "run_suite", must_not_run)
    monkeypatch.setattr(report, "run_script", must_not_run)
    monkeypatch.setattr(report, "write_readme", must_not_run)
    with pytest.raises(SystemExit) as exc:
        report.main(["-k", "relu", *extra])
    assert exc.value.code == 2
    assert "-k is a partial benchmark run" in capsys.readouterr().err
