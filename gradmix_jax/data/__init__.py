"""Open-set data: protocol class splits and host-memory loaders."""

from gradmix_jax.data.base import OpenSetData, remap_labels
from gradmix_jax.data.protocols import (PROTOCOLS, openness, protocol_classes,
                                        resolve_known_classes)


def load_openset(protocol: str, split: int, known_classes=(), data_dir: str | None = None
                 ) -> OpenSetData:
    """Loads one open-set split of ``protocol`` into host memory (uint8 images)."""
    known, unknown = resolve_known_classes(protocol, split, known_classes)
    if protocol == "digits":
        from gradmix_jax.data.digits import load_digits_openset
        return load_digits_openset(known, unknown)
    raise ValueError(f"data.protocol={protocol!r} has no data loader in this version; allowed: ['digits']")


__all__ = ["OpenSetData", "PROTOCOLS", "load_openset", "openness", "protocol_classes",
           "remap_labels", "resolve_known_classes"]
