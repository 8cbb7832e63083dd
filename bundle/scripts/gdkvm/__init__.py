"""GDKVM network package: ``from scripts.gdkvm import GDKVM``."""

from .memory import UPDATE_RULES, LinearKeyValueMemory, StateGates, apply_update_rule, read_memory, tokens_from_map
from .network import GDKVM, SIZES, GDKVMState, aggregate_objects
from .softmax_memory import GDKVMSoftmaxMemory

__all__ = [
    "GDKVM",
    "GDKVMSoftmaxMemory",
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
