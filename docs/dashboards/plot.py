"""Draw the shipped dashboards' panels from a real e2e run's Prometheus data (matplotlib).

The data comes from the e2e scaling test that checks every dashboard query
(``DISAGG_E2E_DASHBOARD_DATA=/tmp/dashboards.json pytest e2e/test_scaling.py -k idle_model``);
this script draws one PNG per dashboard next to itself, so a reader sees what the panels show
without a Grafana (which cannot be installed on the machines this project is tested on).

    .venv/bin/python docs/dashboards/plot.py /tmp/dashboards.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent


def _label(template: str, metric: dict[str, str]) -> str:
    out = template
    for key, value in metric.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def draw(board: str, panels: dict[str, list[dict[str, Any]]], start: float, out: Path) -> None:
    titles = list(panels)
    columns = 2
    rows = math.ceil(len(titles) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(13, 3.1 * rows), squeeze=False)
    for index, title in enumerate(titles):
        ax = axes[index // columns][index % columns]
        for query in panels[title]:
            for series in query["series"]:
                points = [(float(t) - start, float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, label=_label(query["legend"], series["metric"]), linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds into the run", fontsize=8)
        ax.tick_params(labelsize=8)
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=7, loc="upper left", ncol=2)
        ax.grid(alpha=0.3)
    for index in range(len(titles), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle(f"disagg: {board} dashboard (e2e run, real Prometheus data)", fontsize=12)
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    plt.close(figure)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    data = json.loads(Path(argv[0]).read_text())
    for board, panels in data["panels"].items():
        out = HERE / f"{board}.png"
        draw(board, panels, float(data["start"]), out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
