"""The custom loop of docs/custom_training.rst runs as printed."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).parents[2] / "docs" / "custom_training.rst"


def test_the_custom_loop_of_the_docs_runs(tmp_path, monkeypatch, capsys):
    text = PAGE.read_text()
    block = re.search(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text).group(1)
    code = "\n".join(line[4:] for line in block.splitlines())
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(PAGE), "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 0", "epoch 1", "epoch 2"]
    nll = [float(re.search(r"NLL (\S+),", line).group(1)) for line in lines]
    assert nll[-1] < nll[0]
    assert (tmp_path / "runs" / "custom-loop" / "checkpoint.pt").is_file()
