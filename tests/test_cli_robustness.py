"""Bad input gets one clear line and a non-zero exit, never a Python traceback, and nothing is
left half-written (issue 24, items 9-11), then a seeded fuzz of every command with malformed
files, names and options."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import pytest
from export_fixtures import make_prep_dir, make_run

from countrytune_cli import main
from tests.conftest import ROOT, SAMPLE_CORPUS


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny run, exported to a local registry: (run dir, registry dir)."""
    from pipeline.export import export_run

    root = tmp_path_factory.mktemp("robust")
    run = make_run(root / "run", make_prep_dir(root / "prep")).path
    export_run(run, str(root / "registry"), "1", log=lambda _: None)
    return run, root / "registry"


def _fails_cleanly(capsys, argv, code=2, *, contains=None):
    got = main(argv)
    err = capsys.readouterr().err
    assert got == code, (argv, err)
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith("countrytune")]
    assert lines, err
    if contains:
        assert contains in err, err
    return err


# ---- item 9: junk files beside good ones, CSV rows wider than their header -----------------

@pytest.mark.parametrize("name,content", [("junk.parquet", b"not parquet at all"),
                                          ("junk.jsonl.gz", b"not gzip"),
                                          ("cut.jsonl.gz", None)])
def test_an_unreadable_file_is_a_counted_reject_and_the_run_goes_on(tmp_path, run_prep, name, content):
    import gzip

    good = SAMPLE_CORPUS / "web-news.jsonl"
    bad = tmp_path / name
    if content is None:  # a gzip cut short after its first records
        whole = gzip.compress(good.read_bytes())
        content = whole[: len(whole) // 2]
    bad.write_bytes(content)
    stats, out = run_prep([good, bad])
    import pyarrow.parquet as pq

    rejects = [r for r in pq.read_table(out / "rejects").to_pylist() if r["reason"] == "unreadable_file"]
    assert len(rejects) == 1 and rejects[0]["source"] == str(bad)
    totals = stats["totals"]
    assert totals["records_in"] == totals["docs_out"] + totals["rejected"]


def test_a_csv_row_wider_than_its_header_is_rejected_with_the_reason(tmp_path, run_prep):
    wide = tmp_path / "wide.csv"
    wide.write_text('id,text\n1,"Saya suka makan nasi goreng di warung dekat rumah setiap pagi hari",x,y\n',
                    encoding="utf-8")
    stats, out = run_prep([wide])
    import pyarrow.parquet as pq

    [reject] = pq.read_table(out / "rejects").to_pylist()
    assert reject["reason"] == "csv_extra_fields" and "2 field(s) beyond" in reject["detail"]


# ---- item 10: names, pointers, targets, recipe files, language codes -----------------------

def test_names_pointers_and_targets_get_one_line(exported, tmp_path, capsys):
    run, registry = exported
    long_name = "a" * 300
    _fails_cleanly(capsys, ["export", str(run), "--registry", str(tmp_path / "r"), "--version", "1",
                            "--name", long_name], contains="300 characters long")
    for command in (["pull", f"id/{long_name}:1", "--registry", str(registry), "--to", str(tmp_path / "p")],
                    ["show", f"id/{long_name}", "--registry", str(registry)]):
        _fails_cleanly(capsys, command, contains="300 characters long")

    broken = tmp_path / "broken-registry"
    import shutil

    shutil.copytree(registry, broken)
    (broken / "id" / "cpt-lora" / "latest").write_bytes(b"\xff\xfe\x00")
    _fails_cleanly(capsys, ["pull", "id/cpt-lora", "--registry", str(broken), "--to", str(tmp_path / "p")],
                   contains="is not text")

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "a-file").write_text("x")
    for target, message in ((tmp_path / "link", "symbolic link"), (tmp_path / "a-file" / "under", "is a file"),
                            ("/proc/countrytune-x", "cannot create a folder there")):
        _fails_cleanly(capsys, ["pull", "id/cpt-lora:1", "--registry", str(registry), "--to", str(target)],
                       contains=message)
        assert not list((tmp_path / "real").iterdir())

    binary = tmp_path / "recipe.yaml"
    binary.write_bytes(bytes(range(256)))
    _fails_cleanly(capsys, ["train", str(binary), "--output", str(tmp_path / "t")], contains="not a text file")
    assert not (tmp_path / "t").exists()


def test_eval_takes_only_language_codes_and_leaves_nothing_when_it_fails(exported, tmp_path, capsys):
    run, _ = exported
    text = tmp_path / "held.jsonl"
    text.write_text(json.dumps({"text": "Kula badhe tindak dhateng peken."}) + "\n")
    out = tmp_path / "eval"
    _fails_cleanly(capsys, ["eval", "--adapter", str(run), "--text", f"j/../x={text}", "--output", str(out)],
                   contains="not a language code")
    assert not out.exists() and not (tmp_path / "x").exists()
    # It fails after writing its tasks (the base does not load): nothing of it remains.
    _fails_cleanly(capsys, ["eval", "--base", str(tmp_path / "no-model"), "--text", f"jav={text}",
                            "--output", str(out)])
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".eval")]


