"""``morphzoo view``: a local web page to explore a model (sliders, samples, interpolation, error heat-maps, LAMM
region edits, NMF part swaps). :mod:`.session` answers the page's questions with the model; :mod:`.server` serves the
page (three.js vendored from the npm registry, no network needed) and the JSON API."""

from morphzoo.explorer.server import ExplorerServer, serve
from morphzoo.explorer.session import ExplorerError, ExplorerSession

__all__ = ["ExplorerError", "ExplorerServer", "ExplorerSession", "serve"]
