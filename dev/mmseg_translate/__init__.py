"""MMSegmentation 0.30 config -> d2seg yaml translation (dev tool behind dev/generate_configs.py).

- ``read``: mmseg's configs, head classes and metafiles; ``datasets``: mmseg's datasets;
- ``translation``: one config -> a d2seg cfg (heads, data, schedule), the backbone by its family;
- ``registry``: the families table (``FAMILY_MODULES``: resnet, hrnet, bisenetv2, ...), head args;
- ``write``: yamls (keys differing from the parent, round-tripped) and READMEs.
"""
