"""YAML for job files and ``--set`` values: PyYAML's SafeLoader, with what a job file never needs refused.

- Duplicate keys in a mapping (PyYAML keeps the last one silently).
- Nesting deeper than :data:`MAX_DEPTH` levels (PyYAML recurses until Python's limit).
- Documents that expand, through aliases, to more than :data:`MAX_NODES` nodes (a "billion
  laughs" alias bomb is a few lines of text but fills the memory once it is walked), and aliases
  that refer to themselves.
- YAML 1.1 base-60 numbers: ``14:16`` is the string ``"14:16"`` (a split), not the integer 856.

>>> load_yaml("split: {val: 14:16}")
{'split': {'val': '14:16'}}
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

#: Deepest nesting of mappings and lists accepted (a job file is 4 levels deep).
MAX_DEPTH = 32
#: Most nodes a document may hold once its aliases are expanded.
MAX_NODES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictYAMLError(yaml.YAMLError):
    """A document that PyYAML would read but a job file must not be; the message is one line."""


class StrictLoader(yaml.SafeLoader):
    """SafeLoader refusing duplicate keys, deep nesting and alias bombs; base-60 numbers stay text."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise StrictYAMLError(f"nesting deeper than {MAX_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None:
            expanded = _expanded_size(node, {}, set())
            if expanded > MAX_NODES:
                raise StrictYAMLError(f"aliases expand the document to more than {MAX_NODES} values")
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: SafeLoader names that
                continue
            if duplicate:
                raise StrictYAMLError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Node) -> int | str:
        text = self.construct_scalar(node)
        return text if ":" in text else super().construct_yaml_int(node)

    def construct_yaml_float(self, node: Node) -> float | str:
        text = self.construct_scalar(node)
        return text if ":" in text else super().construct_yaml_float(node)


StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)


def _expanded_size(node: Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many nodes ``node`` stands for with every alias expanded (each shared node counted per use)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise StrictYAMLError(f"an alias refers to itself (line {node.start_mark.line + 1})")
    open_nodes.add(key)
    size = 1
    if isinstance(node, SequenceNode):
        size += sum(_expanded_size(child, sizes, open_nodes) for child in node.value)
    elif isinstance(node, MappingNode):
        size += sum(_expanded_size(k, sizes, open_nodes) + _expanded_size(v, sizes, open_nodes) for k, v in node.value)
    open_nodes.discard(key)
    sizes[key] = size
    return size


def load_yaml(text: str) -> Any:
    """Parse one YAML document with :class:`StrictLoader`; yaml.YAMLError when it is unreadable."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader)


def yaml_problem(error: yaml.YAMLError) -> str:
    """One line naming what is wrong with a YAML text, and where."""
    if isinstance(error, StrictYAMLError):
        return str(error)
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or type(error).__name__
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
