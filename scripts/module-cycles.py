#!/usr/bin/env python3
"""Import cycles inside a crate's src/ (default engine/src), between files and
between top-level folders. Exits 1 if there is one.

Usage: scripts/module-cycles.py [SRC] [-v] [--strict]

Edges come from `crate::`/`super::`/`self::` paths in `use` statements (brace
groups expanded) and in code; `#[cfg(test)]` modules are skipped. A child file
using its parent's items counts; a parent naming its own children (how Rust
declares them) counts only with --strict. -v prints the folder graph."""
import os, re, sys
args = [a for a in sys.argv[1:] if not a.startswith("-")]
src = args[0] if args else "engine/src"
mods = {}  # module path tuple -> file
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"): continue
        rel = os.path.relpath(os.path.join(root, f), src)[:-3].split(os.sep)
        if rel in (["lib"], ["main"]): m = ()
        elif rel[-1] == "mod": m = tuple(rel[:-1])
        else: m = tuple(rel)
        mods[m] = os.path.join(root, f)

def strip_tests(text):
    out, i = [], 0
    for mt in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if mt.start() < i: continue
        out.append(text[i:mt.start()]); depth = 0; j = mt.end() - 1
        while j < len(text):
            if text[j] == "{": depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0: break
            j += 1
        i = j + 1
    out.append(text[i:]); return "".join(out)

def strip_comments(t):
    t = re.sub(r"//[^\n]*", "", t)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', t)

def expand(prefix, body):
    # body: contents of a use tree after prefix
    body = body.strip()
    if body.startswith("{"):
        inner = body[1:body.rindex("}")]
        parts, depth, cur = [], 0, ""
        for ch in inner:
            if ch == "," and depth == 0: parts.append(cur); cur = ""; continue
            depth += ch == "{"; depth -= ch == "}"; cur += ch
        parts.append(cur)
        res = []
        for p in parts:
            if p.strip(): res += expand(prefix, p)
        return res
    m = re.match(r"([A-Za-z_][\w]*)\s*(::\s*(.*))?$", body, re.S)
    if not m: return [prefix]
    name, rest = m.group(1), m.group(3)
    if rest is None: return [prefix + [name]]
    return expand(prefix + [name], rest)

def resolve(cur, path):
    # cur: module tuple of the file; path: list of segments starting with crate/super/self
    if path[0] == "crate": base, rest = (), path[1:]
    elif path[0] in ("super", "self"):
        base = cur
        while path and path[0] in ("super", "self"):
            if path[0] == "super": base = base[:-1]
            path = path[1:]
        rest = path
    else: return None
    best = base
    for k in range(len(rest) + 1):
        cand = base + tuple(rest[:k])
        if cand in mods: best = cand
    return best

edges = {m: set() for m in mods}
for m, f in mods.items():
    t = strip_comments(strip_tests(open(f).read()))
    paths = []
    for u in re.finditer(r"\buse\s+((?:crate|super|self)\b[^;]*);", t):
        paths += expand([], u.group(1))
    t2 = re.sub(r"\buse\s+[^;]*;", "", t)
    for p in re.finditer(r"\b((?:crate|super|self)(?:\s*::\s*[A-Za-z_]\w*)+)", t2):
        paths.append([s.strip() for s in p.group(1).split("::")])
    # relative paths to child modules (`evict::clamp_config`, `use segment::X`):
    # only with --strict (a parent naming the children it declares)
    if "--strict" not in sys.argv: t = t2 = ""
    # relative paths to child modules (`evict::clamp_config`, `use segment::X`)
    for u in re.finditer(r"\buse\s+([A-Za-z_]\w*\s*::[^;]*);", t):
        for p in expand([], u.group(1)):
            if m + (p[0],) in mods: paths.append(["self"] + p)
    for p in re.finditer(r"(?<![\w:])([A-Za-z_]\w*)\s*::", t2):
        if m + (p.group(1),) in mods: paths.append(["self", p.group(1)])
    for p in paths:
        if p[0] not in ("crate", "super", "self"): continue
        d = resolve(m, p)
        if d is None or d == m: continue
        # a parent naming its own children is how Rust declares them: only with --strict
        if d[:len(m)] == m and "--strict" not in sys.argv: continue
        edges[m].add(d)

def sccs(nodes, adj):
    idx, low, st, on, out, n = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        idx[v] = low[v] = n[0]; n[0] += 1; st.append(v); on.add(v)
        for w in adj.get(v, ()):
            if w not in idx: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            c = []
            while True:
                w = st.pop(); on.discard(w); c.append(w)
                if w == v: break
            if len(c) > 1: out.append(c)
    for v in nodes:
        if v not in idx: visit(v)
    return out

name = lambda m: "::".join(m) or "lib"
bad = 0
# 1. files: an edge from a module to its own ancestor counts (a child using its parent's items)
fc = sccs(list(mods), edges)
for c in fc: print("file-level cycle:", " <-> ".join(sorted(map(name, c)))); bad += 1
# 2. top-level folders (crate::X), lib.rs excluded (it wires everything)
top = {}
for a, bs in edges.items():
    if not a: continue
    for b in bs:
        if b and b[0] != a[0]: top.setdefault(a[0], set()).add(b[0])
for c in sccs(sorted({m[0] for m in mods if m}), top): print("folder-level cycle:", " <-> ".join(sorted(c))); bad += 1
if "-v" in sys.argv:
    for a in sorted(top): print(f"{a} -> {', '.join(sorted(top[a]))}")
print(f"{len(mods)} modules, {sum(map(len, edges.values()))} edges, {bad} cycles")
sys.exit(1 if bad else 0)
