"""Markdown table from a pytest-benchmark JSON file: each fast path's mean time
and its speed-up over the reference in the same group (same op, shape, passes),
plus peak extra memory where measured.

    pytest bench/ --benchmark-only --benchmark-json=out.json && python bench/report.py out.json
"""

import json
import re
import sys
from collections import defaultdict


def impl_of(name: str) -> str:
    found = re.search(r"\[(.*)\]", name)
    if not found:
        return "-"
    params = found.group(1).split("-")
    return next((p for p in params if p in ("reference", "native", "triton", "torch")), params[-1])


def main(path: str) -> None:
    data = json.load(open(path))
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"] or b["name"]][impl_of(b["name"])] = b
    m = data["machine_info"]
    print(f"Machine: {m.get('cpu', {}).get('brand_raw', m.get('processor'))}, {m.get('cpu', {}).get('count')} cores; "
          f"native CPU kernels at ISA level {m.get('unigrpo_cpu_isa')}; python {m['python_version']}; "
          f"{data['datetime']}\n")
    print("| group | impl | mean (ms) | speed-up vs reference | peak extra MiB | x logits |")
    print("|---|---|---:|---:|---:|---:|")
    for group in sorted(groups):
        rows = groups[group]
        ref = rows.get("reference")
        for impl in sorted(rows, key=lambda k: (k != "reference", k)):
            b = rows[impl]
            mean = b["stats"]["mean"] * 1e3
            speed = f"{ref['stats']['mean'] / b['stats']['mean']:.2f}x" if ref else "-"
            info = b.get("extra_info", {})
            print(f"| {group} | {impl} | {mean:.2f} | {speed} | {info.get('peak_extra_MiB', '')} | "
                  f"{info.get('peak_extra_x_logits', '')} |")


if __name__ == "__main__":
    main(sys.argv[1])
