"""Files k25ref reads but did not write, and files it writes for the user: the two rules in one place.

Reading: every file is checked before a byte is read. It must be a regular file (a symlink is followed, but
only to a regular file): a FIFO would block the reader forever, /dev/zero would never end, a socket or a
directory has no bytes to read. It is opened non-blocking, so a file swapped for a FIFO between the check
and the open cannot hang either, and its size must be under a cap suited to its role, checked from the
inode before reading (then again on what was read, in case it grew).

Writing: a file is written under a temporary name in the same folder and renamed over the target when
complete, so an interrupted write never leaves half a file and a symlink at the target is replaced, never
written through (the file it pointed to is untouched).
"""
import contextlib
import os
import stat

MiB = 2**20
CAPS = {                                  # role -> largest file k25ref will read (K2.5's own files in brackets)
    "config": 16 * MiB,                   # config.json               [~4 KB]
    "tokenizer config": 16 * MiB,         # tokenizer_config.json     [~10 KB]
    "BPE ranks": 256 * MiB,               # tiktoken.model            [2.8 MB]
    "image": 1024 * MiB,                  # an image file (Pillow's pixel guard bounds the decoded size)
    "video": 64 * 1024 * MiB,             # a video file (frame and pixel budgets bound the decoded size)
    "task suite": 256 * MiB,              # swarm tasks.jsonl and gold tables
}
KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
         (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class FileProblem(Exception):
    """Why a file cannot be read (`code`: not_a_file, too_large, unreadable); callers turn it into their own
    K25RefError so the message keeps their error class and exit code."""

    def __init__(self, code, detail):
        super().__init__(detail)
        self.code, self.detail = code, detail


def kind_of(mode):
    """'a named pipe (FIFO)', 'a directory', ... for a stat mode that is not a regular file."""
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


def open_regular(path, what, cap=None):
    """Open `path` for reading -> (binary file, size), or raise FileProblem before any byte is read.

    `what` names the file's role in messages; `cap` (bytes, default CAPS[what]) bounds its size."""
    cap = CAPS.get(what) if cap is None else cap
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise FileProblem("not_a_file", f"{what} is {kind_of(st.st_mode)}, not a regular file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as e:        # ValueError: a NUL in the path
        raise FileProblem("unreadable", f"cannot read {what} ({getattr(e, 'strerror', None) or e})") from None
    f = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):          # swapped between stat and open
        f.close()
        raise FileProblem("not_a_file", f"{what} is {kind_of(st.st_mode)}, not a regular file")
    if cap is not None and st.st_size > cap:
        f.close()
        raise FileProblem("too_large", f"{what} is {st.st_size:,} bytes, over the {cap:,}-byte cap for it")
    return f, st.st_size


def read_bytes(path, what, cap=None):
    """The whole file, checked as open_regular does (and refused if it grew past the cap while read)."""
    f, _ = open_regular(path, what, cap)
    cap = CAPS.get(what) if cap is None else cap
    try:
        with f:
            raw = f.read()                    # sized by the inode; read(cap + 1) would allocate the cap
    except OSError as e:
        raise FileProblem("unreadable", f"cannot read {what} ({e.strerror or e})") from None
    if cap is not None and len(raw) > cap:
        raise FileProblem("too_large", f"{what} grew past the {cap:,}-byte cap while it was read")
    return raw


def check_regular(path, what, cap=None):
    """The checks of open_regular without keeping the file open (for readers that open it themselves)."""
    f, size = open_regular(path, what, cap)
    f.close()
    return size


# ----------------------------------------------------------------------------
# writing


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (same extension, so writers that pick a format by name still
    do); when the block succeeds it is renamed over `path`, when it fails it is removed."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.{os.getpid()}.tmp{ext}")
    try:
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError as e:                  # name the file the user asked for, not the temporary one
            raise OSError(e.errno, e.strerror, path) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path, mode="w", **kw):
    """open() for writing through atomic_path: the target appears complete or not at all."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        with os.fdopen(fd, mode, **kw) as f:
            yield f


def output_problem(path, extensions, force):
    """Why `path` cannot be written as an output file, or None: an extension outside `extensions`, a missing
    parent folder, a directory in the way, or an existing file when `force` is off."""
    ext = os.path.splitext(path)[1].lower()
    if extensions and ext not in extensions:
        return f"{path!r} must end in {' or '.join(extensions)} (the file is written exactly where you say)"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"folder {parent!r} does not exist"
    if os.path.isdir(path):
        return f"{path!r} is a directory"
    if os.path.lexists(path) and not force:
        return f"{path!r} exists; pass --force to replace it"
    return None
