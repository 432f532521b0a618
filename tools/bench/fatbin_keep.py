"""Zero the CUDA fatbin payloads of every GPU architecture but the ones kept, in a copy of a
shared library, so that it compresses far better (onnxruntime-gpu 1.31.1's
libonnxruntime_providers_cuda.so: 284 MB, 218 MB of it SASS for sm_75/80/86/89/90/120;
keeping sm_90 only, it xz-compresses to 51.6 MB). The file keeps its size and layout; only
payload bytes of the dropped architectures become zeros, so the library still loads and runs
on the kept architectures (the CUDA runtime picks the sm_90 entry on an H100/H200) and fails
on the others.

    python tools/bench/fatbin_keep.py SRC.so DST.so 90     # keep sm_90
    python tools/bench/fatbin_keep.py SRC.so               # only list what is inside
"""

import struct
import sys
from collections import Counter

MAGIC = struct.pack("<I", 0xBA55ED50)


def main() -> int:
    src = sys.argv[1]
    dst = sys.argv[2] if len(sys.argv) > 2 else None
    keep = {int(x) for x in sys.argv[3].split(",")} if len(sys.argv) > 3 else None
    data = bytearray(open(src, "rb").read())
    blobs, pos = [], 0
    while (i := data.find(MAGIC, pos)) >= 0:
        version, header, size = struct.unpack_from("<HHQ", data, i + 4)
        if version == 1 and header == 16:  # fatbin header: magic, version, header size, body size
            blobs.append((i, size))
            pos = i + 16 + size
        else:
            pos = i + 4
    count, total, zeroed = Counter(), Counter(), 0
    for off, size in blobs:
        p, end = off + 16, off + 16 + size
        while p < end:  # entries: kind (1 PTX, 2 ELF), version, header size, payload size, ..., sm at +28
            kind, _, header, payload = struct.unpack_from("<HHIQ", data, p)
            sm = struct.unpack_from("<I", data, p + 28)[0]
            count[(kind, sm)] += 1
            total[(kind, sm)] += payload
            if keep is not None and sm not in keep:
                data[p + header:p + header + payload] = bytes(payload)
                zeroed += payload
            p += header + payload
    for (kind, sm), n in sorted(total.items()):
        print(f"{'PTX' if kind == 1 else 'SASS'} sm_{sm}: {count[(kind, sm)]} entries, {n / 1e6:.1f} MB")
    print(f"{len(blobs)} fatbins; zeroed {zeroed / 1e6:.1f} MB")
    if dst:
        open(dst, "wb").write(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
