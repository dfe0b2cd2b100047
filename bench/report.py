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
    # an op benchmark's id holds one implementation name; any other id (rollout modes such as
    # "no-cfg", verifier cases) is its own row, named whole
    return next((p for p in params if p in ("reference", "compiled", "floor", "native", "triton", "torch", "unfused",
                                                      "liger")),
                found.group(1))


def main(path: str) -> None:
    data = json.load(open(path))
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"] or b["name"]][impl_of(b["name"])] = b
    m = data["machine_info"]
    print(f"Machine: {m.get('cpu', {}).get('brand_raw', m.get('processor'))}, {m.get('cpu', {}).get('count')} cores; "
          f"native CPU kernels at ISA level {m.get('unigrpo_cpu_isa')}; python {m['python_version']}; "
          f"{data['datetime']}\n")
    print("| group | impl | mean (ms) | speed-up vs reference | vs torch.compile of it | x the read floor "
          "| peak extra MiB | x logits |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")

    def ratio(a, b):  # how many times faster b is than a
        return f"{a['stats']['mean'] / b['stats']['mean']:.2f}x" if a and b else "-"

    for group in sorted(groups):
        rows = groups[group]
        ref, comp, floor = rows.get("reference"), rows.get("compiled"), rows.get("floor")
        order = ("reference", "compiled", "floor")
        for impl in sorted(rows, key=lambda k: (order.index(k) if k in order else 3, k)):
            b = rows[impl]
            mean = b["stats"]["mean"] * 1e3
            info = b.get("extra_info", {})
            if impl == "compiled" and info.get("compile_s") is not None:
                impl = f"compiled (compile {info['compile_s']} s, apart)"
            of_floor = f"{b['stats']['mean'] / floor['stats']['mean']:.2f}" if floor else "-"
            print(f"| {group} | {impl} | {mean:.2f} | {ratio(ref, b)} | {ratio(comp, b)} | {of_floor} | "
                  f"{info.get('peak_extra_MiB', '')} | {info.get('peak_extra_x_logits', '')} |")


if __name__ == "__main__":
    main(sys.argv[1])
