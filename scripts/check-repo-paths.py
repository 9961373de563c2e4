#!/usr/bin/env python3
"""Fail when a tracked file refers to a relative path that leaves the repository.

CI clones the repository beside other directories (a sibling with shared notes, say); a user's
clone has none, so a test or document that reaches outside passes in CI and fails for
them. A reference `../x/y` is accepted only if, from some directory of the repository deep
enough to climb that far, its first component `x` is a tracked path or one git ignores
(a build output such as `target/`).
"""
import os
import re
import subprocess
import sys

REF = re.compile(r"(?:^|[^A-Za-z0-9_./-])((?:\.\./)+)([A-Za-z0-9_.-]+)")
# Fuzz inputs are data, not references; this file names such references to test itself.
SKIP_PREFIXES = ("fuzz/corpus/", "scripts/check-repo-paths.py")
SKIP_SUFFIXES = (".lock", ".png", ".svg")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def main() -> int:
    os.chdir(git("rev-parse", "--show-toplevel").strip())
    files = [f for f in git("ls-files").splitlines() if not f.startswith(SKIP_PREFIXES) and not f.endswith(SKIP_SUFFIXES)]
    tracked = set(files)
    dirs = {""}
    for f in files:
        parts = f.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
            tracked.add("/".join(parts[:i]))

    def ignored(path: str) -> bool:
        # As a directory too: `target/` matches only directories, and a clone has none yet.
        return any(
            subprocess.run(["git", "check-ignore", "-q", "--no-index", p]).returncode == 0
            for p in (path, path + "/")
        )

    def reachable(ups: int, first: str) -> bool:
        for d in dirs:
            parts = d.split("/") if d else []
            if len(parts) < ups:
                continue
            base = parts[: len(parts) - ups]
            target = "/".join(base + [first])
            if target in tracked or ignored(target):
                return True
        return False

    bad = []
    for f in files:
        try:
            text = open(f, encoding="utf-8").read()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for m in REF.finditer(line):
                ups = m.group(1).count("../")
                if not reachable(ups, m.group(2)):
                    bad.append(f"{f}:{n}: {m.group(1)}{m.group(2)} is outside the repository")
    for b in bad:
        print(b, file=sys.stderr)
    if bad:
        print("a clone has nothing outside the repository: copy what is needed in", file=sys.stderr)
    return 1 if bad else 0


def self_test() -> int:
    """The check on a throwaway repository: a sibling reference fails, an inner one passes."""
    import contextlib
    import io
    import tempfile

    here = os.getcwd()
    quiet = contextlib.redirect_stderr(io.StringIO())  # the caught reference is expected
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        subprocess.run(["git", "init", "-q"], check=True)
        os.makedirs("engine")
        os.makedirs("fuzz")
        open("engine/lib.rs", "w").write("//! engine\n")
        open("fuzz/Cargo.toml", "w").write('path = "../engine"\n')
        open(".gitignore", "w").write("target/\n")
        open("Makefile", "w").write("cd fuzz && run ../target/x\n")
        subprocess.run(["git", "add", "."], check=True)
        with quiet:
            ok = main() == 0
        open("README.md", "w").write("see `../elsewhere/DESIGN.md`\n")
        subprocess.run(["git", "add", "README.md"], check=True)
        with contextlib.redirect_stderr(io.StringIO()):
            caught = main() == 1
        os.chdir(here)
    if not (ok and caught):
        print(f"self-test failed: inner references accepted={ok}, sibling reference caught={caught}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        sys.exit(self_test())
    sys.exit(main())
