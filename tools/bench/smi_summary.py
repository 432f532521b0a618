"""Cut an `nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -lms 200`
log by the `WINDOW label start end` lines (unix seconds) that the benchmarks print, and
print GPU utilisation (mean, and share of samples at >= 90 %) and peak memory per window.

    python tools/bench/smi_summary.py smi.csv bench.log [more.log ...]
"""

import sys
from datetime import datetime


def main() -> int:
    samples = []
    for line in open(sys.argv[1], encoding="utf-8"):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[1].split()[0].isdigit():
            continue
        ts = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()  # local time, like time.time()
        samples.append((ts, int(parts[1].split()[0]), int(parts[2].split()[0])))
    print("| run | samples | GPU util mean % | samples ≥ 90 % | peak memory MiB |")
    print("|---|---:|---:|---:|---:|")
    for log in sys.argv[2:]:
        for line in open(log, encoding="utf-8", errors="replace"):
            if not line.startswith("WINDOW "):
                continue
            _, label, t0, t1 = line.split()
            t0, t1 = float(t0), float(t1)
            inside = [s for s in samples if t0 <= s[0] <= t1]
            if not inside:
                print(f"| {label} | 0 | - | - | - |")
                continue
            util = [s[1] for s in inside]
            print(f"| {label} | {len(inside)} | {sum(util) / len(util):.0f} | "
                  f"{100 * sum(u >= 90 for u in util) / len(util):.0f} % | {max(s[2] for s in inside)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
