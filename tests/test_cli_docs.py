"""docs/cli.md shows every command's --help exactly as the command prints it (tools/make_cli_docs.py writes it)."""
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("make_cli_docs", ROOT / "tools" / "make_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_help_in_docs_matches_the_command():
    stale = _tool().stale_helps()
    assert not stale, (f"docs/cli.md is out of date for {[h.strip() for h in stale]}: "
                       "run `python tools/make_cli_docs.py --help-only`")


def test_every_command_and_subcommand_has_a_help_block():
    from k25ref.cli import main
    sections = _tool().help_sections()
    names = {" ".join(h.split("`")[1].split()[1:-1]) for h in sections}
    expected = {""} | set(main.commands) | {f"{n} {s}" for n, c in main.commands.items() for s in getattr(c, "commands", {})}
    assert names == expected


def test_the_check_sees_a_changed_help(tmp_path):
    """The drift check is not vacuous: a page with one help line altered is reported, the rest is not."""
    tool = _tool()
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    altered = page.replace("(TEXT '-' reads stdin)", "(TEXT - reads stdin)", 1)
    assert altered != page
    (tmp_path / "cli.md").write_text(altered, encoding="utf-8")
    assert tool.stale_helps(str(tmp_path / "cli.md")) == ["### `k25ref tokenize --help`\n"]


def test_help_only_keeps_the_examples(tmp_path, monkeypatch):
    """--help-only rewrites the help blocks and keeps the examples section byte for byte."""
    tool = _tool()
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    stale = page.replace("Show the ids and pieces of TEXT", "old words", 1)
    (tmp_path / "cli.md").write_text(stale, encoding="utf-8")
    monkeypatch.setattr(tool, "PAGE", str(tmp_path / "cli.md"))
    monkeypatch.setattr("sys.argv", ["make_cli_docs.py", "--help-only"])
    tool.main()
    new = (tmp_path / "cli.md").read_text(encoding="utf-8")
    assert tool.split_page(new)[1] == tool.split_page(page)[1] != ""
    assert tool.stale_helps(str(tmp_path / "cli.md")) == []
