"""Run a benchmark script of another checkout (an older tree) with that tree's package, in this environment.

This tree's `runtime.import_torchvision` runs first: an older tree may lack it, and without it transformers' model
classes do not import beside the CUDA torchvision that timm pulls in (see that function). Then this tree's package
is forgotten and the other tree's `src` goes first on the path, so the script runs the other tree's code.

    git worktree add --detach /work/before 295b8ea
    python benchmarks/other_tree.py /work/before benchmarks/predict_folder.py --images 48 --rounds 2
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: python benchmarks/other_tree.py TREE SCRIPT [ARGS...]")
    tree, script = Path(sys.argv[1]).resolve(), sys.argv[2]
    if not (tree / "src" / "segformer").is_dir():
        sys.exit(f"{tree}: no src/segformer here; give a checkout of this project")
    from segformer.runtime import import_torchvision

    import_torchvision()
    for name in [m for m in sys.modules if m.split(".")[0] == "segformer"]:
        del sys.modules[name]
    sys.path.insert(0, str(tree / "src"))
    sys.argv = [str(tree / script), *sys.argv[3:]]
    runpy.run_path(str(tree / script), run_name="__main__")


if __name__ == "__main__":
    main()
