"""GDKVM network package: ``from scripts.gdkvm import GDKVM``."""

from .memory import UPDATE_RULES, LinearKeyValueMemory, StateGates, apply_update_rule, read_memory, tokens_from_map
from .network import GDKVM, SIZES, GDKVMState, aggregate_objects

__all__ = [
    "GDKVM",
    "GDKVMState",
    "SIZES",
    "UPDATE_RULES",
    "LinearKeyValueMemory",
    "StateGates",
    "aggregate_objects",
    "apply_update_rule",
    "read_memory",
    "tokens_from_map",
]
