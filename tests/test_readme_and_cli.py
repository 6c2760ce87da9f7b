"""The README's example and the `umarvel demo` command run as written."""

from __future__ import annotations

import re
from pathlib import Path

import umarvel_st
from umarvel_st.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    (tmp_path / "umarvel_st").symlink_to(Path(umarvel_st.__file__).parent)  # the README runs from the repo root
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "my-umarvel" / "modules.json").is_file()


def test_readme_starts_with_the_two_setup_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("```bash")
    assert lines[start + 1].endswith("umarvel demo")
    assert "pytest" in lines[start + 2] and lines[start + 3] == "```"


def test_demo_retrieves_with_the_embedded_model(capsys, tmp_path):
    from umarvel_st.data.synthetic import make_synthetic_mbeir

    make_synthetic_mbeir(tmp_path / "data", test_queries=6, train_queries=1, pool_size=20)
    assert main(["demo", "--data", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\w+_task\d .*\d+\.\d% +\d+\.\d%$", line)]
    assert len(rows) == 7
    assert sum(line.startswith("  query ") for line in out.splitlines()) == 6 and "(* marks a correct hit)" in out


def test_readme_finetune_command_runs_as_written(tmp_path, monkeypatch):
    import json
    import shlex

    command = next(
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("umarvel train finetune")
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "umarvel_st").symlink_to(Path(umarvel_st.__file__).parent)
    rows = [{"query": f"query {i}", "positive": f"document {i}", "instruction": "Find it."} for i in range(4)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    assert main(shlex.split(command)[1:]) == 0
    assert (tmp_path / "runs" / "finetune" / "01-pairs" / "model" / "modules.json").is_file()


def _readme_commands(section: str) -> list[list[str]]:
    """The ``umarvel`` command lines of the first bash block after the README heading ``section``."""
    import shlex

    text = (ROOT / "README.md").read_text()
    block = re.search(re.escape(section) + r"\n.*?```bash\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("umarvel ")]


def test_readme_mbeir_evaluation_commands_run_as_written(tmp_path, monkeypatch):
    import json

    commands = _readme_commands("## Evaluation on M-BEIR")
    assert [words[:2] for words in commands] == [["umarvel", "make-synthetic"], ["umarvel", "eval"]]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "umarvel_st").symlink_to(Path(umarvel_st.__file__).parent)
    for words in commands:
        assert main(words[1:]) == 0, words
    output = Path(commands[1][commands[1].index("--output") + 1])
    results = json.loads((output / "results.json").read_text())
    assert 0.0 <= results["average"] <= 1.0 and len(results["tasks"]) == 7
    assert (output / "report.md").is_file() and (output / "report.png").stat().st_size > 0


def test_importing_the_package_is_light():
    """``import umarvel_st`` (and so the first line of every command) does not wait for torch."""
    import subprocess
    import sys

    code = "import sys, umarvel_st; print(sorted({'torch', 'sentence_transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
    assert all(callable(getattr(umarvel_st, name)) for name in umarvel_st.__all__)  # exported on first use
