"""The libyaml fast paths of the targets loader, apart from its validator.

libyaml composes a targets file about ten times faster than PyYAML, and streamed
one service at a time it keeps a 10,000-endpoint file's memory flat. These
functions only decide whether libyaml may be trusted with a text (it reads it
exactly as PyYAML would) and hand nodes to the validator (``probe.targets``),
which keeps every rule and every error message. They refuse to judge anything:
whatever they do not read alike returns "failed", and the validator's usual
PyYAML path then names the line and the problem.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import yaml

__all__ = ["FAST_FAILED", "compose_fast", "libyaml_agrees", "stream_document"]

FAST_FAILED = object()
MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
_NON_PRINTABLE = yaml.reader.Reader.NON_PRINTABLE

ServiceT = TypeVar("ServiceT")
ResultT = TypeVar("ResultT")


def compose_fast(text: str) -> yaml.Node | None | object:
    """The node tree from libyaml (ten times faster), or FAST_FAILED.

    Only for text both parsers read alike: anything libyaml refuses, any
    character PyYAML's reader refuses, tabs (libyaml takes "p\\tort:" as a key,
    PyYAML refuses the tab) and unquoted "?" or ":" inside [...] or {...}
    (which end a plain scalar there for PyYAML, not for libyaml) go to
    PyYAML, whose errors name the line and the problem in the words our
    messages (and tests) use. Nodes carry the same line numbers either way
    (tests/test_targets_fast.py compares the two parsers).
    """
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is None or "\t" in text or _NON_PRINTABLE.search(text):
        return FAST_FAILED
    try:
        root = yaml.compose(text, Loader=loader)
    except (yaml.YAMLError, RecursionError, ValueError, TypeError):
        return FAST_FAILED
    return root if libyaml_agrees(root) else FAST_FAILED


def libyaml_agrees(root: yaml.Node) -> bool:
    """False if a plain "?" or ":" inside [...] or {...} would read differently."""
    stack = [(root, False)]
    seen: set[tuple[int, bool]] = set()  # aliases share nodes, and "&a [*a]" is a cycle
    while stack:
        node, in_flow = stack.pop()
        if (id(node), in_flow) in seen:
            continue
        seen.add((id(node), in_flow))
        if isinstance(node, yaml.ScalarNode):
            # plain (unquoted): style None from PyYAML, "" from libyaml
            if in_flow and not node.style and ("?" in node.value or ":" in node.value):
                return False
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, in_flow or bool(node.flow_style)) for item in node.value]
        elif isinstance(node, yaml.MappingNode):
            flow = in_flow or bool(node.flow_style)
            stack += [(part, flow) for pair in node.value for part in pair]
    return True


_CParser = getattr(getattr(yaml, "cyaml", None), "CParser", None)  # None: no libyaml


if _CParser is not None:

    class _EventComposer(_CParser, yaml.composer.Composer, yaml.resolver.Resolver):  # type: ignore[misc,valid-type]
        """libyaml's events, composed into nodes by PyYAML's composer a subtree at a time."""

        def __init__(self, text: str) -> None:
            super().__init__(text)  # yaml.cyaml.CParser, first in the MRO: libyaml's parser
            yaml.composer.Composer.__init__(self)
            yaml.resolver.Resolver.__init__(self)

        def subtree(self, parent: yaml.Node | None, index: object) -> yaml.Node:
            return yaml.composer.Composer.compose_node(self, parent, index)


def stream_document(
    text: str,
    read_service: Callable[[yaml.Node, int], ServiceT],
    finish: Callable[[yaml.MappingNode, list[ServiceT]], ResultT],
) -> ResultT | None:
    """The top mapping with its ``services`` list read one service node at a time.

    The tree of a 10,000-endpoint file takes about 60 MB; here only one
    service's nodes exist at a time, so loading stays flat however many
    endpoints there are. ``read_service(node, index)`` validates each service
    as it comes; ``finish(root, services)`` gets the top mapping, whose
    ``services`` value is an empty placeholder. Only for a file that both YAML
    parsers read alike (see ``compose_fast``): anything else returns None (as
    does a YAML problem), and the caller parses the whole tree the usual way,
    whose errors name the line. The validator's own errors propagate: the
    caller decides what they mean.
    """
    if _CParser is None or "\t" in text or _NON_PRINTABLE.search(text):
        return None
    try:
        events = _EventComposer(text)
    except Exception:  # noqa: BLE001 - libyaml missing or refusing the text: the usual path
        return None
    try:
        events.get_event()  # stream start
        if not events.check_event(yaml.DocumentStartEvent):
            return None
        events.get_event()
        if not events.check_event(yaml.MappingStartEvent):
            return None
        start = events.get_event()
        pairs: list[tuple[yaml.Node, yaml.Node]] = []
        services: list[ServiceT] = []
        streamed = False
        while not events.check_event(yaml.MappingEndEvent):
            key = events.subtree(None, None)
            if (
                not streamed
                and isinstance(key, yaml.ScalarNode)
                and key.value == "services"
                and key.tag == "tag:yaml.org,2002:str"
                and events.check_event(yaml.SequenceStartEvent)
                and not events.peek_event().anchor
                and events.peek_event().tag in (None, "!")
            ):
                streamed = True
                opening = events.get_event()
                placeholder = yaml.SequenceNode(SEQ_TAG, [], opening.start_mark,
                                                opening.end_mark, opening.flow_style)
                while not events.check_event(yaml.SequenceEndEvent):
                    number = len(services)
                    node = events.subtree(placeholder, number)
                    if not libyaml_agrees(node):
                        return None
                    services.append(read_service(node, number))
                placeholder.end_mark = events.get_event().end_mark
                pairs.append((key, placeholder))
                continue
            value = events.subtree(None, None)
            if not (libyaml_agrees(key) and libyaml_agrees(value)):
                return None
            pairs.append((key, value))
        end = events.get_event()
        events.get_event()  # document end
        if not events.check_event(yaml.StreamEndEvent):
            return None  # a second document: the usual path says what is wrong
        if not streamed:
            return None
        root = yaml.MappingNode(MAP_TAG, pairs, start.start_mark, end.end_mark,
                                start.flow_style)
        return finish(root, services)
    except (yaml.YAMLError, RecursionError, ValueError, TypeError):
        return None
    finally:
        events.dispose()
