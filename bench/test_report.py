"""The report's command line and rendering: a partial run (-k) never touches the committed
results; the OPENBLAS_THREAD_TIMEOUT session gets its own table, only beside the run it followed.

Plain tests (no benchmark fixture): they run in CI's untimed bench run.  Every test that calls
``report.main`` points its outputs into a temporary directory (:func:`sandbox`), so a regression
cannot overwrite the committed results or README.md.
"""
import json
import shutil
import sys
import types

import pytest

from bench import RESULTS_DIR, report

MAIN_DATE = "2026-01-02T03:04:05+00:00"


def _must_not_run(*args, **kwargs):
    raise AssertionError("called")


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """report's paths under tmp_path; README, chart and the training scripts never run."""
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    monkeypatch.setattr(report, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(report, "RESULTS_DIR", results)
    for name in ("DEFAULT_JSON", "PARTIAL_JSON", "SPIN_JSON", "PNG"):
        monkeypatch.setattr(report, name, results / getattr(report, name).name)
    monkeypatch.setattr(report, "write_readme", _must_not_run)
    monkeypatch.setattr(report, "run_script", _must_not_run)
    monkeypatch.setattr(report, "chart", lambda *args, **kwargs: None)
    monkeypatch.setitem(sys.modules, "matplotlib", types.ModuleType("matplotlib"))  # checked only
    return results


def _record(group, impl, median):
    return {"group": group, "extra_info": {"impl": impl},
            "stats": {"median": median, "iqr": median / 100, "min": median, "rounds": 5}}


def _two_core_doc(benchmarks):
    """A pytest-benchmark JSON of ``benchmarks`` from a 2-core machine, nothing else known."""
    return {"machine_info": {"opkernels": {"cores": 2}}, "benchmarks": benchmarks}


def _run_doc(date, env, step_ms):
    """A pytest-benchmark JSON of a training-step run: cython-2t at step_ms, GEMMs at 60 ms."""
    return {"machine_info": {"opkernels": {"date": date, "cores": 2, "rows": 60_000, "env": env}},
            "benchmarks": [_record("train-step-float32", "cython-2t", step_ms / 1e3),
                           _record("train-step-float32", "gemm-floor", 0.060)]}


def _fake_suite(calls, main_rc=0, spin_rc=0):
    """A run_suite writing _run_doc JSONs: the first session at 69 ms, the second at 66 ms."""
    def run_suite(json_path, extra, env=None):
        calls.append((json_path.name, extra, env))
        if env is None:
            json_path.write_text(json.dumps(_run_doc(MAIN_DATE, {}, 69.0)))
            return main_rc
        json_path.write_text(json.dumps(_run_doc("later", dict(env), 66.0))[:50] if spin_rc else
                             json.dumps(_run_doc("later", dict(env), 66.0)))
        return spin_rc
    return run_suite


@pytest.mark.parametrize("extra", [["--with-training"], ["--json", "bench/results/latest.json"]])
def test_partial_run_refuses_options_that_rewrite_committed_results(extra, capsys, monkeypatch, sandbox):
    monkeypatch.setattr(report, "run_suite", _must_not_run)
    with pytest.raises(SystemExit) as exc:
        report.main(["-k", "relu", *extra])
    assert exc.value.code == 2
    assert "-k is a partial benchmark run" in capsys.readouterr().err


def test_full_run_adds_the_second_session_stamped_with_the_first(monkeypatch, sandbox, capsys):
    calls = []
    monkeypatch.setattr(report, "run_suite", _fake_suite(calls))
    assert report.main(["--no-readme"]) == 0
    assert [c[0] for c in calls] == ["latest.json", report.SPIN_JSON.stem + ".running.json"]
    assert calls[1][1] == ["-k", report.SPIN_KEYWORD] and calls[1][2] == report.SPIN_ENV
    spin = json.loads(report.SPIN_JSON.read_text())
    assert spin[report.SPIN_STAMP] == MAIN_DATE and spin["opkernels_options"]
    assert sorted(p.name for p in sandbox.iterdir()) == ["latest.json", "report.md", report.SPIN_JSON.name]
    md = (sandbox / "report.md").read_text()
    assert "`OPENBLAS_THREAD_TIMEOUT=4`" in md and "| `cython-2t` | 66.0 |" in md, md
    assert "| `cython-2t` | 69.0 |" in md


def test_failed_first_session_leaves_the_committed_files(monkeypatch, sandbox):
    report.SPIN_JSON.write_text(json.dumps({report.SPIN_STAMP: "an older run"}))
    calls = []
    monkeypatch.setattr(report, "run_suite", _fake_suite(calls, main_rc=3))
    assert report.main(["--no-readme"]) == 3
    assert [c[0] for c in calls] == ["latest.json"]
    assert report.SPIN_JSON.exists() and not (sandbox / "report.md").exists()


@pytest.mark.parametrize("spin_rc", [0, 1])
def test_an_older_second_session_is_replaced_or_removed(spin_rc, monkeypatch, sandbox):
    report.SPIN_JSON.write_text(json.dumps({report.SPIN_STAMP: "an older run"}))
    monkeypatch.setattr(report, "run_suite", _fake_suite([], spin_rc=spin_rc))
    assert report.main(["--no-readme"]) == 0
    if spin_rc:
        assert not report.SPIN_JSON.exists()
    else:
        assert json.loads(report.SPIN_JSON.read_text())[report.SPIN_STAMP] == MAIN_DATE


def test_failed_second_session_is_left_out(monkeypatch, sandbox):
    calls = []
    monkeypatch.setattr(report, "run_suite", _fake_suite(calls, spin_rc=1))
    assert report.main(["--no-readme"]) == 0
    assert sorted(p.name for p in sandbox.iterdir()) == ["latest.json", "report.md"]
    md = (sandbox / "report.md").read_text()
    assert "| `cython-2t` | 69.0 |" in md and "OPENBLAS_THREAD_TIMEOUT=4" not in md


def test_partial_run_neither_runs_nor_renders_the_second_session(monkeypatch, sandbox, capsys):
    committed = report.SPIN_JSON
    committed.write_text(json.dumps({**_run_doc("later", dict(report.SPIN_ENV), 66.0),
                                     report.SPIN_STAMP: MAIN_DATE}))
    before = committed.read_text()
    calls = []
    monkeypatch.setattr(report, "run_suite", _fake_suite(calls))
    assert report.main(["-k", "train_step"]) == 0
    assert [c[0] for c in calls] == ["partial.json"]
    out = capsys.readouterr().out
    assert "| `cython-2t` | 69.0 |" in out and "OPENBLAS_THREAD_TIMEOUT=4" not in out
    assert committed.read_text() == before
    assert sorted(p.name for p in sandbox.iterdir()) == ["partial.json", committed.name]


def _main_results(env=None):
    return report.Results(_run_doc(MAIN_DATE, env or {}, 69.0))


def test_the_second_session_table_is_rendered_only_beside_its_run(tmp_path, capsys):
    path = tmp_path / report.SPIN_JSON.name
    res = _main_results()
    assert report.spin_section(path, res) == ""  # no run, no table
    spin = {**_run_doc("later", dict(report.SPIN_ENV), 69.0), report.SPIN_STAMP: MAIN_DATE}
    path.write_text(json.dumps(spin))
    md = report.spin_section(path, res)
    assert "`OPENBLAS_THREAD_TIMEOUT=4`" in md and "later" in md
    assert "| `cython-2t` | 69.0 | 0.690 | 1.15x |" in md, md

    cases = {
        "belongs to the run of": {**spin, report.SPIN_STAMP: "2025-12-31T00:00:00+00:00"},
        "no date": {k: v for k, v in spin.items() if k != report.SPIN_STAMP},
        "not run with OPENBLAS_THREAD_TIMEOUT=4": {**spin, **_run_doc("later", {}, 69.0)},
        "no training-step benchmarks": {**spin, "benchmarks": []},
    }
    for why, doc in cases.items():
        path.write_text(json.dumps(doc))
        assert report.spin_section(path, res) == ""
        assert why in capsys.readouterr().err
    path.write_text(json.dumps(spin))
    assert report.spin_section(path, _main_results(dict(report.SPIN_ENV))) == ""  # set in both
    assert "do not differ" in capsys.readouterr().err
    undated = report.Results(_two_core_doc([]))
    path.write_text(json.dumps({k: v for k, v in spin.items() if k != report.SPIN_STAMP}))
    assert report.spin_section(path, undated) == ""  # no stamp and no date do not match
    assert "no date" in capsys.readouterr().err
    for bad in (json.dumps(spin)[:40], "[]", '"x"', '{"machine_info": null}',
                json.dumps({**spin, "machine_info": {"opkernels": {"env": None}}})):
        path.write_text(bad)  # truncated, or valid JSON of the wrong form
        assert report.spin_section(path, res) == ""
        err = capsys.readouterr().err
        assert "cannot be read" in err or "not run with" in err, err


def test_committed_second_session_belongs_to_the_committed_run():
    if not (RESULTS_DIR / report.SPIN_JSON.name).exists():
        pytest.skip("no second session was committed (the report leaves it out when it fails)")
    main = report.Results(json.loads((RESULTS_DIR / "latest.json").read_text()))
    spin = json.loads((RESULTS_DIR / report.SPIN_JSON.name).read_text())
    assert spin[report.SPIN_STAMP] == main.env["date"]
    assert report.spin_section(RESULTS_DIR / report.SPIN_JSON.name, main)


def _paired(impl, kernel_ms, copy_ms, ratio, ratio_iqr=0.0, **peers):
    """A -paired benchmark record; peers: name=(median ms, per-round ratio)."""
    rec = _record("relu-forward-float64-paired", impl, kernel_ms / 1e3)
    others = {"copy": (copy_ms, ratio, ratio_iqr), **{k: (*v, 0.0) for k, v in peers.items()}}
    rec["extra_info"]["paired"] = {
        name: {"median": t / 1e3, "iqr": 0.0, "min": t / 1e3, "rounds": 200, "ratio": {"median": q, "iqr": iqr}}
        for name, (t, q, iqr) in others.items()}
    return rec


def _checks(benchmarks, best=False):
    res = report.Results(_two_core_doc(benchmarks))
    _, records = report.op_tables(res)
    return {name: (detail, ok) for name, detail, ok in report.targets(records, {}, res, best=best)}


def _copy_check(benchmarks, best=False):
    return _checks(benchmarks, best).get("relu forward float64 within 1.2x of copy")


def test_copy_targets_use_the_per_round_ratio_of_the_alternating_rounds():
    # the separate copy-limit benchmark (0.9 ms) ran under other conditions than the kernel
    # (1.6 ms): the check uses the median of the per-round ratios of the paired rounds, not the
    # ratio of medians (which may come from different rounds)
    unpaired = [_record("relu-forward-float64", "cython-2t", 0.0016),
                _record("relu-forward-float64", "copy-limit-2t", 0.0009)]
    assert _copy_check(unpaired) == ("1.78x copy", False)
    paired = [_paired("cython-1t", 2.0, 1.9, 1.05), _paired("cython-2t", 1.0, 2.0, 0.93)]
    assert _copy_check(unpaired + paired) == ("0.93x copy (alternating rounds)", True)
    # best mode: the rounds of the faster kernel (1t here), not the lower ratio (2t's 1.21)
    paired = [_paired("cython-1t", 1.5, 1.2, 1.25), _paired("cython-2t", 1.6, 1.3, 1.21)]
    assert _copy_check(paired) == ("1.21x copy (alternating rounds)", False)
    assert _copy_check(paired, best=True) == ("1.25x copy (alternating rounds)", False)
    # no pair of the default thread count: the separate copy benchmark decides
    assert _copy_check(unpaired + [_paired("cython-1t", 2.0, 1.9, 1.05)]) == ("1.78x copy", False)
    # spread per-round ratios make either verdict unclear
    assert _copy_check([_paired("cython-2t", 1.0, 1.1, 0.95, ratio_iqr=0.5)]) == ("0.95x copy (alternating rounds)", None)
    # a kernel more than 10% faster than a copy of its bytes: the copy's rounds are suspect
    assert _copy_check([_paired("cython-2t", 1.0, 1.25, 0.8)]) == \
        ("0.80x copy (alternating rounds; copy slower than the kernel: suspect)", None)
    assert _copy_check([_paired("cython-2t", 2.0, 1.0, 2.0, ratio_iqr=1.0)]) == ("2.00x copy (alternating rounds)", None)
    assert _copy_check([_paired("cython-2t", 2.0, 1.0, 1.9)]) == ("1.90x copy (alternating rounds)", False)


def test_peer_targets_of_relu_use_the_alternating_rounds_when_there():
    # separately timed, torch (1.66 ms) beat the kernel (2.51 ms); in the same rounds the kernel
    # was at 0.98x of torch's time: within the 5% slack
    unpaired = [_record("relu-forward-float64", "cython-2t", 0.00251),
                _record("relu-forward-float64", "torch-2t", 0.00166)]
    name = "relu forward float64 faster than torch (5% slack)"
    assert _checks(unpaired)[name] == ("0.66x", False)
    paired = [_paired("cython-2t", 1.9, 2.0, 0.95, torch=(1.94, 0.98), tensorflow=(2.5, 0.8))]
    checks = _checks(unpaired + paired)
    assert checks[name] == ("1.02x (alternating rounds)", True)
    assert checks["relu forward float64 faster than tensorflow (5% slack)"] == ("1.25x (alternating rounds)", True)
    assert _checks(unpaired + [_paired("cython-2t", 2.0, 2.0, 1.0, torch=(1.8, 1.1))])[name] == \
        ("0.91x (alternating rounds)", False)
    # best mode: torch in the rounds of the faster kernel (1t: 0.83x), not the better ratio
    both = [_paired("cython-1t", 1.8, 2.0, 0.9, torch=(1.5, 1.2)), _paired("cython-2t", 1.9, 2.0, 0.95, torch=(2.1, 0.9))]
    both += unpaired  # the op row the checks hang on
    assert _checks(both)[name] == ("1.11x (alternating rounds)", True)
    assert _checks(both, best=True)[name] == ("0.83x (alternating rounds)", False)
    md = report.paired_table(report.Results(_two_core_doc(paired)))
    assert "| op | dtype | threads | cython | copy | tensorflow | torch | cython / copy, per round |" in md, md
    assert "| relu forward | float64 | 2t | 1.90 | 2.00 | 2.50 | 1.94 | 0.95x | 0.80x | 0.98x |" in md, md


def test_a_ratio_that_rounds_to_its_limit_shows_more_decimals():
    assert report._times(1.152, 1.15) == "1.152x" and report._times(1.148, 1.15) == "1.148x"
    assert report._times(1.1504, 1.15) == "1.1504x" and report._times(1.1496, 1.15) == "1.1496x"
    assert report._times(1.15, 1.15) == "1.15x" and report._times(1.16, 1.15) == "1.16x"


def test_far_apart_softmax_is_set_beside_the_usual_logits():
    doc = _two_core_doc([
        _record("softmax-far-forward-float32", "cython-2t", 0.0003),
        _record("softmax-forward-float32", "cython-2t", 0.0002),
        _record("softmax-far-forward-float32", "numpy", 0.004),
        _record("softmax-forward-float32", "numpy", 0.001),
        _record("softmax-far-forward-float64", "numpy", 0.0036),  # no usual-logits time
    ])
    noisy = _record("softmax-far-forward-float32", "tensorflow", 0.0005)
    noisy["stats"]["iqr"] = 0.0004
    doc["benchmarks"] += [noisy, _record("softmax-forward-float32", "tensorflow", 0.0005)]
    md = report.far_table(report.Results(doc))
    lines = md.splitlines()
    assert lines[0] == ("| implementation | float64 ms | float64 / usual logits | float32 ms "
                        "| float32 / usual logits |"), md
    assert "| `numpy` | 3.60 | - | 4.00 | 4.00x |" in lines, md
    assert "| `cython-2t` | - | - | 0.300 | 1.50x |" in lines, md
    assert f"| `tensorflow` | - | - | 0.500{report.NOISY_MARK} | 1.00x{report.NOISY_MARK} |" in lines, md
    assert not any("cython-1t" in line or "torch" in line for line in lines), md  # not measured
    assert report.far_table(report.Results({"machine_info": {}, "benchmarks": []})) == ""


def test_second_layer_sets_one_pass_beside_separate_passes():
    doc = _two_core_doc([
        _record("second-layer-forward-float32", "numpy", 0.0034),
        _record("second-layer-forward-float32", "separate-1t", 0.0025),
        _record("second-layer-forward-float32", "separate-2t", 0.0026),
        _record("second-layer-forward-float32", "cython-1t", 0.002),
        _record("second-layer-forward-float32", "cython-2t", 0.0013),
        _record("second-layer-backward-float64", "cython-2t", 0.003),  # the rest not measured
    ])
    md = report.second_layer_table(report.Results(doc))
    lines = md.splitlines()
    assert lines[0] == ("| pass | numpy | separate 1t | separate 2t | one pass 1t | one pass 2t "
                        "| separate / one pass 1t | separate / one pass 2t |"), md
    assert "| forward float32 | 3.40 | 2.50 | 2.60 | 2.00 | 1.30 | 1.25x | 2.00x |" in lines, md
    assert "| backward float64 | - | - | - | - | 3.00 | - | - |" in lines, md
    assert not any("forward float64" in line for line in lines), md
    assert report.second_layer_table(report.Results({"machine_info": {}, "benchmarks": []})) == ""


def test_train_table_shows_the_rest_measured_inside_the_step():
    doc = _run_doc("2026-01-01", {}, 69.0)
    doc["benchmarks"][0]["extra_info"]["rest_ms"] = 9.5  # cython-2t; the floor has none
    md, summary = report.train_table(report.Results(doc))
    lines = md.splitlines()
    assert lines[0] == ("| implementation | float32 ms | float32 IQR ms | float32 / GEMM floor "
                        "| float32 rest in step ms |"), md
    assert "| `cython-2t` | 69.0 | 0.690 | 1.15x | 9.50 |" in lines, md
    assert "| `gemm-floor` | 60.0 | 0.600 | 1.00x | - |" in lines, md
    assert summary["float32"]["cython-2t"] == 69.0
