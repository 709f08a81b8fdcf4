"""YAML from users, read so that no input runs code or exhausts memory: the safe loader
(plain data only; any tag beyond YAML's own is refused), no aliases (an anchor-and-alias
"billion laughs" expands exponentially), no duplicate keys (the last one silently winning
hides a typo), and a bound on the text's size."""

from __future__ import annotations

from typing import Any

import yaml

from .errors import SpecError

__all__ = ["MAX_SPEC_BYTES", "load_yaml", "read_spec_text"]

MAX_SPEC_BYTES = 1 << 20   # a sweep spec is a page of YAML; 1 MiB is far beyond any real one


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"alias *{event.anchor} at line {event.start_mark.line + 1}: "
                                 "aliases are not accepted in specs (write the value out)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.YAMLError(f"duplicate key {key!r} at lines {seen[key]} and "
                                     f"{key_node.start_mark.line + 1}: keep one")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> tuple[Any, yaml.Node | None]:
    """(the data, its composed node tree for line numbers); ``SpecError`` naming ``where``
    for anything that is not plain, bounded YAML."""
    if len(text.encode()) > MAX_SPEC_BYTES:
        raise SpecError(f"{where}: {len(text.encode())} bytes of YAML; a spec is at most "
                        f"{MAX_SPEC_BYTES} bytes (list axis values, not expanded trials)")
    try:
        node = yaml.compose(text, Loader=_StrictLoader)
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise SpecError(f"{where}: not valid for a spec: {' '.join(str(e).split())}") from None
    except RecursionError:          # [[[[…]]]] thousands deep: no spec nests past a few
        raise SpecError(f"{where}: nested too deeply to be a spec (a spec's values are at "
                        "most lists of lists)") from None
    return data, node


def read_spec_text(path, what: str = "sweep spec") -> str:
    """A spec file's text: ``SpecError`` for a file that is not UTF-8 text (a binary file
    named by mistake)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file, so not a {what} (a YAML file is "
                        "UTF-8 text)") from None
