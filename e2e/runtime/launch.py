"""Start one container's process: ``python -m e2e.runtime.launch SPEC.json``.

What a container runtime does for a process, with the kernel's own means and nothing else: join
the pod's network namespace, get a mount and a UTS namespace of its own (hostname = pod name), see
the host's file tree through an overlay whose writable layer is a private tmpfs (so the
container may create ``/etc/epp`` without touching the host), the pod's volumes bind-mounted at
their ``mountPath`` (read-only where the spec says so), the root read-only under
``readOnlyRootFilesystem``, then ``chroot``, drop to the container's user and ``execve`` the
program. The process that the runtime started *is* the container's main process afterwards.
Standard library only: it runs before the program, on every container start.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def _inside(root: str, path: str, depth: int = 0) -> str:
    """``path`` as seen from inside ``root``: symlinks resolved against ``root``, never the host
    (``/var/run`` is a link to ``/run``; following it on the host would create host directories)."""
    if depth > 40:
        raise OSError(40, f"too many levels of symbolic links in {path}")
    current = root
    parts = [p for p in path.split("/") if p and p != "."]
    for index, part in enumerate(parts):
        if part == "..":
            current = os.path.dirname(current) if current != root else root
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            link = os.readlink(candidate)
            rest = "/".join(parts[index + 1 :])
            base = link if link.startswith("/") else os.path.join(current[len(root) :] or "/", link)
            return _inside(root, f"{base}/{rest}", depth + 1)
        current = candidate
    return current


def _make_mountpoint(target: str, is_file: bool) -> None:
    if is_file:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        if not os.path.exists(target):
            Path(target).touch()
    else:
        Path(target).mkdir(parents=True, exist_ok=True)


def enter(spec: dict[str, object]) -> None:
    """Everything up to (not including) exec; raises on the first thing that fails."""
    with open(f"/var/run/netns/{spec['netns']}") as netns:
        _check(_libc.setns(netns.fileno(), CLONE_NEWNET), "setns net")
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    hostname = str(spec["hostname"]).encode()
    _check(_libc.sethostname(hostname, len(hostname)), "sethostname")

    scratch, root = str(spec["scratch"]), str(spec["root"])
    os.makedirs(scratch, exist_ok=True)
    os.makedirs(root, exist_ok=True)
    mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    os.makedirs(f"{scratch}/upper")
    os.makedirs(f"{scratch}/work")
    mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={scratch}/upper,workdir={scratch}/work")
    for system in ("proc", "sys", "dev"):
        mount(f"/{system}", _inside(root, system), None, MS_BIND | MS_REC)
    # a fresh /tmp, as an image has; not the host's
    mount("tmpfs", _inside(root, "tmp"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")

    for entry in spec.get("binds", []):  # type: ignore[attr-defined]
        target = _inside(root, entry["target"])
        _make_mountpoint(target, os.path.isfile(entry["source"]))
        mount(entry["source"], target, None, MS_BIND)
        if entry.get("readOnly"):
            mount("none", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    for path in spec.get("traversable", []):  # type: ignore[attr-defined]
        # e.g. /root is 0700 on the host: a non-root container could not reach the interpreter
        # of a stand-in below it. The chmod lands in the overlay's upper layer only.
        inside = _inside(root, path)
        mode = os.stat(inside).st_mode
        if mode | 0o005 != mode:  # (a read-only bind of a host dir that is already traversable is left alone)
            os.chmod(inside, mode | 0o005)
    if spec.get("readOnlyRoot"):
        mount("none", root, None, MS_BIND | MS_REMOUNT | MS_RDONLY)

    os.chroot(root)
    os.chdir(str(spec.get("workingDir") or "/"))
    uid, gid = int(spec.get("uid", 0)), int(spec.get("gid", 0))  # type: ignore[call-overload]
    if gid:
        os.setgroups([gid])
        os.setgid(gid)
    if uid:
        os.setuid(uid)


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    try:
        enter(spec)
    except OSError as exc:
        print(f"runtime: cannot start container: {exc}", file=sys.stderr, flush=True)
        return 128
    program = spec["argv"][0]
    env = {str(k): str(v) for k, v in spec["env"].items()}
    try:
        if "/" not in program:
            os.execvpe(program, spec["argv"], env)
        os.execve(program, spec["argv"], env)
    except OSError as exc:
        # what a runtime reports when the entrypoint is missing: exit 127 / 126, as a shell would
        print(f'runtime: exec "{program}": {exc.strerror}', file=sys.stderr, flush=True)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
