"""One rank of the recipe under torchrun (run by test_recipe_ddp.py): train, then report.

Each rank trains the smoke recipe (motion per batch, at 2 mm) on the same synthetic heads and
writes what it trained on and where it ended: ``rank<R>.pt`` in the folder given.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torchio as tio

from motionqc.models.sfcn import SFCN
from motionqc.synthetic import batch_motion
from motionqc.synthetic import pool as motion_pool
from motionqc.training import recipe

CONFIG = recipe.RECIPES["smoke"].replace(
    sim_spacing_mm=2.0, sim_shape=(80, 96, 80), motion="batch", eval_every=2, steps=4
)


def head(seed: int) -> tio.ScalarImage:
    """A textured ellipsoid on a 2 mm grid."""
    rng = np.random.default_rng(seed)
    shape = (80, 96, 80)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    data = (np.sqrt((grid**2).sum(0)) < 0.8) * (1.0 + 0.3 * np.sin(6 * grid[0]))
    data = data + 0.05 * rng.random(shape)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1)
    return tio.ScalarImage(tensor=torch.as_tensor(data, dtype=torch.float32)[None], affine=affine)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    sources = {f"{h}~{k}": head(10 * i + k) for i, h in enumerate("ab") for k in range(2)}
    val = motion_pool.render_pool(sources, CONFIG, "val", 2, progress=False)
    val = (val[0], torch.tensor(val[1]["label"].to_numpy()))
    feed = batch_motion.MotionBatches(sources, CONFIG)
    seen: list[torch.Tensor] = []
    original = feed.batch

    def recording(step: int, part: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = original(step, part)
        seen.append(y)
        return x, y

    feed.batch = recording  # type: ignore[method-assign]
    torch.manual_seed(0)
    model = SFCN(n_outputs=50, channels=CONFIG.channels, dropout=CONFIG.dropout)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    history = recipe.train(model, feed, val, CONFIG, out / "run", log=False)
    full = [batch_motion.MotionBatches(sources, CONFIG).batch(s)[1] for s in range(CONFIG.steps)]
    rank = int(__import__("os").environ["RANK"])
    torch.save(
        {
            "start": start,
            "end": model.state_dict(),
            "labels": torch.stack(seen),
            "global_labels": torch.stack(full),
            "history": torch.tensor(history.drop(columns=["seconds"]).to_numpy(dtype=float)),
        },
        out / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
