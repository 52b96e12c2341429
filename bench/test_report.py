"""The report's command line and rendering: a partial run (-k) never touches the committed
results; the OPENBLAS_THREAD_TIMEOUT run gets its own table.

Plain tests (no benchmark fixture): they run in CI's untimed bench run.
"""
import json

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


def _record(group, impl, median):
    return {"group": group, "extra_info": {"impl": impl},
            "stats": {"median": median, "iqr": median / 100, "min": median, "rounds": 5}}


def test_the_blas_timeout_table_is_rendered_from_its_own_run(tmp_path):
    path = tmp_path / report.SPIN_JSON.name
    assert report.spin_section(path) == ""  # no run, no table
    doc = {"machine_info": {"opkernels": {"date": "2026-01-02", "cores": 2}},
           "benchmarks": [_record("train-step-float32", "cython-2t", 0.069),
                          _record("train-step-float32", "gemm-floor", 0.060)]}
    path.write_text(json.dumps(doc))
    md = report.spin_section(path)
    assert "`OPENBLAS_THREAD_TIMEOUT=4`" in md and "2026-01-02" in md
    assert "| `cython-2t` | 69.0 | 0.690 | 1.15x |" in md, md
