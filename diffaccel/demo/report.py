"""The demo's report: a markdown file plus PNG figures in one folder.

Every number written goes through :func:`fmt`, which writes non-finite values as "n/a" (the
report's test parses every number and requires it finite)."""
import math
import os

import torch


def fmt(v, digits=4):
    """A number for the report: ``digits`` significant digits; 'n/a' when not finite."""
    if v is None:
        return "n/a"
    v = float(v)
    if not math.isfinite(v):
        return "n/a"
    if v == 0:
        return "0"
    if abs(v) >= 10 ** digits or abs(v) < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def image_grid(x, cols=8):
    """(N, 1, h, w) images in [-1, 1] -> one (rows*(h+1)+1, cols*(w+1)+1) uint8 array."""
    x = x.detach().float().cpu().clamp(-1, 1)
    n, _, h, w = x.shape
    cols = min(cols, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    canvas = torch.full((rows * (h + 1) + 1, cols * (w + 1) + 1), 0.35)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = (x[i, 0] + 1) / 2
    return (canvas * 255).round().to(torch.uint8).numpy()


class Report:
    """Collects markdown lines and writes figures into ``out`` as it goes."""

    def __init__(self, out):
        self.out = os.path.abspath(out)
        os.makedirs(self.out, exist_ok=True)
        self.lines = []
        self.figures = []

    def h(self, title, level=2):
        self.lines += [f"{'#' * level} {title}", ""]

    def p(self, text):
        self.lines += [text, ""]

    def table(self, header, rows):
        """A markdown table (diffaccel.bench's formatter): strings as they are, numbers by fmt."""
        from ..bench import Col, format_table

        self.lines += format_table([Col(h, fmt=fmt, align="<") for h in header], rows,
                                   markdown=True).split("\n") + [""]

    def image(self, name, caption):
        self.figures.append(name)
        self.lines += [f"![{caption}]({name})", ""]

    def save_fig(self, fig, name, caption):
        import matplotlib.pyplot as plt

        fig.savefig(os.path.join(self.out, name), dpi=90, bbox_inches="tight")
        plt.close(fig)
        self.image(name, caption)

    def grids(self, panels, name, caption, cols=8, scale=3.0):
        """One PNG with a titled grid of samples per panel: ``panels`` is [(title, (N,1,h,w))]."""
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(panels), figsize=(scale * len(panels), scale * 1.1), squeeze=False)
        for ax, (title, x) in zip(axes[0], panels):
            ax.imshow(image_grid(x[:cols * cols], cols), cmap="gray", vmin=0, vmax=255,
                      interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        self.save_fig(fig, name, caption)

    def write(self):
        path = os.path.join(self.out, "report.md")
        with open(path, "w") as f:
            f.write("\n".join(self.lines).rstrip() + "\n")
        return path
