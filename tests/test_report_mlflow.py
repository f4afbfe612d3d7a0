"""The mlflow reporter against a real local MLflow store, read back with MlflowClient."""
from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from harness.cli import cli
from harness.run.results import RunStore
from test_report import make_run

mlflow = pytest.importorskip("mlflow", reason="MLflow is not installed "
                                              "(pip install 'transfer-bench[mlflow]')")
from mlflow.tracking import MlflowClient  # noqa: E402


def _report(run, *args):
    res = CliRunner().invoke(cli, ["report", str(run), "--format", "mlflow", *args])
    assert res.exit_code == 0, res.output
    return res.output


def _runs(uri):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("transfer-bench/t")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.fixture
def stored(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return make_run(tmp_path / "run")


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory):
    """An empty MLflow SQLite store, made once: creating its tables takes seconds, so the
    tests other than the first start from copies of it."""
    path = tmp_path_factory.mktemp("mlflow") / "empty.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def _copy(db, to):
    import shutil
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(db, to)
    return to


def test_every_cell_is_a_child_run_with_its_configuration_metrics_and_record(stored, tmp_path,
                                                                           monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    out = _report(stored.path, "--out", str(tmp_path / "ml.db"))
    assert list((tmp_path / "cwd").iterdir()) == []  # no ./mlruns: artifacts sit by the db
    assert (tmp_path / "artifacts").is_dir()
    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    assert "logged 12 cells" in out and uri in out
    client, (parent,), children = _runs(uri)
    assert len(children) == 12
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert parent.data.params["seeds"] == "3" and parent.data.metrics["cells_ok"] == 12
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "config.json", "environment.json", "results.csv", "recommendation.json"}
    recs = {r["key"]: r for r in stored.records()}
    for child in children:
        rec = recs[child.data.tags["transfer_bench_cell"]]
        p, m = child.data.params, child.data.metrics
        assert (p["backbone"], p["strategy"], p["seed"]) == (
            rec["config"]["backbone"], rec["config"]["strategy"], str(rec["config"]["seed"]))
        assert m["test_accuracy"] == pytest.approx(rec["test_metrics"]["accuracy"])
        lat = rec["latency"][0]["stats"]
        assert m["latency_p50_ms/onnxruntime/mobile/fp32"] == pytest.approx(lat["p50_ms"])
        assert m["latency_p90_ms/onnxruntime/mobile/fp32"] == pytest.approx(lat["p90_ms"])
        curve = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [(h.step, h.value) for h in sorted(curve, key=lambda h: h.step)] == [
            (i, pytest.approx(e["val_metric"])) for i, e in enumerate(rec["history"]["epochs"])]
        assert child.info.status == "FINISHED"
    # the artifact is the cell's own JSON record
    child = children[0]
    path = client.download_artifacts(child.info.run_id, f"{child.data.tags['transfer_bench_cell']}"
                                                        ".json", str(tmp_path / "dl"))
    assert json.loads(open(path).read())["key"] == child.data.tags["transfer_bench_cell"]


def test_logging_again_adds_only_what_changed(stored, tmp_path, empty_db):
    db = str(_copy(empty_db, tmp_path / "ml.db"))
    ok = stored.records()[0]
    stored.cell_path(ok["key"]).unlink()  # this cell failed in the first run
    stored.write_cell({**ok, "status": "failed", "error": "ValueError: planted", "finished": 1.0})
    _report(stored.path, "--out", db)
    _, _, children = _runs(f"sqlite:///{db}")
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) == 1 and failed[0].data.tags["error"] == "ValueError: planted"
    assert "logged 0 cells to MLflow (12 already there, 0 replaced)" in _report(
        stored.path, "--out", db)
    stored.write_cell({**ok, "finished": 2.0})  # a resumed run ran it again, and it passed
    assert "logged 1 cells to MLflow (11 already there, 1 replaced)" in _report(
        stored.path, "--out", db)
    _, parents, children = _runs(f"sqlite:///{db}")
    assert len(parents) == 1 and len(children) == 12
    assert {c.info.status for c in children} == {"FINISHED"}


def test_default_store_is_sqlite_under_the_run_folder(stored, empty_db):
    db = _copy(empty_db, stored.path / "mlflow" / "mlflow.db")
    out = _report(stored.path)
    assert f"sqlite:///{db.resolve()}" in out
    assert "12 cells have no kept ONNX file to log (bench run --keep-onnx keeps them)" in out
    client, (parent,), children = _runs(f"sqlite:///{db.resolve()}")
    # artifacts stay in the run folder too
    assert len(children) == 12
    assert (stored.path / "mlflow" / "artifacts").is_dir()


def test_mlflow_tracking_uri_is_used_when_set(stored, tmp_path, monkeypatch, empty_db):
    uri = f"sqlite:///{_copy(empty_db, tmp_path / 'elsewhere.db')}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert uri in _report(stored.path)
    assert not (stored.path / "mlflow").exists()
    assert len(_runs(uri)[2]) == 12


@pytest.mark.slow
def test_onnx_is_logged_when_the_run_kept_it(tmp_path, monkeypatch, register_plugin, empty_db):
    """A real (tiny) cell run with --keep-onnx: its ONNX file becomes an artifact."""
    import test_executors

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    register_plugin(sys.modules["test_executors"], name=test_executors.PLUGIN_NAME)
    mfile = tmp_path / "m.toml"
    mfile.write_text('name = "t"\nbackbones = ["tinynet"]\ndatasets = ["quadrants"]\n'
                     'strategies = ["scratch"]\nruntimes = ["pytorch"]\nprofiles = ["mobile"]\n'
                     'image_size = 16\n[train]\nepochs = 1\n[latency]\nmin_s = 0.05\n')
    res = CliRunner().invoke(cli, ["run", "-m", str(mfile), "-q", "--keep-onnx", "--out",
                                   str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "runs").iterdir()
    (rec,) = RunStore(run).records()
    assert rec["onnx"]["kept"] == str(run / "onnx" / f"{rec['key']}.onnx")
    _copy(empty_db, run / "mlflow" / "mlflow.db")
    out = _report(run)
    assert "logged 1 cells" in out and "no kept ONNX" not in out
    client, _, (child,) = _runs(f"sqlite:///{(run / 'mlflow' / 'mlflow.db').resolve()}")
    (onnx,) = client.list_artifacts(child.info.run_id, "onnx")
    assert onnx.path == f"onnx/{rec['key']}.onnx" and onnx.file_size == rec["onnx"][
        "file_mb"] * 2**20
    assert child.data.metrics["test_accuracy"] == pytest.approx(rec["test_metrics"]["accuracy"])
    assert "latency_p50_ms/pytorch/mobile/fp32" in child.data.metrics

