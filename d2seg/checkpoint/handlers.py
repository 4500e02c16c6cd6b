"""iopath handlers on Detectron2's PathManager (as Detectron2 registers ``detectron2://``), so that
``MODEL.WEIGHTS``, ``SegCheckpointer.load`` and every tool take weights by name:

- ``mmseg://<method>/<config stem>``, ``open-mmlab://<name>``, ``torchvision://<name>`` -> the URL
  of the table (catalog.py), then the URL handler below;
- ``http://``, ``https://``, ``ftp://`` -> :class:`VerifiedHTTPURLHandler` (iopath's handler +
  mirror + sha256 check + clean failures; download.py).

Registered when ``d2seg.checkpoint`` is imported.
"""
from detectron2.utils.file_io import PathHandler, PathManager

from .catalog import IMAGENET_PREFIXES, MMSEG_PREFIX, resolve_name
from .download import VerifiedHTTPURLHandler

__all__ = ["WeightsNameHandler", "register_handlers"]


class WeightsNameHandler(PathHandler):
    """Resolves ``mmseg://``, ``open-mmlab://`` and ``torchvision://`` names to their URL."""

    def _get_supported_prefixes(self):
        return [MMSEG_PREFIX, *IMAGENET_PREFIXES]

    def _get_local_path(self, path, **kwargs):
        return PathManager.get_local_path(resolve_name(path), **kwargs)

    def _open(self, path, mode="r", **kwargs):
        return PathManager.open(resolve_name(path), mode, **kwargs)


def register_handlers() -> None:
    """Idempotent: the handlers replace any earlier registration of their prefixes."""
    PathManager.register_handler(VerifiedHTTPURLHandler(), allow_override=True)
    PathManager.register_handler(WeightsNameHandler(), allow_override=True)


register_handlers()
