"""Plots drawn from a run's metrics.csv. matplotlib is imported lazily, with the file-only Agg backend."""

from pathlib import Path

from common.run import read_metrics


def _floats(rows: list[dict], split: str, column: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        if row["split"] == split and row.get(column, "") != "":
            xs.append(float(row["step"]))
            ys.append(float(row[column]))
    return xs, ys


def plot_run(metrics_csv: Path, out_dir: Path, title: str = "") -> list[Path]:
    """Draw loss, accuracy and learning-rate curves; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    panels = [
        ("loss", "loss", ["train", "val", "test"], True),
        ("acc", "accuracy", ["train", "val", "test"], False),
        ("lr", "learning rate", ["train"], False),
    ]
    for column, label, splits, log_y in panels:
        if not rows or column not in rows[0]:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = False
        for split in splits:
            xs, ys = _floats(rows, split, column)
            if not xs:
                continue
            style = "o" if len(xs) < 3 else "-"
            ax.plot(xs, ys, style, label=split)
            drawn = True
        if drawn:
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(label)
            if log_y:
                ax.set_yscale("log")
            ax.set_title(f"{title} {label}".strip())
            ax.grid(alpha=0.3)
            ax.legend()
            path = out_dir / f"{column}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=100)
            written.append(path)
        plt.close(fig)
    return written
