from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_command_reference_is_current():
    from assistant._helpdoc import render

    text = README.read_text(encoding="utf-8")
    assert render(text) == text, "README is stale: run `python -m assistant._helpdoc README.md`"


def test_readme_starts_with_the_two_commands_ci_runs():
    text = README.read_text(encoding="utf-8")
    blocks = [b.split("```")[0].strip() for b in text.split("```bash\n")[1:3]]
    assert "ragdesk chat" in blocks[0] and "pip install" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert blocks[1] in ci
