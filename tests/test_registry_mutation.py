"""Issue "redesign"'s bar: no module-level mutable registry is mutated outside its own module (tests included).
Extensions and tests pass their own objects down instead (``kiln.build(..., tactics=, pipeline=, plugins=)``,
``TacticLibrary.with_rows``, ``Registry([...])``, ``extended_registry``); see docs DESIGN.md, "Mutable module
globals as test seams".

What counts as a module-level mutable registry is read from kiln/ with ``ast``: a top-level assignment (plain or
annotated) in a kiln module whose value is
- a dict / list / set literal or comprehension, or a call of ``dict``, ``list``, ``set``, ``defaultdict``,
  ``OrderedDict``, ``Counter`` or ``deque``;
- an instance of one of Kiln's registry classes (``REGISTRY_CLASSES``: ``Registry(...)``, ``OpSet(...)``,
  ``TacticLibrary(...)``, ``PluginLibrary(...)``);
- an alias of one (``SPACE = DEFAULT.space``), also through a re-export (``kiln.tactics.DEFAULT``);
and a module-level function returns one when it returns such a name (``kiln.trt.plugin.registered()``) or is
memoized (``functools.cache``/``lru_cache``) and builds one: ``kiln.ops.default_registry()`` is one object per
process. Tuples, frozensets and read-only constants are not registries.

A mutation of a registry (or of anything reached from it by attribute, item or ``.get``/``.setdefault``) is:
assigning or deleting an item or attribute, an augmented assignment, a call of a mutating method (``MUTATORS``:
the containers' and the registry classes' own, ``@ops.op`` as a decorator included), rebinding the name in its
module (``module.NAME = ...``, ``setattr``), and ``monkeypatch.setattr/delattr/setitem/delitem`` or
``mock.patch``/``patch.object``/``patch.dict`` aimed at it. The registry is reached through ``import module``
(``module.NAME``), ``from module import NAME``, a re-export, or a local name bound to one of those.

Its own module may mutate it (that is how it is built). The package ``kiln.ops`` counts as one home
(``SHARED_HOMES``): an op family split over sibling modules merges their OpSets into one
(``ops.ops.extend(elementwise_logic.ops.ops)``), and kiln/ops/__init__.py builds the default registry from them.
Every other mutation is refused unless ``ALLOWED`` gives the reason it is not one.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KILN = ROOT / "kiln"
SCANNED = ("kiln", "tests", "benchmarks", "examples", "scripts")

# Kiln's classes whose instances are tables other code reads; a module-level instance is a registry.
REGISTRY_CLASSES = frozenset({"Registry", "OpSet", "TacticLibrary", "PluginLibrary"})
_CONTAINER_CALLS = frozenset({"dict", "list", "set", "defaultdict", "OrderedDict", "Counter", "deque"})
# Methods that change their receiver: the containers' and the registry classes' (test_mutators_cover_... checks
# that every registry class method which changes its instance is here).
MUTATORS = frozenset({
    "append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse",  # list
    "update", "setdefault", "popitem", "move_to_end",  # dict, OrderedDict
    "add", "discard", "difference_update", "intersection_update", "symmetric_difference_update",  # set
    "appendleft", "extendleft", "popleft", "rotate",  # deque
    "__setitem__", "__delitem__", "__setattr__", "__delattr__", "__iadd__", "__ior__",
    "op", "register", "replace",  # OpSet.op / PluginLibrary.op (decorators that add), register, PluginLibrary.replace
})
_DERIVING = frozenset({"get", "setdefault", "__getitem__"})  # methods whose result is a part of the registry
_PATCHERS = frozenset({"setattr", "delattr", "setitem", "delitem"})  # monkeypatch's (and the builtins')

# Packages whose modules may mutate one another's registries -> why.
SHARED_HOMES = {
    "kiln.ops": "an op family may be split over sibling modules whose OpSets merge into one "
                "(elementwise + elementwise_logic, shape + shape_pad/shape_make, index + index_unique), and "
                "kiln/ops/__init__.py lists the families of the default registry",
}

# (file, what the scan reports) -> why it is not a mutation of shared state.
ALLOWED = {
    ("tests/tune/test_tuning.py", "space.SPACE['kiln', 'Conv'] = ..."):
        "asserts the write is refused (TypeError: the default tactic table is a read-only view)",
    ("tests/tune/test_tuning.py", "space.FACTORIES['mine'] = ..."):
        "asserts the write is refused (TypeError: the default factories are a read-only view)",
}


# -- the index of kiln/: modules, what their names are bound to, which are registries --------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top_level(body):
    """Statements run at import: the module's, and those inside its top-level if/try/with blocks."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, (ast.If, ast.Try, ast.With)):
            for block in (getattr(stmt, "body", []), getattr(stmt, "orelse", []), getattr(stmt, "finalbody", []),
                          *[h.body for h in getattr(stmt, "handlers", [])]):
                yield from _top_level(block)


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_mutable_value(value: ast.expr | None) -> bool:
    if isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)):
        return True
    if isinstance(value, ast.Call):
        f = value.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        return name in _CONTAINER_CALLS or name in REGISTRY_CLASSES
    return False


