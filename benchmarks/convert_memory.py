"""Peak memory of converting a multi-GB checkpoint: `fovea convert` vs load-then-save.

The usual way to convert (what most conversion scripts do) is to load the whole model and save
it again; fovea streams tensor by tensor into output shards. Both run in fresh processes on the
same random LlavaNext checkpoint (made by load_memory.py's builder, 697M parameters, fp32), and
each process's peak RSS is reported against the checkpoint size.

    python benchmarks/convert_memory.py [--keep DIR] [--max-shard-size 500MB]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from load_memory import make_checkpoint

from common import table

_CHILD = r"""
import json, resource, sys
import psutil, torch, transformers
from fovea.cli.models import _parse_size
from fovea.checkpoints.export import convert
base = psutil.Process().memory_info().rss
source, dest, how, shard = sys.argv[1:5]
if how == "transformers load+save":
    model = transformers.LlavaNextForConditionalGeneration.from_pretrained(source)
    model.save_pretrained(dest, max_shard_size=shard)
else:
    convert(source, dest, to=how.split()[-1], max_shard_size=_parse_size(shard))
print(json.dumps({"base": base, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

WAYS = ["transformers load+save", "fovea convert --to hf", "fovea convert --to fovea"]


def run(source: Path, shard: str) -> str:
    size = sum(f.stat().st_size for f in source.glob("*.safetensors"))
    rows = []
    for how in WAYS:
        with tempfile.TemporaryDirectory() as tmp:
            dest = Path(tmp) / "out"
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, str(source), str(dest), how, shard],
                capture_output=True,
                text=True,
                check=True,
            )
            m = json.loads(out.stdout.strip().splitlines()[-1])
            written = sum(f.stat().st_size for f in dest.glob("*.safetensors"))
        rows.append(
            [
                how,
                f"{size / 2**30:.2f}",
                f"{written / 2**30:.2f}",
                f"{m['base'] / 2**30:.2f}",
                f"{m['peak'] / 2**30:.2f}",
                f"**{m['peak'] / size:.2f}x**",
            ]
        )
    head = [
        "conversion",
        "source GiB",
        "written GiB",
        "RSS after imports GiB",
        "peak RSS GiB",
        "peak / checkpoint",
    ]
    return table(head, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", type=Path, help="make (or reuse) the source checkpoint in this directory")
    parser.add_argument("--max-shard-size", default="500MB")
    args = parser.parse_args()
    if args.keep:
        if not (args.keep / "config.json").is_file():
            make_checkpoint(args.keep, 8)
        print(run(args.keep, args.max_shard_size))
    else:
        tmp = Path(tempfile.mkdtemp())
        try:
            make_checkpoint(tmp, 8)
            print(run(tmp, args.max_shard_size))
        finally:
            shutil.rmtree(tmp)
