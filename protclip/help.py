"""``--help`` for every job: the config sections and keys with their defaults and descriptions, read from source.

Why from the source text (``ast`` + the comment tokens) and not from the classes: the descriptions are the
``# comments`` beside each dataclass field (CONTRIBUTING.md asks for one per field), which Python does not keep,
and importing a job pulls in torch and Ray, seconds before a help text. Nothing here imports the job: classes
are found by following ``from X import Name`` statements through the package's source files.
"""

from __future__ import annotations

import ast
import io
import textwrap
import tokenize
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

__all__ = ["FieldDoc", "ConfigDoc", "config_doc", "root_config_of", "format_config", "job_help", "cli_flag",
           "options_help"]

WIDTH = 118
_PACKAGE_ROOT = Path(__file__).resolve().parent


@dataclass
class FieldDoc:
    name: str
    annotation: str
    default: str  # source text of the default; "(required)" when there is none
    comment: str
    section: ConfigDoc | None = None  # a nested config section (a dataclass field)
    items: ConfigDoc | None = None  # list of sections (e.g. eval.suites): what one item holds


@dataclass
class ConfigDoc:
    name: str
    doc: str
    fields: list[FieldDoc] = field(default_factory=list)


@dataclass(frozen=True)
class _Module:
    name: str
    tree: ast.Module
    comments: dict[int, str]  # line -> comment text (without '#')
    code_lines: frozenset[int]  # lines holding code tokens


def _source_file(name: str) -> Path:
    """The source of a module of this package, found without importing it (``find_spec`` would import the
    parent packages, and ``protclip.search``'s imports torch)."""
    parts = name.split(".")
    if parts[0] != _PACKAGE_ROOT.name:
        raise LookupError(f"{name} is not part of {_PACKAGE_ROOT.name}")
    base = _PACKAGE_ROOT.joinpath(*parts[1:])
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    raise LookupError(f"no Python source for module {name}")


@cache
def _module(name: str) -> _Module:
    with open(_source_file(name), encoding="utf-8") as f:
        text = f.read()
    comments: dict[int, str] = {}
    code: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code.update(range(tok.start[0], tok.end[0] + 1))
    return _Module(name, ast.parse(text), comments, frozenset(code))


