from . import datasets  # noqa: F401  (registration)
