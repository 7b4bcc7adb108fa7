#!/usr/bin/env python3
"""Copies the upstream files the task suite uses from a checkout of the five collections
(`../shared/data/` beside the repository: see NOTICE.md) into this folder, gzip-compressed with a fixed
header (mtime 0, no file name) so that the same input always gives the same bytes.

    python3 crates/ramole-research/data/vendor.py [SOURCE_DIR]

The list of files is read from `src/tasks/catalog.rs` (every `vendored!(SOURCE, PATH)` and `ii!(NAME)` call), so the catalog stays
the one place that says what the suite uses. Each file is copied byte for byte before compression; the
build checks nothing else against upstream, so run this only from a byte-exact copy.
"""
import gzip, hashlib, os, re, shutil, sys

here = os.path.dirname(os.path.abspath(__file__))
src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "../../../../shared/data")
catalog = open(os.path.join(here, "../src/tasks/catalog.rs"), encoding="utf-8").read()
files = set(re.findall(r'vendored!\("([a-z-]+)", "([^"]+)"\)', catalog))
for name in re.findall(r'ii!\("([a-z_]+)"\)', catalog):
    files |= {("instruction-induction", f"induce/{name}.json"), ("instruction-induction", f"execute/{name}.json")}
files = sorted(files)
licences = sorted({s for s, _ in files})
for source, path in files:
    data = open(os.path.join(src, source, path), "rb").read()
    out = os.path.join(here, source, path + ".gz")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as gz:
            gz.write(data)
    print(f"{source}/{path}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}")
for source in sorted(licences):
    shutil.copyfile(os.path.join(src, f"LICENSE-{source}"), os.path.join(here, f"LICENSE-{source}"))
