#!/usr/bin/env python3
"""The shape of the code, per crate: files, largest file, longest function, import circles.

    python3 bench/layout.py            # from the checkout's top folder

A function is counted from its `fn` line to the closing brace at the same indentation
(rustfmt's layout); test modules count too. An import circle is a cycle among a crate's
modules through `use crate::…` / `super::…` paths (strongly connected components of more
than one module).
"""
import os, re, sys

CRATES = ["crypto", "store", "planner", "cli", "testkit", "corruption-tests"]
FN = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def module_of(crate_src, path):
    rel = os.path.relpath(path, crate_src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return "::".join(rel) or "crate"


def functions(lines):
    out = []
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m or line.rstrip().endswith(";"):
            continue
        indent = m.group(1)
        for j in range(i, len(lines)):
            if lines[j].rstrip() == indent + "}" or (j > i and lines[j].startswith(indent + "}")
                                                       and lines[j].strip() == "}"
                                                       and len(lines[j]) - len(lines[j].lstrip()) == len(indent)):
                out.append((j - i + 1, m.group(7)))
                break
            if j == i and line.rstrip().endswith("}"):
                out.append((1, m.group(7)))
                break
    return out


def imports(text, me, modules):
    deps = set()
    # Comments (doc links included) are not imports.
    text = "\n".join(line for line in text.split("\n") if not line.lstrip().startswith("//"))
    for m in re.finditer(r"\b(crate|super)::((?:\w+::)*\w+|\{)", text):
        head, rest = m.group(1), m.group(2)
        if head == "super":
            base = me.split("::")[:-1]
        else:
            base = []
        parts = rest.split("::") if rest != "{" else []
        # longest known module prefix
        best = None
        for k in range(len(parts), 0, -1):
            cand = "::".join(base + parts[:k])
            if cand in modules:
                best = cand
                break
        if best and best != me and not me.startswith(best + "::") and not best.startswith(me + "::"):
            deps.add(best)
    return deps


def sccs(graph):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main():
    print(f"{'crate':18} {'files':>5} {'lines':>6}  {'largest file':34} {'longest function':44} circles")
    for crate in CRATES:
        src = os.path.join(crate, "src")
        if not os.path.isdir(src):
            continue
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs if f.endswith(".rs"))
        texts = {f: open(f, encoding="utf-8").read() for f in files}
        total = sum(t.count("\n") for t in texts.values())
        big = max(files, key=lambda f: texts[f].count("\n"))
        longest = (0, "", "")
        for f in files:
            for n, name in functions(texts[f].split("\n")):
                if n > longest[0]:
                    longest = (n, name, os.path.relpath(f, src))
        mods = {module_of(src, f): f for f in files}
        graph = {m: imports(texts[f], m, mods) for m, f in mods.items()}
        circles = sccs(graph)
        print(f"{crate:18} {len(files):5} {total:6}  {os.path.relpath(big, src) + ' (' + str(texts[big].count(chr(10))) + ')':34} "
              f"{longest[1] + ' in ' + longest[2] + ' (' + str(longest[0]) + ')':44} "
              f"{'; '.join(' <-> '.join(c) for c in circles) or 'none'}")


if __name__ == "__main__":
    main()