def _is_memoized(fn: ast.FunctionDef) -> bool:
    for d in fn.decorator_list:
        d = d.func if isinstance(d, ast.Call) else d
        name = d.attr if isinstance(d, ast.Attribute) else d.id if isinstance(d, ast.Name) else ""
        if name in ("cache", "lru_cache"):
            return True
    return False


def _returns(fn: ast.FunctionDef):
    """The returned expressions of ``fn`` itself (not of functions nested in it)."""
    todo = list(fn.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Return) and node.value is not None:
            yield node.value
        todo.extend(ast.iter_child_nodes(node))


class Index:
    """Kiln's modules, their top-level bindings, and the registries and registry-returning functions among them."""

    def __init__(self, root: Path = KILN):
        self.paths: dict[str, Path] = {_module_name(p): p for p in sorted(root.rglob("*.py"))}
        self.modules = set(self.paths)
        self.trees = {m: ast.parse(p.read_text(), str(p)) for m, p in self.paths.items()}
        self.imports: dict[tuple[str, str], tuple] = {}  # (module, name) -> ("module", m) | ("sym", m, n)
        self.values: dict[tuple[str, str], ast.expr] = {}  # (module, name) -> the value assigned at top level
        self.functions: dict[tuple[str, str], ast.FunctionDef] = {}
        for m, tree in self.trees.items():
            pkg = self.paths[m].name == "__init__.py"
            for stmt in _top_level(tree.body):
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    for name, ref in _import_bindings(stmt, m, pkg, self.modules):
                        self.imports[(m, name)] = ref
                elif isinstance(stmt, ast.Assign):
                    for t in stmt.targets:
                        if isinstance(t, ast.Name):
                            self.values[(m, t.id)] = stmt.value
                elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value:
                    self.values[(m, stmt.target.id)] = stmt.value
                elif isinstance(stmt, ast.FunctionDef):
                    self.functions[(m, stmt.name)] = stmt
        self.registries: set[tuple[str, str]] = {k for k, v in self.values.items() if _is_mutable_value(v)}
        self.returning: dict[tuple[str, str], tuple[str, str]] = {}  # function -> the registry it returns
        changed = True
        while changed:  # aliases of registries and functions returning one, to a fixed point
            changed = False
            for (m, name), value in self.values.items():
                if (m, name) not in self.registries and self.derived(value, Scope(self, m)):
                    self.registries.add((m, name))
                    changed = True
            for key, fn in self.functions.items():
                if key in self.returning:
                    continue
                for r in _returns(fn):  # the registry itself (not an item of it: ``return _NP[t]`` is a value)
                    reg = self.registry_of(self.ref(r, Scope(self, key[0])))
                    if reg is None and _is_memoized(fn) and _is_mutable_value(r):
                        reg = key
                    if reg:
                        self.returning[key] = reg
                        changed = True
                        break

    def resolve(self, module: str, name: str, depth: int = 0):
        """What ``module.name`` is: ("module", m), ("sym", defining module, name), following re-exports."""
        if (module, name) in self.imports and depth < 20:
            ref = self.imports[(module, name)]
            return ref if ref[0] == "module" else self.resolve(ref[1], ref[2], depth + 1)
        if f"{module}.{name}" in self.modules:
            return ("module", f"{module}.{name}")
        return ("sym", module, name)

    def ref(self, node: ast.expr, scope: "Scope"):
        """The module or kiln symbol a Name / Attribute chain names, else None."""
        if isinstance(node, ast.Name):
            return scope.lookup(node.id)
        if isinstance(node, ast.Attribute):
            base = self.ref(node.value, scope)
            if base and base[0] == "module":
                return self.resolve(base[1], node.attr)
        return None

    def registry_of(self, ref) -> tuple[str, str] | None:
        if ref and ref[0] == "sym" and (ref[1], ref[2]) in self.registries:
            return ref[1], ref[2]
        if ref and ref[0] == "alias":
            return ref[1]
        return None

    def derived(self, node: ast.expr, scope: "Scope") -> tuple[str, str] | None:
        """The registry ``node`` is (or is a part of), else None."""
        reg = self.registry_of(self.ref(node, scope))
        if reg:
            return reg
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            return self.derived(node.value, scope)
        if isinstance(node, ast.Call):
            f = node.func
            ref = self.ref(f, scope)
            if ref and ref[0] == "sym" and (ref[1], ref[2]) in self.returning:
                return self.returning[(ref[1], ref[2])]
            if isinstance(f, ast.Attribute) and f.attr in _DERIVING:
                return self.derived(f.value, scope)
        return None

    def dotted(self, text: str):
        """The registry a dotted path names ("kiln.tactics.space.SPACE"), for mock.patch and monkeypatch."""
        parts = text.split(".")
        for i in range(len(parts) - 1, 0, -1):
            m = ".".join(parts[:i])
            if m in self.modules:
                ref = self.resolve(m, parts[i])
                return self.registry_of(ref)
        return None


def _import_bindings(node, module: str, is_package: bool, modules: set[str]):
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.asname:
                yield a.asname, ("module", a.name)
            else:
                top = a.name.split(".")[0]
                yield top, ("module", top)
    else:
        src = _absolute(module, is_package, node)
        for a in node.names:
            sub = f"{src}.{a.name}"
            yield a.asname or a.name, ("module", sub) if sub in modules else ("sym", src, a.name)


class Scope:
    """Names bound in a file: its imports and, in a kiln module, its own top-level names; a chain per function."""

    def __init__(self, index: Index, module: str | None, parent: "Scope | None" = None):
        self.index, self.module, self.parent, self.names = index, module, parent, {}

    def lookup(self, name: str):
        scope = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        if self.module is not None:
            if (self.module, name) in self.index.imports or (self.module, name) in self.index.values \
                    or (self.module, name) in self.index.functions:
                return self.index.resolve(self.module, name)
        return None


# -- the scan of one file ---------------------------------------------------------------------------------------
class _Scan(ast.NodeVisitor):
    def __init__(self, index: Index, module: str | None, is_package: bool):
        self.index, self.module, self.is_package = index, module, is_package
        self.scope = Scope(index, module)
        self.found: list[tuple[int, str, tuple[str, str]]] = []

    def _hit(self, node, what: str, reg):
        if reg:
            self.found.append((node.lineno, what, reg))

    def _bind(self, name: str, value):
        reg = self.index.derived(value, self.scope) if value is not None else None
        if reg:
            self.scope.names[name] = ("alias", reg)
        elif self.scope.parent is not None or self.module is None:
            self.scope.names[name] = self.index.ref(value, self.scope) if value is not None else None

    # bindings
    def visit_Import(self, node):
        for name, ref in _import_bindings(node, self.module or "", self.is_package, self.index.modules):
            self.scope.names[name] = ref

    visit_ImportFrom = visit_Import

    def _function(self, node):
        for d in node.decorator_list:
            self.visit(d)
            if isinstance(d, ast.Attribute) and d.attr in MUTATORS:
                self._hit(d, f"@{ast.unparse(d)}", self.index.derived(d.value, self.scope))
        outer = self.scope
        self.scope = Scope(self.index, self.module, outer)
        a = node.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
            if arg is not None:
                self.scope.names[arg.arg] = None
        for stmt in node.body:
            self.visit(stmt)
        self.scope = outer

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    # writes
    def _target(self, t, node, verb: str):
        if isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                self._target(e, node, verb)
        elif isinstance(t, ast.Starred):
            self._target(t.value, node, verb)
        elif isinstance(t, ast.Subscript):
            self._hit(node, verb.format(ast.unparse(t)), self.index.derived(t.value, self.scope))
        elif isinstance(t, ast.Attribute):
            base = self.index.ref(t.value, self.scope)
            reg = self.index.derived(t.value, self.scope)
            if reg is None and base and base[0] == "module":
                reg = self.index.registry_of(self.index.resolve(base[1], t.attr))
            self._hit(node, verb.format(ast.unparse(t)), reg)

    def visit_Assign(self, node):
        self.generic_visit(node)
        for t in node.targets:
            self._target(t, node, "{} = ...")
            if isinstance(t, ast.Name):
                self._bind(t.id, node.value)

    def visit_AnnAssign(self, node):
        self.generic_visit(node)
        if node.value is not None:
            self._target(node.target, node, "{} = ...")
            if isinstance(node.target, ast.Name):
                self._bind(node.target.id, node.value)

    def visit_AugAssign(self, node):
        self.generic_visit(node)
        what = "{} " + type(node.op).__name__ + "= ..."
        if isinstance(node.target, ast.Name):  # in place for a list, a dict (|=) or a set
            self._hit(node, what.format(node.target.id), self.index.derived(node.target, self.scope))
        else:
            self._target(node.target, node, what)

    def visit_Delete(self, node):
        self.generic_visit(node)
        for t in node.targets:
            self._target(t, node, "del {}")

    def visit_Call(self, node):
        self.generic_visit(node)
        f, args = node.func, node.args
        if isinstance(f, ast.Attribute) and f.attr in MUTATORS:
            self._hit(node, f"{ast.unparse(f)}(...)", self.index.derived(f.value, self.scope))
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        text = ast.unparse(f)
        if name in _PATCHERS and args:  # monkeypatch.setattr(obj, "NAME", v) / ("pkg.mod.NAME", v), setattr(...)
            self._hit(node, f"{text}({ast.unparse(args[0])}{', ...' if len(args) > 1 else ''})",
                      self._aimed_at(args[0], args[1] if len(args) > 1 and name.endswith("attr") else None))
        elif text.endswith(("patch", "patch.object", "patch.dict")) and args:  # unittest.mock
            self._hit(node, f"{text}({ast.unparse(args[0])}, ...)",
                      self._aimed_at(args[0], args[1] if text.endswith("object") and len(args) > 1 else None))

    def _aimed_at(self, obj, attr):
        if isinstance(obj, ast.Constant) and isinstance(obj.value, str):
            return self.index.dotted(obj.value)
        if attr is not None and isinstance(attr, ast.Constant) and isinstance(attr.value, str):
            base = self.index.ref(obj, self.scope)
            if base and base[0] == "module":
                reg = self.index.registry_of(self.index.resolve(base[1], attr.value))
                if reg:
                    return reg
        return self.index.derived(obj, self.scope)


def scan(source: str, index: Index, module: str | None = None, is_package: bool = False):
    """(line, what, registry) for each mutation of a kiln registry in ``source`` (the text of ``module``)."""
    s = _Scan(index, module, is_package)
    s.visit(ast.parse(source))
    return s.found


def _home(module: str) -> str:
    for pkg in SHARED_HOMES:
        if module == pkg or module.startswith(pkg + "."):
            return pkg
    return module


def _files():
    for top in SCANNED:
        if (ROOT / top).is_dir():
            yield from sorted((ROOT / top).rglob("*.py"))


_INDEX: Index | None = None


def _index() -> Index:
    global _INDEX
    if _INDEX is None:
        _INDEX = Index()
    return _INDEX


# -- the bar ------------------------------------------------------------------------------------------------------
def test_no_registry_is_mutated_outside_its_module():
    index, found, used = _index(), [], set()
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        module = _module_name(path) if rel.startswith("kiln/") else None
        for line, what, (home, name) in scan(path.read_text(), index, module, path.name == "__init__.py"):
            if module is not None and _home(module) == _home(home):
                continue
            if (rel, what) in ALLOWED:
                used.add((rel, what))
            else:
                found.append(f"{rel}:{line}: {what}  (mutates {home}.{name})")
    assert not found, ("module-level registries mutated outside their module: pass your own object down instead "
                       "(kiln.build(..., tactics=, pipeline=, plugins=), TacticLibrary.with_rows, "
                       "Registry([...]) / extended_registry), or add an ALLOWED entry with the reason:\n"
                       + "\n".join(found))
    assert used == set(ALLOWED), f"ALLOWED entries that match nothing any more: {sorted(set(ALLOWED) - used)}"


# -- the scanner sees what it is for ------------------------------------------------------------------------------
def test_the_index_finds_kilns_registries():
    index = _index()
    for reg in [("kiln.tactics.space", "_TABLE"), ("kiln.tactics.space", "_FACTORIES"),
                ("kiln.tactics.space", "DEFAULT"), ("kiln.tactics.space", "SPACE"), ("kiln.ops.elementwise", "ops"),
                ("kiln.ops.not_supported", "NOT_SUPPORTED"), ("kiln.trt.plugin", "_REGISTRY")]:
        assert reg in index.registries, reg
    assert index.returning[("kiln.ops", "default_registry")] == ("kiln.ops", "default_registry")
    assert index.returning[("kiln.trt.plugin", "registered")] == ("kiln.trt.plugin", "_REGISTRY")
    assert ("kiln.ops", "FAMILIES") not in index.registries  # a tuple
    assert index.resolve("kiln.tactics", "DEFAULT") == ("sym", "kiln.tactics.space", "DEFAULT")  # a re-export
    defined = {n.name for tree in index.trees.values() for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    assert REGISTRY_CLASSES <= defined, f"registry classes no longer in kiln/: {REGISTRY_CLASSES - defined}"


def test_the_scan_finds_a_planted_mutation():
    bad = '''
import kiln.tactics.space as sp
import kiln
from kiln.tactics import space, DEFAULT
from kiln.ops import default_registry, elementwise
from kiln.ops.not_supported import NOT_SUPPORTED
from kiln.trt.plugin import registered
from unittest import mock
space._TABLE[("", "Conv")] = []
sp._FACTORIES.update(mine=None)
kiln.tactics.space._TABLE.setdefault(("", "X"), []).append(1)
default_registry().not_supported["X"] = "why"
del NOT_SUPPORTED["Foo"]
NOT_SUPPORTED |= {"Bar": "why"}
space.DEFAULT = None
registered().add(None)
@elementwise.ops.op("Foo")
def foo(ctx, inputs, attrs): ...
def test_it(monkeypatch):
    reg = default_registry()
    reg._ops.clear()
    monkeypatch.setattr(space, "DEFAULT", DEFAULT)
    monkeypatch.setattr("kiln.tactics.space.SPACE", {})
    monkeypatch.setitem(space._FACTORIES, "x", None)
    monkeypatch.setattr(kiln.tactics, "DEFAULT", None)
    with mock.patch.dict(sp._TABLE, {}):
        pass
'''
    lines = [line for line, _, _ in scan(bad, _index())]
    assert lines == [9, 10, 11, 11, 12, 13, 14, 15, 16, 17, 21, 22, 23, 24, 25, 26], lines


def test_the_scan_leaves_alone_what_is_not_a_mutation():
    ok = '''
from kiln.tactics import space, DEFAULT, TacticLibrary, Row
from kiln.ops import default_registry, FAMILIES, OpSet, Registry
lib = DEFAULT.with_rows("", "Conv", Row("mine"))
table = dict(space.SPACE)
table["x"] = ()
ops = OpSet("mine")
@ops.op("Foo")
def foo(ctx, inputs, attrs): ...
reg = Registry([*(m.ops for m in FAMILIES), ops])
def f(DEFAULT):
    DEFAULT.update(x=1)
def g():
    rows = list(space.SPACE.get(("kiln", "Conv"), ()))
    rows.append(Row("mine"))
    assert default_registry().traits("", "Relu").elementwise
'''
    assert scan(ok, _index()) == []


def test_a_module_may_build_its_own_registry():
    """kiln/tactics/space.py adds to its own _FACTORIES, an ops family decorates into its own OpSet: seen, and
    not refused, since the file is the registry's home (kiln.ops being one home for its modules)."""
    index = _index()
    for module in ("kiln.tactics.space", "kiln.ops.elementwise"):
        path = index.paths[module]
        found = scan(path.read_text(), index, module)
        assert found and all(_home(module) == _home(home) for _, _, (home, _n) in found)


def test_mutators_cover_the_registry_classes_own_mutating_methods():
    """A method of a registry class that changes its instance (assigns or deletes on ``self.``, or calls a
    mutating method on one of its attributes) must be in MUTATORS, or a call of it would go unseen."""
    index, missing = _index(), []
    for tree in index.trees.values():
        for cls in ast.walk(tree):
            if not (isinstance(cls, ast.ClassDef) and cls.name in REGISTRY_CLASSES):
                continue
            for fn in cls.body:
                if not isinstance(fn, ast.FunctionDef) or fn.name == "__init__" or fn.name in MUTATORS:
                    continue
                for node in ast.walk(fn):
                    targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else \
                        [node.target] if isinstance(node, ast.AugAssign) else []
                    calls = [node.func.value] if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr in MUTATORS else []
                    roots = [t.value for t in targets if isinstance(t, (ast.Attribute, ast.Subscript))] + calls
                    if any(ast.unparse(r).startswith("self") for r in roots):
                        missing.append(f"{cls.name}.{fn.name}")
                        break
    assert not missing, f"mutating methods of registry classes missing from MUTATORS: {missing}"
