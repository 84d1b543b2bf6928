"""The diversity figure (the locally weighted model's Fig. 6): both projections, one colour and ellipse per set."""

import numpy as np
from matplotlib import image

from morphzoo.zoo.figures import plot_encoding_diversity


def test_encoding_diversity_draws_every_set_in_its_colour(tmp_path):
    rng = np.random.default_rng(0)
    codes = {"train": rng.normal(0, 1, (40, 8)), "test": rng.normal(5, 1, (30, 8)), "synthesis": rng.normal(-5, 2,
                                                                                                            (25, 8))}
    path = plot_encoding_diversity(tmp_path / "diversity.png", codes)
    pixels = image.imread(path)[..., :3]
    tab10 = np.array([[0.122, 0.467, 0.706], [1.0, 0.498, 0.055], [0.173, 0.627, 0.173]])  # matplotlib's C0-C2
    for colour in tab10:
        assert (np.abs(pixels - colour).max(axis=-1) < 0.02).sum() > 200, colour
    assert not (np.abs(pixels - [0.839, 0.153, 0.157]).max(axis=-1) < 0.02).any(), "a fourth set (C3) was drawn"
