"""Shared pieces of the mmseg -> d2seg config translation: the error, the reader that makes sure
every mmseg key is consumed (``Node``) and d2seg cfg helpers."""
import os
import sys
from collections import OrderedDict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for _p in (REPO, os.path.join(REPO, "dev")):  # d2seg, and dev/mmseg_peer.py
    if _p not in sys.path:
        sys.path.insert(0, _p)


class TranslationError(RuntimeError):
    pass


# ---- reading an mmseg config: every key must be consumed ---------------------------------------
_MISSING = object()


def _norm(v):
    """Tuples as lists (mmseg mixes them freely), recursively."""
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


class Node:
    """One mmseg config dict whose keys must all be read: ``take`` pops a key, ``node`` wraps a
    sub-dict (whose keys must then be read too), ``expect`` pops and checks a value; ``leftover``
    lists the keys nobody read."""

    def __init__(self, d, path):
        self.d, self.path, self.children = dict(d), path, []

    def _p(self, key):
        return f"{self.path}.{key}" if self.path else key

    def has(self, key):
        return key in self.d

    def take(self, key, default=_MISSING):
        if key not in self.d:
            if default is _MISSING:
                raise TranslationError(f"mmseg key {self._p(key)} is missing")
            return default
        return self.d.pop(key)

    def node(self, key, default=_MISSING):
        v = self.take(key, {} if default is _MISSING else default)
        if not isinstance(v, dict):
            raise TranslationError(f"mmseg key {self._p(key)} = {v!r}: expected a dict")
        child = Node(v, self._p(key))
        self.children.append(child)
        return child

    def items(self):
        """Consumes and returns all remaining (key, value) pairs."""
        out = list(self.d.items())
        self.d.clear()
        return out

    def expect(self, key, value, default=_MISSING):
        v = self.take(key, default)
        if _norm(v) != _norm(value):
            raise TranslationError(
                f"mmseg key {self._p(key)} = {v!r}: d2seg only supports {value!r} here")
        return v

    def leftover(self):
        out = [self._p(k) for k in self.d]
        for c in self.children:
            out += c.leftover()
        return out


# ---- d2seg cfg helpers -----------------------------------------------------------------------
def new_cfg(config_file=None):
    from detectron2.config import get_cfg

    import d2seg

    cfg = get_cfg()
    d2seg.add_d2seg_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    return cfg


def cfg_get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def cfg_set(cfg, key, value):
    """Sets an existing key, coercing the value to the key's type as yacs would require."""
    *parents, last = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    if last not in node:
        raise TranslationError(f"d2seg has no config key {key}")
    old = node[last]
    if old is None or value is None:  # an optional key (yacs takes None <-> any type)
        node[last] = value
        return
    if isinstance(old, bool):
        pass
    elif isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)):
        value = type(old)(value)
    if not (isinstance(value, type(old)) or (isinstance(old, (list, tuple))
                                             and isinstance(value, (list, tuple)))):
        raise TranslationError(f"{key}: {value!r} does not fit the type of {old!r}")
    node[last] = value


def flatten_cfg(cfg, prefix=""):
    from detectron2.config import CfgNode

    out = OrderedDict()
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, CfgNode):
            out.update(flatten_cfg(v, key + "."))
        else:
            out[key] = v
    return out


def _plain(v):
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v



def _same(a, b):
    return _norm(a) == _norm(b)

