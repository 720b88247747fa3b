"""Shards streamed from wherever webdataset's gopen reaches: URLs (https://, http://, gs://, hf://, ...; webdataset
opens them with curl or gsutil) and `pipe:` commands that write a shard to stdout ('pipe:aws s3 cp
s3://bucket/train-000000.tar -', 'pipe:cat /nfs/train-000000.tar'): the object stores of clusters.

A streamed source is a shard pattern ('https://host/imagenet/train-{000000..001023}.tar'); the shards' index.json is
read from the same place (the last NAME.tar of the first source replaced by index.json) and checked as a local
index is, but for the shard files, which are checked as each is fetched (its size must be the index's). A shard is
fetched whole, once per machine, into a local cache (RESNETS_SHARD_CACHE, default RESNETS_HOME/shards; at most
RESNETS_SHARD_CACHE_GB, default 50, the least recently used shards removed first) under a lock, so a machine's ranks
and loader workers share one copy; then its images are read by offset as from a local shard. The training sampler
(loader.ShardBatches) gives each rank whole shards, a few at a time, so a rank fetches only its share of each epoch.

The pattern is the user's own command line: the index never names what is run or fetched (its shard names must be
among the pattern's), and `pipe:` commands run in a shell as given, as webdataset runs them."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from pathlib import Path

from ..errors import ResnetsError
from ..home import shard_cache_dir

REMOTE = re.compile(r"^(pipe:|[a-z][a-z0-9+.-]*://)", re.IGNORECASE)
SHARD = re.compile(r"([^/\s'\"?#]+\.tar)(?![^\s'\"?#])")
CHUNK = 1 << 20


def is_remote(text: str) -> bool:
    """Whether `text` names shards to stream (a URL or a pipe: command), not local files."""
    return bool(REMOTE.match(str(text))) and not str(text).startswith("file://")


def sources(pattern: str) -> list[tuple[str, str]]:
    """(source, shard file name) for each shard of `pattern` (braces expanded): the name is its last NAME.tar."""
    from braceexpand import braceexpand

    out = []
    for source in braceexpand(pattern):
        names = SHARD.findall(source)
        if not names:
            raise ResnetsError(f"{source[:100]}: names no .tar shard (streamed data is a pattern of shards)")
        out.append((source, names[-1]))
    return out


def index_source(source: str, name: str) -> str:
    """Where the index of the shard `name` fetched by `source` is: the same place, index.json for the shard."""
    at = source.rfind(name)
    return source[:at] + "index.json" + source[at + len(name) :]


def read_bounded(source: str, limit: int) -> bytes:
    """At most `limit` bytes from `source` (more is refused before it is all read)."""
    from webdataset import gopen

    try:
        with gopen(source, "rb") as f:
            data = f.read(limit + 1)
            if len(data) > limit:
                raise ResnetsError(f"{source[:100]} is over the limit of {limit:,} bytes")
    except ResnetsError:
        raise
    except Exception as e:  # curl, a command's exit status, a missing scheme: one line naming the source
        raise ResnetsError(f"cannot read {source[:100]}: {str(e).splitlines()[0][:160] if str(e) else e!r}") from None
    return data


def _evict(folder: Path, keep: Path, incoming: int) -> None:
    """Remove the least recently used shards until `incoming` more bytes fit in the cache's bound (a reader that
    has a removed shard open keeps reading it: the file goes when its last descriptor closes)."""
    bound = float(os.environ.get("RESNETS_SHARD_CACHE_GB") or 50) * 1e9
    shards = sorted((p for p in folder.glob("*.tar") if p != keep), key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in shards) + incoming
    for p in shards:
        if total <= bound:
            break
        total -= p.stat().st_size
        p.unlink(missing_ok=True)


def fetch(source: str, name: str, size: int) -> str:
    """The local copy of the shard `source` (fetched once per machine, under a lock; the index's `size` checked):
    its path. Raises OSError naming what went wrong (a short or long shard, a failed command or download)."""
    from webdataset import gopen

    folder = shard_cache_dir()
    path = folder / f"{hashlib.sha256(source.encode()).hexdigest()[:16]}-{name}"
    if path.is_file() and path.stat().st_size == size:
        os.utime(path)
        return str(path)
    folder.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch per machine; the others wait for it and reuse the file
        if path.is_file() and path.stat().st_size == size:
            return str(path)
        _evict(folder, path, size)
        part = path.with_name(f"{path.name}.{os.getpid()}.part")
        got = 0
        try:
            with gopen(source, "rb") as stream, open(part, "wb") as out:
                while got <= size and (chunk := stream.read(min(CHUNK, size + 1 - got))):
                    out.write(chunk)
                    got += len(chunk)
        except OSError:
            part.unlink(missing_ok=True)
            raise
        except Exception as e:  # webdataset's Pipe raises on a command's exit status
            part.unlink(missing_ok=True)
            raise OSError(str(e).splitlines()[0][:160] if str(e) else repr(e)) from None
        if got != size:
            part.unlink(missing_ok=True)
            raise OSError(f"fetched {got:,}{'+' if got > size else ''} bytes; the index says {size:,}")
        os.replace(part, path)
    return str(path)
