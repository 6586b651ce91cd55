"""Pictures of an episode: the Gantt timeline, and quality against wall time like the paper's Fig. 8.

Both use matplotlib's object API (Figure + Agg canvas), never pyplot's global state, so they are
safe to call from tests and from the CLI.
"""
from __future__ import annotations

from k25ref.swarm.events import Trace

_OUTCOME_COLORS = {"ok": "tab:green", "not_found": "tab:olive", "bad_args": "tab:red",
                   "transient": "tab:orange", "timeout": "tab:purple"}
_STATUS_COLORS = {"finished": "#dbe9f6", "cancelled": "#eeeeee", "timeout": "#f8d7d7", "max_steps": "#fbe5c8"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def gantt(trace: Trace, path: str, title: str = "") -> str:
    """One lane per agent (orchestrator on top): its sub-agent lifetime as a pale band, model
    generations as dark bars, tool calls as thin bars below them coloured by outcome; a legend names
    each colour present. Saved as a PNG at `path`."""
    gantt_figure(trace, title).savefig(path, dpi=110)
    return path


def gantt_figure(trace: Trace, title: str = ""):
    """The Gantt chart of `gantt` as a matplotlib Figure."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    lanes = ["main"] + [s["name"] for s in trace.subagents if s["name"] != "main"]
    lanes = list(dict.fromkeys(lanes))
    y = {name: i for i, name in enumerate(lanes)}
    fig = _figure(11, 1.2 + 0.32 * len(lanes))
    ax = fig.add_subplot(1, 1, 1)
    for s in trace.spans:
        row = y[s["lane"]]
        width = max(s["end"] - s["start"], 0.5)
        if s["kind"] == "subagent":
            ax.barh(row, width, left=s["start"], height=0.9, color=_STATUS_COLORS.get(s["outcome"], "#dddddd"),
                    zorder=0)
        elif s["kind"] == "llm":
            ax.barh(row - 0.15, width, left=s["start"], height=0.35, color="tab:blue", zorder=2)
        else:
            ax.barh(row + 0.22, width, left=s["start"], height=0.18,
                    color=_OUTCOME_COLORS.get(s["outcome"], "gray"), alpha=0.6, zorder=1)
    ax.axvline(trace.end, color="black", lw=0.8, ls="--")
    ax.set_yticks(range(len(lanes)), labels=lanes, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("virtual wall time (ticks)")
    ax.set_title(title or "timeline: model steps (blue), tool calls (thin, by outcome), sub-agents (bands)",
                 fontsize=9)
    present = {(s["kind"] if s["kind"] in ("subagent", "llm") else "tool", s["outcome"]) for s in trace.spans}
    handles = [Patch(color="tab:blue", label="model step")] if any(k == "llm" for k, _ in present) else []
    handles += [Patch(color=c, alpha=0.6, label=f"tool call: {o}") for o, c in _OUTCOME_COLORS.items()
                if ("tool", o) in present]
    handles += [Patch(color=c, label=f"sub-agent: {o}") for o, c in _STATUS_COLORS.items() if ("subagent", o) in present]
    handles.append(Line2D([], [], color="black", lw=0.8, ls="--", label="end of episode"))
    ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.005, 1), frameon=False)
    fig.tight_layout()
    return fig


def quality_vs_time(curves: dict[str, list[tuple[int, float]]], path: str, title: str = "") -> str:
    """Item-F1 of the orchestrator's running table against wall ticks, one step line per policy."""
    fig = _figure(7, 4)
    ax = fig.add_subplot(1, 1, 1)
    for name, points in curves.items():
        ts, f1 = [0] + [t for t, _ in points], [0.0] + [f for _, f in points]
        ax.step(ts, f1, where="post", label=name)
    for target in (0.3, 0.5, 0.7):
        ax.axhline(target, color="gray", lw=0.5, ls=":")
    ax.set_xlabel("virtual wall time (ticks)")
    ax.set_ylabel("item-F1 of the running table")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.set_title(title or "quality vs time", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