def _absolute_module(mod: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = mod.split(".")[: -node.level]
    return ".".join(parts + ([node.module] if node.module else []))


def _find_class(mod: str, name: str, depth: int = 0) -> tuple[_Module, ast.ClassDef] | None:
    """The ClassDef ``name`` as seen from module ``mod`` (defined there or imported into it)."""
    if depth > 8:
        return None
    try:
        m = _module(mod)
    except (LookupError, OSError, SyntaxError):
        return None
    for node in m.tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return m, node
    for node in ast.walk(m.tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _find_class(_absolute_module(mod, node), alias.name, depth + 1)
    return None


def _is_dataclass(cls: ast.ClassDef) -> bool:
    for d in cls.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if isinstance(target, ast.Name) and target.id == "dataclass":
            return True
        if isinstance(target, ast.Attribute) and target.attr == "dataclass":
            return True
    return False


def _trailing(m: _Module, node: ast.AST) -> list[str]:
    return [m.comments[ln] for ln in range(node.lineno, node.end_lineno + 1) if ln in m.comments]  # type: ignore


def _comment(m: _Module, node: ast.AnnAssign, nxt: ast.AST | None) -> str:
    """The field's comment. Comment-only lines between two fields belong to the next field when it has no
    trailing comment of its own, else they continue this field's trailing comment."""
    trailing = _trailing(m, node)
    if trailing:
        if nxt is None or _trailing(m, nxt):
            ln = node.end_lineno + 1  # type: ignore[operator]
            while ln in m.comments and ln not in m.code_lines:
                trailing.append(m.comments[ln])
                ln += 1
        return " ".join(trailing)
    above: list[str] = []
    ln = node.lineno - 1
    while ln in m.comments and ln not in m.code_lines:
        above.insert(0, m.comments[ln])
        ln -= 1
    return " ".join(above)


def _names(expr: ast.AST) -> Iterator[str]:
    for n in ast.walk(expr):
        if isinstance(n, ast.Name):
            yield n.id


def _section_class(m: _Module, annotation: ast.AST) -> tuple[_Module, ast.ClassDef] | None:
    for name in _names(annotation):
        if name[:1].isupper() and name not in ("Literal", "Any", "Sequence", "Mapping"):
            found = _find_class(m.name, name)
            if found and _is_dataclass(found[1]):
                return found
    return None


def _default(m: _Module, value: ast.expr | None) -> tuple[str, dict[str, str]]:
    """(default as text, overrides of a nested section's defaults given by a ``lambda: Section(k=v)``)."""
    if value is None:
        return "(required)", {}
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "field":
        kw = {k.arg: k.value for k in value.keywords}
        if "default" in kw:
            return ast.unparse(kw["default"]), {}
        fac = kw.get("default_factory")
        if isinstance(fac, ast.Name):
            return {"list": "[]", "dict": "{}", "set": "set()"}.get(fac.id, f"{fac.id}()"), {}
        if isinstance(fac, ast.Lambda):
            body = fac.body
            if isinstance(body, ast.Call) and isinstance(body.func, ast.Name) and body.func.id[:1].isupper():
                return f"{body.func.id}()", {k.arg: ast.unparse(k.value) for k in body.keywords if k.arg}
            return ast.unparse(body), {}
        return "(required)", {}
    return ast.unparse(value), {}


def _config_doc(m: _Module, cls: ast.ClassDef, overrides: Mapping[str, str] | None = None,
                seen: tuple[str, ...] = ()) -> ConfigDoc:
    doc = ConfigDoc(cls.name, (ast.get_docstring(cls) or "").strip().split("\n\n")[0].replace("\n", " "))
    for base in cls.bases:  # one level of inheritance at most (CONTRIBUTING.md); fields of the base come first
        if isinstance(base, ast.Name):
            found = _find_class(m.name, base.id)
            if found and _is_dataclass(found[1]):
                doc.fields += _config_doc(*found, seen=seen + (cls.name,)).fields
    body = [n for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    for i, node in enumerate(body):
        name = node.target.id  # type: ignore[union-attr]
        ann = ast.unparse(node.annotation)
        if ann.startswith(("ClassVar", "typing.ClassVar", "InitVar")):
            continue
        if isinstance(node.value, ast.Call) and any(k.arg == "init" and isinstance(k.value, ast.Constant)
                                                     and k.value.value is False for k in node.value.keywords):
            continue
        default, nested_over = _default(m, node.value)
        if overrides and name in overrides:
            default = overrides[name]
        fd = FieldDoc(name, ann, default, _comment(m, node, body[i + 1] if i + 1 < len(body) else None))
        found = _section_class(m, node.annotation)
        if found and found[1].name not in seen + (cls.name,):
            sub = _config_doc(*found, overrides=nested_over, seen=seen + (cls.name,))
            if ann.startswith(("list[", "tuple[", "Sequence[")):
                fd.items = sub
            else:
                fd.section = sub
        doc.fields = [f for f in doc.fields if f.name != name] + [fd]
    return doc


def config_doc(module: str, class_name: str) -> ConfigDoc:
    """The documented field tree of config class ``class_name`` as seen from ``module``."""
    found = _find_class(module, class_name)
    if found is None:
        raise LookupError(f"config class {class_name} not found from {module}")
    return _config_doc(*found)


def root_config_of(module: str) -> str | None:
    """The class a recipe's ``main`` passes to ``cli_config`` (its root config)."""
    m = _module(module)
    for node in m.tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            for call in ast.walk(node):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "cli_config"
                        and call.args and isinstance(call.args[0], ast.Name)):
                    return call.args[0].id
    return None


def _wrap(text: str, indent: int) -> list[str]:
    return textwrap.wrap(text, WIDTH - indent, initial_indent=" " * indent, subsequent_indent=" " * indent)


def format_config(doc: ConfigDoc, prefix: str = "") -> list[str]:
    """Help lines: a heading per section, then ``--key = default`` and the description under it."""
    lines: list[str] = []
    leaves = [f for f in doc.fields if f.section is None]
    for f in leaves:
        lines.append(f"  --{prefix}{f.name} = {f.default}   ({f.annotation})")
        if f.comment:
            lines += _wrap(f.comment, 6)
        if f.items is not None:
            lines.append(f"      each item ({f.items.name}): "
                         + ", ".join(g.name for g in f.items.fields))
            for g in f.items.fields:
                lines.append(f"        {g.name} = {g.default}" + (f"   {g.comment}" if g.comment else ""))
    for f in doc.fields:
        if f.section is not None:
            lines.append("")
            lines.append(f"[{prefix}{f.name}]  {f.section.doc or f.comment}".rstrip())
            lines += format_config(f.section, f"{prefix}{f.name}.")
    return lines


def job_help(module: str, configs: Mapping[str, str] | None = None, doc: str | None = None) -> str:
    """The whole ``--help`` text of the job whose recipe is ``module``."""
    out = [(doc or "").strip()]
    if configs is None:
        root = root_config_of(module)
        configs = {"": f"{module}:{root}"} if root else {}
    for prefix, ref in configs.items():
        mod, _, cls = ref.partition(":")
        cdoc = config_doc(mod, cls)
        head = f"--{prefix}.<section>.<key>" if prefix else "--<section>.<key>"
        out += ["", f"Config {cdoc.name}: --config FILE (YAML), then any key as {head} VALUE. {cdoc.doc}".strip()]
        out += format_config(cdoc, f"{prefix}." if prefix else "")
    out += ["", "Exit codes: 0 ok, 1 failed (bad input data, a failed suite), 2 config error, 3 storage error, "
            "5 tracking (MLflow) error, 6 Ray could not start, 130 interrupted."]
    return "\n".join(out).strip() + "\n"


def cli_flag(name: str) -> str:
    """The argparse spelling of a field of a flat options config: ``-k`` for ``k``, ``--batch-size`` for
    ``batch_size`` (the tools that take such options keep their documented argparse flags)."""
    return f"-{name}" if len(name) == 1 else "--" + name.replace("_", "-")


def options_help(module: str, class_name: str, doc: str | None = None) -> str:
    """``--help`` of a command-line tool whose options are the fields of one flat config class (no ``--config``
    file, no sections): each flag with its default and the field's comment. ``doc`` defaults to the module's
    docstring (usage and exit codes)."""
    cdoc = config_doc(module, class_name)
    text = doc if doc is not None else ast.get_docstring(_module(module).tree) or ""
    out = [text.strip(), "", f"Options ({cdoc.name}): {cdoc.doc}".strip()]
    for f in cdoc.fields:
        out.append(f"  {cli_flag(f.name)} = {f.default}   ({f.annotation})")
        if f.comment:
            out += _wrap(f.comment, 6)
    return "\n".join(out).strip() + "\n"
