from . import backbone, heads, meta_arch  # noqa: F401  (registration)
