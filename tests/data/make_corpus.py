#!/usr/bin/env python3
"""Regenerates the malicious layer-tar corpus used by tests/oci.rs.

Run from anywhere: python3 tests/data/make_corpus.py
Each tar starts with a harmless file, so a correct extractor has already
written something when it meets the bad entry and must clean it up.
The output is deterministic (fixed mtimes, owners and order).
"""
import io
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "malicious")


def info(name, kind=tarfile.REGTYPE, data=b"", **kw):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = kw.pop("mode", 0o644)
    ti.mtime = 1_600_000_000
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def write(name, entries):
    path = os.path.join(OUT, name)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for ti, data in [info("ok.txt", data=b"harmless\n")] + entries:
            tf.addfile(ti, data)


def main():
    os.makedirs(OUT, exist_ok=True)
    # Name of the bad entry and what the extractor must say, in
    # tests/oci.rs MALICIOUS (keep both in sync).
    write("dotdot.tar", [info("../escape.txt", data=b"pwned\n")])
    write("nested-dotdot.tar", [info("a/../../escape.txt", data=b"pwned\n")])
    write("absolute.tar", [info("/tmp/pristine-abs-escape.txt", data=b"pwned\n")])
    write(
        "symlink-write-through.tar",
        [
            info("link", tarfile.SYMTYPE, linkname=".."),
            info("link/escape.txt", data=b"pwned\n"),
        ],
    )
    write(
        "symlink-dir-chain.tar",
        [
            info("a", tarfile.DIRTYPE, mode=0o755),
            info("a/b", tarfile.SYMTYPE, linkname="../.."),
            info("a/b/escape.txt", data=b"pwned\n"),
        ],
    )
    write(
        "symlink-absolute-write-through.tar",
        [
            info("etc", tarfile.SYMTYPE, linkname="/etc"),
            info("etc/pristine-pwned", data=b"pwned\n"),
        ],
    )
    write("hardlink-absolute.tar", [info("passwd", tarfile.LNKTYPE, linkname="/etc/passwd")])
    write("hardlink-dotdot.tar", [info("h", tarfile.LNKTYPE, linkname="../escape.txt")])
    write(
        "hardlink-forward.tar",
        [
            info("h", tarfile.LNKTYPE, linkname="later.txt"),
            info("later.txt", data=b"later\n"),
        ],
    )
    write(
        "hardlink-through-symlink.tar",
        [
            info("link", tarfile.SYMTYPE, linkname="/etc"),
            info("h", tarfile.LNKTYPE, linkname="link/passwd"),
        ],
    )
    write("whiteout-dotdot.tar", [info(".wh..", data=b"")])
    write(
        "device-node.tar",
        [info("dev/mem", tarfile.CHRTYPE, mode=0o600, devmajor=1, devminor=1)],
    )


if __name__ == "__main__":
    main()
