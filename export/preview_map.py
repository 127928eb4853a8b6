"""The live-preview map (``sdlite.preview``) fitted at export time, with the exported decoder.

The runtime fits the map on a model's first preview and caches it as preview.json beside the
model when it can; an export folder is often read-only where it is deployed (or shared), so
every process would refit.  Here the exported folder is loaded by the runtime itself, so the
map is fitted on exactly the decoder and graph facts (static size, batch, encoder) the runtime
will see, and written where its cache check (format, decoder file and size) accepts it as is.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ExportError

NO_KERNELS = ("NOT_IMPLEMENTED", "Could not find an implementation")
SKIPPED = "no kernels for this graph on {provider}; the runtime fits it on first use"


def write_preview_map(folder: Path, providers: list[str]) -> dict:
    """Fit and write ``folder``/preview.json; what sdlite.json records about it.

    A graph this machine has no kernels for (a --target cuda export on a CPU-only machine) is
    recorded as skipped: the runtime then fits the map on first use, as for any folder.
    """
    from sdlite.pipeline import Pipeline
    from sdlite.preview import PREVIEW_FILE

    try:
        pipe = Pipeline.from_pretrained(folder, providers)
        preview_map = pipe.preview_map  # fits, then saves into the folder (temporary name, rename)
    except Exception as exc:  # noqa: BLE001 - judged below, as the validation's run errors are
        text = str(exc)
        if any(mark in text for mark in NO_KERNELS):
            return {"skipped": SKIPPED.format(provider=providers[0])}
        raise ExportError(f"preview map: the runtime could not load the exported folder: {exc}") from exc
    if not (folder / PREVIEW_FILE).is_file():
        raise ExportError(f"preview map: {PREVIEW_FILE} was not written into {folder}")
    return {
        "file": PREVIEW_FILE,
        "fitted_on": providers[0],
        "latent_channels": int(preview_map.weights.shape[0]),
    }
