"""The training curve of a stage as a picture: the loss of each log window and the validation
PSNR-Y against the iteration (what :func:`workbench.train.loop.fit` returns under ``curve``)."""
from __future__ import annotations

import os
from typing import Any, Mapping

__all__ = ["write_curve"]


def write_curve(curve: Mapping[str, Any], path: str | os.PathLike, *, title: str) -> bool:
    """Draw ``curve`` ({"loss": [[it, value], ...], "val": [[it, psnr_y], ...]}) to the PNG
    ``path``; False (nothing written) when it holds no point."""
    loss = [(int(i), float(v)) for i, v in curve.get("loss", [])]
    val = [(int(i), float(v)) for i, v in curve.get("val", [])]
    if not loss and not val:
        return False
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from workbench.core.files import atomic_save_figure

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    handles = []
    if loss:
        handles += ax.plot([i for i, _ in loss], [v for _, v in loss], color="C0", lw=1.0,
                           label="loss (mean of each log window)")
        if min(v for _, v in loss) > 0:
            ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if val:
        ax2 = ax.twinx()
        handles += ax2.plot([i for i, _ in val], [v for _, v in val], "o-", color="C3", ms=3, lw=1.2,
                            label="validation PSNR-Y (dB)")
        best_i, best_v = max(val, key=lambda p: p[1])
        ax2.annotate(f"{best_v:.3f}", (best_i, best_v), textcoords="offset points", xytext=(0, 6),
                     ha="center", fontsize=7, color="C3")
        ax2.set_ylabel("PSNR-Y (dB)")
        ax2.margins(y=0.15)  # room for the label of the best point
    ax.set_title(title, fontsize=9)
    # below the axes: inside, it would hide part of one curve or the other
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
              frameon=False)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    return True