# ---- item 11: interrupts ------------------------------------------------------------------

@pytest.mark.parametrize("delay", [0.05, 0.3, 1.0])
def test_ctrl_c_at_any_point_of_start_up_prints_no_traceback(exported, tmp_path, delay):
    run, _ = exported
    code = ("import os, signal, sys, threading\n"
            f"t = threading.Timer({delay}, lambda: os.kill(os.getpid(), signal.SIGINT))\n"
            "t.daemon = True  # a timer left waiting would be interrupted at exit, not the CLI\n"
            "t.start()\n"
            "from countrytune_cli import main\n"
            f"sys.exit(main(['export', {str(run)!r}, '--registry', {str(tmp_path / 'r')!r}, '--version', '9']))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 130), proc.stderr  # 0: it finished before the signal


def test_ctrl_c_after_the_version_landed_reports_the_export_done(exported, tmp_path, capsys, monkeypatch):
    from pipeline.registry.local import LocalRegistry

    run, _ = exported
    push = LocalRegistry.push

    def push_then_interrupted(self, package_dir, ref):  # Ctrl-C arriving as the push returns
        push(self, package_dir, ref)
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalRegistry, "push", push_then_interrupted)
    assert main(["export", str(run), "--registry", str(tmp_path / "r"), "--version", "2"]) == 0
    out = capsys.readouterr()
    assert "interrupted after publishing id/cpt-lora:2: the export is complete" in out.err
    assert out.out.strip().endswith("id/cpt-lora:2")


# ---- a seeded fuzz of every command -------------------------------------------------------

def _junk(rng: random.Random) -> bytes:
    kinds = [lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))),
             lambda: b"\x00" * rng.randrange(1, 50),
             lambda: "\n".join("ä" * rng.randrange(1, 9) for _ in range(5)).encode(),
             lambda: b"{" * rng.randrange(1, 20),
             lambda: b"- [\n  a: b\n",
             lambda: b"name: x\ncountry: zz\ntask: cpt\n"]
    return rng.choice(kinds)()


NAMES = ["", "a" * 300, "../../etc", "/abs", "Ｉｄ", "id//x", "id/x/y", "id:latest", "ID", "id/cpt-lora:..",
         "id/cpt-lora:" + "v" * 200, "id/\u202ecpt", "id/ cpt", "-rf"]


def test_seeded_fuzz_of_every_command(exported, tmp_path, capsys):
    """Malformed files, names and options for prep, train, eval, export, pull, verify and show
    (seed 24: the same cases every run). Each must fail with an error line (argparse's usage
    errors count), without a traceback, and leave its output folder absent or as it was."""
    run, registry = exported
    rng = random.Random(24)
    cases = 0
    for i in range(12):
        suffix = rng.choice([".jsonl", ".parquet", ".csv", ".txt.gz", ".yaml", ".json", ".zst"])
        junk = tmp_path / f"junk{i}{suffix}"
        junk.write_bytes(_junk(rng))
        name = rng.choice(NAMES)
        out = tmp_path / f"out{i}"
        commands = [
            ["train", str(junk), "--output", str(out)],
            ["train", "recipes/id/tiny-cpu.yaml", "--output", str(out), "--set", rng.choice(
                ["training.max_steps=-1", "model=3", "lora.r=0", "kernels.choose={rope: torch}",
                 "training.sequence_length=abc", "nonsense", "data.sources=[]"])],
            ["eval", "--adapter", str(junk), "--text", f"{name or 'x'}={junk}", "--output", str(out)],
            ["export", str(run), "--registry", str(tmp_path / "reg"), "--version", name or "!"],
            ["export", str(junk), "--registry", str(tmp_path / "reg"), "--version", "1"],
            ["pull", name, "--registry", str(registry), "--to", str(out)],
            ["show", name, "--registry", str(registry)],
            ["verify", name or str(junk), "--registry", str(junk)],
            ["prep", "--country", rng.choice(["id", "zz", "../id", ""]), "--input", str(junk),
             "--output", str(out), "--no-progress", "--workers", rng.choice(["1", "0", "-3"])],
        ]
        for argv in commands:
            try:
                code = main(argv)
            except SystemExit as e:  # argparse: usage and one error line, exit 2
                code = e.code
            err = capsys.readouterr().err
            assert "Traceback" not in err, (argv, err)
            if argv[0] == "prep" and code == 0:  # junk as a text file is a valid (if odd) corpus
                continue
            assert code not in (0, None), (argv, err)
            assert any(x.startswith(("countrytune", "usage:")) or "error" in x for x in err.splitlines()), (argv, err)
            assert not out.exists() or argv[0] == "prep" or not any(out.iterdir()), (argv, list(out.iterdir()))
            cases += 1
    assert cases >= 90
