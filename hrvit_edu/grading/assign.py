"""Generate student notebooks from master notebooks (nbgrader-style solution regions).

In a master notebook ``exercises/solutions/0N_<name>.ipynb``, code between the lines
``### BEGIN SOLUTION`` and ``### END SOLUTION`` (inside a function body) is replaced by
``raise NotImplementedError(...)`` at the same indentation, so the student notebook still runs
top to bottom and each stub fails only when called.  Outputs are cleared; stored outputs are
regenerated afterwards with ``tools/regen_notebooks.py``.

    python -m hrvit_edu.grading.assign              # write every exercises/0N_*.ipynb
    python -m hrvit_edu.grading.assign --check      # CI: committed students == generated
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = 'raise NotImplementedError("exercise: write your solution here")'


def find_root(start: Path | None = None) -> Path:
    """The book's root: the nearest folder at or above ``start`` (default: the working directory)
    that holds ``exercises/solutions``; the working directory if none does."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "exercises" / "solutions").is_dir():
            return folder
    return start


def strip_solutions(source: str) -> str:
    out, inside = [], False
    for line in source.split("\n"):
        if line.strip() == BEGIN:
            if inside:
                raise ValueError("nested ### BEGIN SOLUTION")
            inside = True
            out.append(re.match(r"\s*", line).group(0) + STUB)
        elif line.strip() == END:
            if not inside:
                raise ValueError("### END SOLUTION without a BEGIN")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("### BEGIN SOLUTION without an END")
    return "\n".join(out)


def make_student(master):
    """A student notebook node from a master notebook node (pure function of the sources)."""
    nb = copy.deepcopy(master)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
            cell.outputs, cell.execution_count = [], None
        elif BEGIN in cell.source:
            raise ValueError("solution regions belong in code cells")
    nb.metadata.setdefault("hrvit_edu", {})["role"] = "student"
    return nb


def _signature(nb) -> list:
    """What must agree between committed and generated students: cell kinds, sources, tags."""
    return [(c.cell_type, c.source, sorted(c.get("metadata", {}).get("tags", []))) for c in nb.cells] + \
        [nb.metadata.get("hrvit_edu", {})]


def pairs(root: Path | None = None) -> list[tuple[Path, Path]]:
    root = Path(root) if root is not None else find_root()
    return [(m, root / "exercises" / m.name) for m in sorted((root / "exercises" / "solutions").glob("*.ipynb"))]


def main(argv=None) -> int:
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only verify; exit 1 on a difference")
    ap.add_argument("--root", type=Path, default=None,
                    help="the book's root folder (default: found from the working directory)")
    args = ap.parse_args(argv)
    root = args.root.resolve() if args.root else find_root()
    found = pairs(root)
    if not found:
        print(f"no master notebooks in {root / 'exercises' / 'solutions'}: nothing to "
              f"{'check' if args.check else 'generate'}")
        return 1
    bad = 0
    for master_path, student_path in found:
        master = nbformat.read(master_path, as_version=4)
        if master.metadata.get("hrvit_edu", {}).get("role") != "master":
            print(f"{master_path}: metadata hrvit_edu.role must be 'master'")
            bad += 1
            continue
        student = make_student(master)
        if args.check:
            committed = nbformat.read(student_path, as_version=4) if student_path.exists() else None
            if committed is None or _signature(committed) != _signature(student):
                print(f"{student_path} is not what {master_path.name} generates: "
                      "run `python -m hrvit_edu.grading.assign` and regenerate outputs")
                bad += 1
        elif student_path.exists() and _signature(nbformat.read(student_path, as_version=4)) == _signature(student):
            print(f"{student_path.relative_to(root)} is up to date (stored outputs kept)")
        else:
            nbformat.write(student, student_path)
            print(f"wrote {student_path.relative_to(root)} (regenerate its outputs next)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
