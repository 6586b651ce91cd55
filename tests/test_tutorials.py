"""Every tutorial runs as a script and asserts its own claims, so none can rot (style §5.10).

Each `tutorials/NN_*.py` runs in a fresh interpreter (matplotlib's Agg backend, no display, no network)
with `--figures DIR`, must exit 0 within its time limit, and must leave its PNG figures in DIR. The format
checks keep the files jupytext percent scripts with the house header.
"""
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
HANG_SECONDS = 600            # a guard against a hang, not a speed check: times are in docs/index.md


def run(path, figures, *args, env=None):
    env = {**os.environ, "MPLBACKEND": "Agg", **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(path), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=HANG_SECONDS)
    return proc, time.perf_counter() - t0


def test_there_are_ten_tutorials_and_no_notebooks():
    assert [p.name[:2] for p in TUTORIALS] == [f"{k:02d}" for k in range(1, 11)]
    assert not list((ROOT / "tutorials").glob("*.ipynb")), "commit the .py source, never the .ipynb"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_format(path):
    """jupytext percent header, the You will learn / Needs / Runs in line, an equation, and assert cells."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# ---\n# jupyter:\n#   jupytext:\n#     formats: py:percent"), "jupytext header"
    assert re.search(r"^# # \d\d · ", text, re.M), "title cell '# # NN · topic'"
    for field in ("**You will learn**", "**Needs**", "**Runs in**"):
        assert field in text, f"header lacks {field}"
    assert "$$" in text, "the equation the tutorial is about"
    assert text.count("\nassert ") + text.count("    assert ") >= 3, "a tutorial asserts its claims"
    assert "K25REF_FIGURES" in text and "--figures" in text
    assert "urllib" not in text and "requests" not in text, "tutorials never need the network"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(path, tmp_path):
    proc, seconds = run(path, tmp_path, "--figures", str(tmp_path))
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    pictures = list(tmp_path.glob(f"{path.name[:2]}_*.png"))
    assert pictures, f"{path.name} drew no figure into --figures"
    assert all(p.stat().st_size > 5000 for p in pictures), "an empty figure"
    print(f"\n{path.name}: {seconds:.1f} s, {len(pictures)} figure(s)")


def test_figures_folder_from_the_environment(tmp_path):
    """K25REF_FIGURES works as well as --figures."""
    path = next(p for p in TUTORIALS if p.name.startswith("02_"))
    proc, _ = run(path, tmp_path, env={"K25REF_FIGURES": str(tmp_path / "env")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "env").glob("02_*.png"))


# ----------------------------------------------------------------------------
# the docs pages that map the model to code: links stay exact, figures stay reproducible


def _doc_tools():
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_doc_figures", ROOT / "tools" / "make_doc_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
LOCAL_LINK = re.compile(r"\]\(((?:\.\./|figures/|[a-z_]+\.md)[^)#\s]*)(?:#[^)\s]*)?\)")


def test_code_line_anchors_point_at_their_functions():
    """[`route`](../k25ref/moe.py#L19) must land on `def route`; `python tools/make_doc_figures.py anchors` fixes drift."""
    stale = _doc_tools().stale_anchors()
    assert not stale, "stale line anchors (page, name, file, linked, actual): " + "; ".join(map(str, stale))


@pytest.mark.parametrize("page", [DOCS / p for p in _doc_tools().OWN_PAGES], ids=lambda p: p.name)
def test_local_links_resolve(page):
    """Every relative link of the page (code, tutorials, figures, other pages) names an existing file."""
    broken = [target for target in LOCAL_LINK.findall(page.read_text(encoding="utf-8"))
              if not (page.parent / target).exists()]
    assert not broken, f"{page.name}: broken links {broken}"


def test_every_public_module_is_linked_from_a_docs_page():
    text = "".join(p.read_text(encoding="utf-8") for p in PAGES)
    modules = [p for p in (ROOT / "k25ref").glob("*.py") if not p.name.startswith("_")]
    unlinked = [m.name for m in modules if f"(../k25ref/{m.name})" not in text and f"(../k25ref/{m.name}#" not in text]
    assert not unlinked, f"modules no docs page links to: {unlinked}"
    for package in ("kernels", "swarm"):
        named = [m.name for m in (ROOT / "k25ref" / package).glob("*.py") if not m.name.startswith("_")]
        assert all(n in text for n in named), f"k25ref/{package}: modules no page names: " \
                                              f"{[n for n in named if n not in text]}"


def test_every_figure_shown_in_docs_is_made_by_a_command():
    """A figure a page shows exists and its file name appears in a tutorial or a tool that draws it."""
    sources = "".join(p.read_text(encoding="utf-8") for p in [*TUTORIALS, *(ROOT / "tools").glob("*.py")])
    shown = {name for p in PAGES for name in re.findall(r"figures/([\w.-]+\.png)", p.read_text(encoding="utf-8"))}
    assert "architecture.png" in shown
    for name in sorted(shown):
        assert (DOCS / "figures" / name).exists(), f"docs show figures/{name}, which is not committed"
        assert name in sources, f"figures/{name}: no tutorial or tool names it, so no command remakes it"
        assert (DOCS / "figures" / name).stat().st_size < 300_000, f"figures/{name} is too large for the repository"


# ----------------------------------------------------------------------------
# the tutorials as notebooks (the `tutorials` extra: jupytext, ipykernel, nbconvert)


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_converts_to_a_notebook(path):
    """`jupytext --to ipynb` gives a valid notebook of markdown and code cells that converts back to the same file."""
    jupytext = pytest.importorskip("jupytext")
    import nbformat
    notebook = jupytext.read(path)
    nbformat.validate(notebook)
    kinds = {cell.cell_type for cell in notebook.cells}
    assert kinds == {"markdown", "code"}, kinds
    body = lambda text: text[text.index("# ---\n", 5) + 6:]          # noqa: E731  (below the jupytext header)
    assert body(jupytext.writes(notebook, fmt="py:percent")) == body(path.read_text(encoding="utf-8"))


def test_a_tutorial_runs_as_a_notebook(tmp_path):
    """The README's command: convert and execute 03 as a notebook; its cells run and its figure is drawn."""
    for module in ("jupytext", "nbconvert", "ipykernel"):
        pytest.importorskip(module)
    import nbformat
    source = ROOT / "tutorials" / "03_mla.py"
    out = tmp_path / "03_mla.ipynb"
    proc = subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "--execute", "--output", str(out),
                           str(source)], cwd=tmp_path, env={**os.environ, "MPLBACKEND": "Agg"}, capture_output=True,
                          text=True, timeout=HANG_SECONDS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notebook = nbformat.read(out, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count for cell in code), "every code cell ran"
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert (tmp_path / "k25ref-figures" / "03_cache_bytes.png").stat().st_size > 5000


def test_without_figures_a_tutorial_says_where_they_went_and_leaves_no_temporary_folder(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "MPLBACKEND": "Agg", "TMPDIR": str(tmp)}
    env.pop("K25REF_FIGURES", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tutorials" / "02_rmsnorm_rope_yarn.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=HANG_SECONDS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = tmp_path / "k25ref-figures"
    assert f"figures go to {folder}" in proc.stdout
    assert list(folder.glob("02_*.png"))
    assert list(tmp.iterdir()) == []
