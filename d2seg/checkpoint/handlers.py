"""iopath handlers on Detectron2's PathManager (as Detectron2 registers ``detectron2://``), so that
``MODEL.WEIGHTS``, ``SegCheckpointer.load`` and every tool take weights by name:

- ``mmseg://<method>/<config stem>``, ``open-mmlab://<name>``, ``torchvision://<name>`` -> the URL
  of the table (catalog.py), then the URL handler below;
- ``https://download.openmmlab.com/...`` (where every mmseg/mmcv weight lives) and the torchvision
  URLs of the table -> :class:`CatalogURLHandler` (iopath's handler + mirror + sha256 check +
  clean failures; download.py).

Every other URL (``detectron2://``, Detectron2's model zoo, any other host) is served by the
handlers Detectron2 registered, as before d2seg was imported. Registered when
``d2seg.checkpoint`` is imported.
"""
from detectron2.utils.file_io import PathHandler, PathManager

from .catalog import IMAGENET_PREFIXES, MMSEG_PREFIX, OPENMMLAB_URL, resolve_name, table_urls
from .download import VerifiedHTTPURLHandler

__all__ = ["CatalogURLHandler", "WeightsNameHandler", "register_handlers"]


class CatalogURLHandler(VerifiedHTTPURLHandler):
    """The verified download for d2seg's weights only: OpenMMLab's download host and the other
    URLs of d2seg's table; iopath keeps serving every other http(s) URL."""

    def _get_supported_prefixes(self):
        return [OPENMMLAB_URL + "/"] + sorted(
            u for u in table_urls() if not u.startswith(OPENMMLAB_URL + "/"))


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
    PathManager.register_handler(CatalogURLHandler(), allow_override=True)
    PathManager.register_handler(WeightsNameHandler(), allow_override=True)


register_handlers()
