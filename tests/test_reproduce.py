"""benchmarks/reproduce.py: the suites are well formed, and the runner skips finished runs,
resumes started ones, waits for a run's dependency and reports mean +- sd."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import reproduce  # noqa: E402
from reproduce import Run  # noqa: E402


def _without_seed(args: tuple[str, ...]) -> tuple[str, ...]:
    if "--seed" not in args:
        return args
    i = args.index("--seed")
    return args[:i] + args[i + 2:]


@pytest.mark.parametrize("suite", sorted(reproduce.SUITES))
def test_suites_are_well_formed(suite, tmp_path):
    runs = reproduce.suite_runs(suite, tmp_path)
    names = [r.name for r in runs]
    assert len(names) == len(set(names)), "two runs of a suite share a folder"
    groups: dict[str, tuple] = {}
    for r in runs:
        assert "--out" not in r.args and "--resume" not in r.args
        assert "{root}" not in " ".join(r.args)
        # The runs of one row of the report differ only in their seed.
        assert groups.setdefault(r.group, _without_seed(r.args)) == _without_seed(r.args), r.name
        if r.needs is not None:
            assert r.needs in names and names.index(r.needs) < names.index(r.name)
    # A run shared between suites (e.g. SASRec CE) must mean the same run in each.
    for other in reproduce.SUITES:
        for o in reproduce.suite_runs(other, tmp_path):
            same = [r for r in runs if r.name == o.name]
            assert not same or same[0].args == o.args, f"{o.name} differs between {suite} and {other}"


def _tiny(name: str, seed: int, **kw) -> Run:
    return Run(name, "tiny SASRec", ("--model", "sasrec", "--data", "synthetic", "--synthetic-users", "120",
                                     "--synthetic-items", "200", "--epochs", "2", "--patience", "0",
                                     "--hidden-size", "16", "--seed", str(seed)), **kw)


def test_runner_skips_finished_resumes_started_and_reports(tmp_path, capsys):
    first, second = _tiny("a", 1), _tiny("b", 2)
    # Run "a" partly: one epoch of two, as a killed run leaves it.
    from seqrec.cli import main as seqrec_main
    one_epoch = list(first.args)
    one_epoch[one_epoch.index("--epochs") + 1] = "1"
    assert seqrec_main(["train", *one_epoch, "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    (tmp_path / "a" / "result.json").unlink()  # started, not finished
    assert first.started(tmp_path) and not first.finished(tmp_path)
    assert "killed   epoch 1/2" in reproduce.status_line(first, tmp_path)
    assert first.argv(tmp_path)[-1] == "--resume" and "--resume" not in second.argv(tmp_path)

    suite = [first, second]
    assert reproduce.run_suite(suite, suite, tmp_path, jobs=2, threads=1) == 0
    out = capsys.readouterr().out
    assert "resuming a" in out and "starting b" in out
    assert "resumed" in (tmp_path / "a.log").read_text()
    history = [json.loads(line) for line in (tmp_path / "a" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]

    line = reproduce.status_line(first, tmp_path)
    assert line.startswith("a ") and "finished epoch 2/2, best valid NDCG@20 " in line and "last epoch" in line
    assert "new      epoch 0/2" in reproduce.status_line(_tiny("c", 3), tmp_path)
    # Everything finished: nothing is started again.
    assert reproduce.run_suite(suite, suite, tmp_path, jobs=1, threads=1) == 0
    assert "2 of 2 runs finished; 0 to go" in capsys.readouterr().out

    table = reproduce.report(suite, tmp_path)
    results = [json.loads((tmp_path / n / "result.json").read_text())["test_full"]["NDCG@20"] for n in "ab"]
    mean = sum(results) / 2
    sd = abs(results[0] - results[1]) / 2 ** 0.5
    assert "| tiny SASRec | 2/2 |" in table
    assert f"{mean:.4f} +- {sd:.4f} |" in table.splitlines()[-1]
    sampled = [json.loads((tmp_path / n / "result.json").read_text())["test_sampled"]["HR@10"] for n in "ab"]
    table = reproduce.report(suite, tmp_path, ("sampled:HR@10", "MRR"))
    assert "| sampled:HR@10 | MRR |" in table.splitlines()[2]
    assert f"| {sum(sampled) / 2:.4f} +- {abs(sampled[0] - sampled[1]) / 2 ** 0.5:.4f} |" in table.splitlines()[-1]
    # the selected epoch's validation metrics: what the selection read
    valid = [json.loads((tmp_path / n / "result.json").read_text())["best_valid"]["NDCG@20"] for n in "ab"]
    assert valid != results
    table = reproduce.report(suite, tmp_path, ("valid:NDCG@20",))
    assert f"| {sum(valid) / 2:.4f} +- {abs(valid[0] - valid[1]) / 2 ** 0.5:.4f} |" in table.splitlines()[-1]

    # The records kept in the repository: no weights, and the same report and status.
    kept = tmp_path / "kept"
    unfinished = _tiny("c", 3)
    assert reproduce.archive([*suite, unfinished], tmp_path, kept) == ["a", "b"]
    assert sorted(p.name for p in (kept / "a").iterdir()) == ["result.json"]
    assert not (kept / "c").exists() and not list(kept.glob(".*"))
    body = lambda text: text.split("\n", 1)[1]  # noqa: E731 (the first line names the root)
    assert body(reproduce.report(suite, kept)) == body(reproduce.report(suite, tmp_path))
    assert reproduce.status_line(first, kept) == reproduce.status_line(first, tmp_path)
    assert reproduce.main(["archive", "sasrec", "--root", str(tmp_path), "--to", str(kept)]) == 0
    assert "archived 0 finished run(s) of 3" in capsys.readouterr().out


def test_runner_waits_for_dependency_and_stops_on_failure(tmp_path, capsys):
    broken = Run("broken", "broken", ("--model", "sasrec", "--data", str(tmp_path / "no-such-data"),
                                      "--epochs", "1"))
    after = _tiny("after", 1, needs="broken")
    assert reproduce.run_suite([broken, after], [broken, after], tmp_path, jobs=2, threads=1) == 1
    out = capsys.readouterr().out
    assert "broken: FAILED" in out and "after: skipped, it needs broken" in out
    assert not (tmp_path / "after").exists()
    # Selected alone, a run whose dependency is unfinished cannot start.
    assert reproduce.run_suite([after], [broken, after], tmp_path, jobs=1, threads=1) == 1
    assert "cannot start: after (needs broken" in capsys.readouterr().out


def test_a_snapshot_fine_tune_waits_for_its_epoch_not_the_end(tmp_path, capsys):
    """A run with needs_epochs starts once the pretraining run it needs has logged that
    many epochs (the snapshot it fine-tunes from is there), before that run ends."""
    pre = Run("pre", "pre", ("--model", "s3rec", "--epochs", "3"), command="pretrain")
    fine = Run("fine", "fine", ("--model", "s3rec"), needs="pre", needs_epochs=2)
    by_name = {r.name: r for r in (pre, fine)}
    log = tmp_path / "pre" / "pretrain.jsonl"
    log.parent.mkdir()
    for epochs, ready in ((0, False), (1, False), (2, True), (3, True)):
        log.write_text("".join(json.dumps({"epoch": e + 1}) + "\n" for e in range(epochs)))
        assert pre.epochs_done(tmp_path) == epochs and pre.finished(tmp_path) == (epochs == 3)
        assert fine.ready(tmp_path, by_name) == ready, epochs
    log.write_text(json.dumps({"epoch": 1}) + "\n")
    assert reproduce.run_suite([fine], [pre, fine], tmp_path, jobs=1, threads=1) == 1
    assert "cannot start: fine (needs pre up to epoch 2, not finished" in capsys.readouterr().out
    snapshot_runs = {r.name: r for r in reproduce.suite_runs("s3rec-aap-input", tmp_path) if r.needs_epochs}
    assert sorted(snapshot_runs) == sorted(f"beauty_s3rec_aapseq_p{e}{full}{seed}" for e in (50, 100)
                                           for full in ("", "_full") for seed in ("", "_s1", "_s2"))
    for r in snapshot_runs.values():
        assert r.args[r.args.index("--init") + 1].endswith(f"beauty_s3rec_aapseq_pre/pretrain-epoch{r.needs_epochs}.pt")


def test_report_lists_unfinished_runs(tmp_path):
    table = reproduce.report([_tiny("x", 1)], tmp_path)
    assert "| tiny SASRec | 0/1 | - |" in table and "not finished: x" in table


def test_cli_list_and_unknown_run(capsys):
    assert reproduce.main(["list"]) == 0
    assert "dss: 18 runs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        reproduce.main(["commands", "dss", "--only", "no_such_run"])
    assert "not runs of suite dss: no_such_run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.main(["report", "dss", "--metrics", "NDCG@20", "test:HR@10"])
    assert "--metrics test:HR@10: a metric is NAME@K or MRR" in capsys.readouterr().err


def test_runner_waits_for_a_folder_another_process_is_training(tmp_path, capsys):
    import threading

    from seqrec.utils import lock_run_folder

    run = _tiny("shared", 3)
    held = lock_run_folder(tmp_path / "shared")  # as a `seqrec train --out` elsewhere would
    codes = []
    worker = threading.Thread(target=lambda: codes.append(reproduce.run_suite([run], [run], tmp_path, 1, 1)))
    worker.start()
    try:
        assert "running  epoch 0/2" in reproduce.status_line(run, tmp_path)
        for _ in range(100):
            if "another process is training it" in capsys.readouterr().out:
                break
            worker.join(0.1)
        else:
            pytest.fail("the runner did not report the busy folder")
        assert not run.started(tmp_path) and worker.is_alive()
    finally:
        held.close()
    worker.join(300)
    assert codes == [0] and run.finished(tmp_path)


def test_seqrec_train_refuses_a_folder_in_use(tmp_path, capsys):
    from seqrec.cli import main as seqrec_main
    from seqrec.utils import RunFolderBusy, lock_run_folder, run_folder_in_use

    assert not run_folder_in_use(tmp_path / "run") and not (tmp_path / "run").exists()
    held = lock_run_folder(tmp_path / "run")
    try:
        assert run_folder_in_use(tmp_path / "run")
        with pytest.raises(RunFolderBusy, match="in use by another seqrec process"):
            lock_run_folder(tmp_path / "run")
        for command in (["train", "--model", "sasrec"], ["pretrain", "--model", "s3rec"]):
            code = seqrec_main([*command, "--data", "synthetic", "--epochs", "1", "--out", str(tmp_path / "run")])
            assert code == 2
            assert f"run folder {tmp_path / 'run'} is in use" in capsys.readouterr().err
        assert [p.name for p in (tmp_path / "run").iterdir()] == [".seqrec.lock"]  # nothing written
    finally:
        held.close()
    assert not run_folder_in_use(tmp_path / "run")


def test_difsr_paper_sasrec_row_uses_the_difsr_beauty_preset(tmp_path):
    # reproduce.py spells the preset's settings out for SASRec (it does not import
    # seqrec); this keeps the two from drifting apart.
    from seqrec.models.difsr import PRESETS
    preset = PRESETS["difsr-beauty"]
    flags = dict(zip(reproduce.PAPER[::2], reproduce.PAPER[1::2]))
    model, train = preset.model, preset.train
    expected = {"--hidden-size": model["hidden_size"], "--num-layers": model["num_layers"],
                "--num-heads": model["num_heads"], "--inner-size": model["inner_size"],
                "--dropout": model["hidden_dropout"], "--attention-dropout": model["attention_dropout"],
                "--lr": train["lr"], "--batch-size": train["batch_size"]}
    assert flags.keys() == expected.keys()
    for flag, value in expected.items():
        assert float(flags[flag]) == float(value), flag
    sasrec = next(r for r in reproduce.suite_runs("difsr-paper", tmp_path) if r.name == "beauty_sasrec_paper")
    assert "--loss" in sasrec.args and sasrec.args[sasrec.args.index("--loss") + 1] == model["loss"]


def test_report_verifies_record_checksums(tmp_path):
    """A record changed after it was written is refused, naming the file; an archived
    record from before checksums (plain JSON) still reads, without a warning per file."""
    import warnings

    from seqrec.utils import ChecksumError, write_json

    run = _tiny("x", 1)
    result = {"best_epoch": 1, "history": [{"epoch": 1, "valid": {"NDCG@20": 0.25}}], "test_full": {"NDCG@20": 0.125}}
    (tmp_path / "x").mkdir()
    path = tmp_path / "x" / "result.json"
    write_json(path, result)
    assert "0.1250" in reproduce.report([run], tmp_path, metrics=("NDCG@20",))
    path.write_text(path.read_text().replace("0.125", "0.925"))
    with pytest.raises(ChecksumError, match="result.json"):
        reproduce.report([run], tmp_path, metrics=("NDCG@20",))
    with pytest.raises(ChecksumError, match="result.json"):
        reproduce.status_line(run, tmp_path)
    path.write_text(json.dumps(result))  # an archived record from before checksums
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "0.1250" in reproduce.report([run], tmp_path, metrics=("NDCG@20",))


def test_device_goes_to_every_call_and_is_checked_first(tmp_path, capsys):
    run = _tiny("a", 1)
    assert run.argv(tmp_path, "cuda:1")[-2:] == ["--device", "cuda:1"]
    assert "--device" not in run.argv(tmp_path)
    # `commands` lists what a GPU machine would run; it needs no GPU itself.
    assert reproduce.main(["commands", "best", "--root", str(tmp_path), "--only", "lastfm_best",
                           "--device", "cuda"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("--no-progress --device cuda")
    # A started run resumes on the new device (the trainer lets --device change on resume).
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "checkpoint.pt").write_bytes(b"")
    assert run.argv(tmp_path, "cuda")[-3:] == ["--device", "cuda", "--resume"]
    # A device seqrec would refuse stops the suite before any run starts, naming it
    # (seqrec's own check: the calls would fail on it one by one).
    bad = ["cuda:x", "gpu", ""] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:
        with pytest.raises(SystemExit) as stop:
            reproduce.main(["run", "best", "--root", str(tmp_path), "--only", "lastfm_best", "--device", device])
        assert stop.value.code == 2
        assert f"--device {device}: not usable with this torch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.main(["commands", "best", "--root", str(tmp_path), "--device", "gpu"])
    assert "--device gpu: " in capsys.readouterr().err
    assert not (tmp_path / "lastfm_best").exists()


def test_a_runs_own_threads_override_the_suites(tmp_path, monkeypatch, capsys):
    """Run.threads reaches its child as OMP_NUM_THREADS, over `run --threads`; other runs
    keep the suite's setting."""
    seen = {}

    class Done:
        returncode = 0

        def __init__(self, argv, env, **kwargs):
            seen[argv[argv.index("--out") + 1]] = env.get("OMP_NUM_THREADS")

        def poll(self):
            return 0

    monkeypatch.setattr(reproduce.subprocess, "Popen", Done)
    runs = [_tiny("own", 1, threads=2), _tiny("suite", 2)]
    assert reproduce.run_suite(runs, runs, tmp_path, jobs=2, threads=1) == 0
    assert seen == {str(tmp_path / "own"): "2", str(tmp_path / "suite"): "1"}
