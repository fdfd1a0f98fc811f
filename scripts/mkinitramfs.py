#!/usr/bin/env python3
"""Write a gzip-compressed newc cpio archive holding the test guest's /init.

usage: mkinitramfs.py INIT_BINARY OUTPUT.cpio.gz

The archive holds /init (the given static binary), the directories /dev, /proc, /sys and the
/dev/console node the kernel opens for init's standard streams. Timestamps are zero, so the
same binary always gives the same archive.
"""
import gzip
import stat
import sys


def entry(ino, name, mode, data=b"", rdev=(0, 0), nlink=1):
    name_b = name.encode() + b"\0"
    fields = [
        ino, mode, 0, 0, nlink, 0, len(data),
        0, 0,            # device of the file itself
        rdev[0], rdev[1],
        len(name_b), 0,  # name size, checksum
    ]
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = head + name_b
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    init_path, out_path = sys.argv[1:]
    with open(init_path, "rb") as f:
        init = f.read()
    parts = [
        entry(1, "dev", stat.S_IFDIR | 0o755, nlink=2),
        entry(2, "dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        entry(3, "proc", stat.S_IFDIR | 0o755, nlink=2),
        entry(4, "sys", stat.S_IFDIR | 0o755, nlink=2),
        entry(5, "init", stat.S_IFREG | 0o755, data=init),
        entry(0, "TRAILER!!!", 0),
    ]
    with open(out_path + ".tmp", "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(b"".join(parts))
    import os
    os.replace(out_path + ".tmp", out_path)


if __name__ == "__main__":
    main()
