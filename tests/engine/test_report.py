import json

from mavil.engine.report import main, rows


def fake_run(root, name, mode, init, scores):
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"finetune": {"mode": mode, "init": init}}))
    (run / "eval.json").write_text(json.dumps(scores))


def test_one_row_per_run_with_its_scores(tmp_path, capsys):
    fake_run(tmp_path, "a", "audio", None, {"clips": 8, "mAP": 0.5, "accuracy": 0.25})
    fake_run(
        tmp_path,
        "v",
        "video",
        "x.safetensors",
        {"clips": 8, "mAP": 0.75, "accuracy": 0.5, "accuracy_10clips": 0.625, "mAP_10clips": 0.875},
    )
    fake_run(tmp_path, "r", "retrieval", None, {"pairs": 8, "a2v_R@1": 0.125, "chance_R@1": 0.125})
    found = {row["run"]: row for row in rows(tmp_path)}
    assert found["a"]["init"] == "random" and found["a"]["mAP multi-clip"] is None
    assert found["v"]["accuracy multi-clip"] == 0.625 and found["v"]["mAP multi-clip"] == 0.875
    assert found["r"]["a2v_R@1"] == 0.125 and found["r"]["accuracy"] is None
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 + 3 and "| v | video | x.safetensors | 0.500 | 0.625 | 0.750 | 0.875 |" in out[4]


def test_no_runs_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no */eval.json" in capsys.readouterr().err
