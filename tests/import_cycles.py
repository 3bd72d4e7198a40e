"""Module-level import cycles in lvm_pyro (imports at module level only, not inside functions)."""
import ast, pathlib, sys
root = pathlib.Path(sys.argv[1]) / "lvm_pyro"
mods = {}
for f in root.rglob("*.py"):
    name = ".".join(f.relative_to(root.parent).with_suffix("").parts)
    if name.endswith(".__init__"): name = name[:-9]
    mods[name] = f
edges = {m: set() for m in mods}
for m, f in mods.items():
    tree = ast.parse(f.read_text())
    for node in tree.body:  # module level only
        nodes = [node]
        if isinstance(node, ast.If) or isinstance(node, ast.Try):
            nodes = list(ast.walk(node))
        for n in nodes:
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("lvm_pyro"):
                tgt = n.module
                for a in n.names:
                    if f"{tgt}.{a.name}" in mods: edges[m].add(f"{tgt}.{a.name}")
                if tgt in mods: edges[m].add(tgt)
            elif isinstance(n, ast.Import):
                for a in n.names:
                    if a.name.startswith("lvm_pyro") and a.name in mods: edges[m].add(a.name)
# package __init__ of parents also imported implicitly; ignore lvm_pyro (top) for submodule edges
cycles = []
def dfs(start):
    stack = [(start, [start])]
    while stack:
        node, path = stack.pop()
        for nxt in edges[node] - {node}:
            if nxt == "lvm_pyro": continue
            if nxt == start: cycles.append(path + [nxt])
            elif nxt not in path and len(path) < 12: stack.append((nxt, path + [nxt]))
for m in mods:
    if m != "lvm_pyro": dfs(m)
seen = set()
for c in cycles:
    key = frozenset(c)
    if key not in seen:
        seen.add(key); print(" -> ".join(c))
print(f"{len(seen)} module-level import cycles")
