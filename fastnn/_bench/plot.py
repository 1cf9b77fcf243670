"""``--plot``: the speed-ups as a bar chart (matplotlib, imported only when asked)."""
from fastnn._bench.harness import geomean

__all__ = ["write_plot"]


def write_plot(path, results_by_family, title, busy=None):
    """Horizontal log-scale bars from 1x: speed-up vs NumPy and vs torch per case.

    ``busy(result)``: whether the case was disturbed by other processes; such a
    case's label ends in `` *`` as in the table, and the plot says what it means."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = []
    marked = False
    many = len(results_by_family) > 1
    for fam, results in results_by_family.items():
        for r in results:
            label = f"{fam}: {r.case.name}" if many else r.case.name
            if busy is not None and busy(r):
                label += " *"
                marked = True
            rows.append((label, r.ratios.get("vs_numpy"), r.ratios.get("vs_torch")))
        gn = geomean(r.ratios.get("vs_numpy") for r in results)
        gt = geomean(r.ratios.get("vs_torch") for r in results)
        if results:
            rows.append((f"{fam}: geomean" if many else "geomean", gn, gt))
    if not rows:
        return None
    n = len(rows)
    fig = Figure(figsize=(11, 1.3 + 0.34 * n))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    h = 0.38
    ys = list(range(n))[::-1]
    values = [v for row in rows for v in row[1:] if v]
    for label, idx, color, off in (("vs NumPy", 1, "#1f77b4", h / 2), ("vs torch", 2, "#ff7f0e", -h / 2)):
        pts = [(y + off, row[idx]) for y, row in zip(ys, rows) if row[idx]]
        if not pts:
            continue
        # Bars start at 1x, so a slow-down points left and a speed-up right.
        ax.barh([p[0] for p in pts], [v - 1.0 for _, v in pts], left=1.0, height=h,
                color=color, label=label)
        for y, v in pts:
            ax.text(v * (1.03 if v >= 1 else 1 / 1.03), y, f"{v:.2f}x", va="center",
                    ha="left" if v >= 1 else "right", fontsize=7)
    ax.set_xscale("log")
    lo, hi = min(values + [1.0]), max(values + [1.0])
    ax.set_xlim(lo / 1.5, hi * 1.5)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([row[0] for row in rows], fontsize=8, family="monospace")
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("speed-up of fastnn = peer time / fastnn time (> 1: fastnn faster; log scale)")
    if marked:
        title += "\n* other processes kept CPUs busy during the case: its times are unreliable"
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig
