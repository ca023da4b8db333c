"""The package's floors (ARCHITECTURE.md), checked from its own imports: no import points up
a floor, no two packages import each other (directly or round a loop), and no module imports
one of ours inside a function (those hide cycles; entry points (`__main__`) import after
multi-host initialisation). A third-party import inside a function is kept only for an
optional or heavy dependency, and says why on its line (`# late: ...`).

KNOWN lists what is still tangled (nothing today). A new violation fails, and so does a
listed one that is gone (delete its line)."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "skyreels_jax"

# Top to bottom. A module may import its own floor (without a cycle) and any floor below.
FLOORS = (
    ("tools",),                        # command-line front ends
    ("train",),                        # may sample during training
    ("sample",),                       # never imports train
    ("config", "perf"),                # validate / derive over every section; FLOPs and memory
    ("tasks", "parallel"),
    ("models", "data", "diffusion"),
    ("weights", "core", "runtime"),    # the weights layer; errors and shared constants
)

# (importer, imported package, kind) still to untangle; kind: "up" or "late".
KNOWN: set[tuple[str, str, str]] = set()


def _floor(package: str) -> int:
  for i, floor in enumerate(FLOORS):
    if package in floor:
      return i
  raise AssertionError(f"{PACKAGE}.{package} is on no floor: add it to FLOORS")


def _modules():
  root = os.path.join(REPO, PACKAGE)
  for dirpath, _, files in os.walk(root):
    for f in sorted(files):
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        yield name.removesuffix(".__init__"), path


def _package(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "(root)"


def _late_nodes(tree) -> set:
  late = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      late.update(id(n) for n in ast.walk(node) if n is not node)
  return late


def imports():
  """(importer module, imported module, inside a function?) for every import of ours."""
  out = []
  for name, path in _modules():
    tree = ast.parse(open(path, encoding="utf-8").read())
    late = _late_nodes(tree)
    for node in ast.walk(tree):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        targets = [node.module]
      for t in targets:
        if t == PACKAGE or t.startswith(PACKAGE + "."):
          out.append((name, t, id(node) in late))
  return out


def violations():
  found = set()
  for importer, imported, late in imports():
    if imported == PACKAGE:
      continue
    src, dst = _package(importer), _package(imported)
    # Entry points import late on purpose: multi-host initialisation comes before any JAX
    # work, and a usage error exits before the model stack loads.
    if late and not importer.endswith(".__main__"):
      found.add((importer, dst, "late"))
    elif src != dst and _floor(dst) < _floor(src):
      found.add((importer, dst, "up"))
  return found


def test_no_import_points_up_or_hides_in_a_function():
  found = violations()
  new = sorted(found - KNOWN)
  gone = sorted(KNOWN - found)
  assert not new, f"imports against the floors (ARCHITECTURE.md): {new}"
  assert not gone, f"fixed, so delete from KNOWN: {gone}"


def unexplained_late_imports():
  """Third-party imports inside functions (outside `__main__`) without a `# late:` reason."""
  found = []
  for name, path in _modules():
    if name.endswith(".__main__"):
      continue
    source = open(path, encoding="utf-8").read()
    lines, tree = source.splitlines(), ast.parse(source)
    late = _late_nodes(tree)
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) in late:
        module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
        if module and not module.startswith(PACKAGE) and "# late:" not in lines[
            node.lineno - 1]:
          found.append(f"{name}:{node.lineno} {module}")
  return found


def test_a_late_third_party_import_says_why():
  assert not unexplained_late_imports(), unexplained_late_imports()


def test_no_package_cycles():
  graph = {}
  for importer, imported, late in imports():
    if imported == PACKAGE:
      continue
    src, dst = _package(importer), _package(imported)
    if src != dst and (importer, dst, "late") not in KNOWN and (importer, dst, "up") not in KNOWN:
      graph.setdefault(src, set()).add(dst)
  # Depth-first search for a loop among the packages.
  state, path = {}, []

  def visit(node):
    state[node] = "open"
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        pytest.fail(f"import cycle: {' -> '.join(path[path.index(nxt):] + [nxt])}")
      if nxt not in state:
        visit(nxt)
    path.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
  """The checker itself: a models module importing train is reported."""
  fake = [("skyreels_jax.models.bad", "skyreels_jax.train.state", False),
          ("skyreels_jax.tasks.bad", "skyreels_jax.models", True)]
  monkeypatch.setattr(__import__(__name__), "imports", lambda: fake)
  assert violations() == {("skyreels_jax.models.bad", "train", "up"),
                          ("skyreels_jax.tasks.bad", "models", "late")}
