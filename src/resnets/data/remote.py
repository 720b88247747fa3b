"""Shards streamed from URLs (https://, http://, gs://, hf://, ...) and `pipe:` commands that write a shard to stdout
('pipe:aws s3 cp s3://bucket/train-000000.tar -', 'pipe:cat /nfs/train-000000.tar'): the object stores of clusters.

A streamed source is a shard pattern ('https://host/imagenet/train-{000000..001023}.tar'); the shards' index.json is
read from the same place (the last NAME.tar of the first source replaced by index.json) and checked as a local
index is, but for the shard files, which are checked as each is fetched (its size must be the index's). A shard is
fetched whole, once per machine, into a local cache (RESNETS_SHARD_CACHE, default RESNETS_HOME/shards; at most
RESNETS_SHARD_CACHE_GB, default 50, the least recently used shards removed first) under a lock, so a machine's ranks
and loader workers share one copy; then its images are read by offset as from a local shard. The training sampler
(loader.ShardBatches) gives each rank whole shards, a few at a time, so a rank fetches only its share of each epoch.

The pattern is the user's own command line (config.only_from_command_line refuses a command or a URL that a file
names): the index never names what is run or fetched (its shard names are plain names, and must be among the
pattern's). How each source is read:

- http:// and https:// here, with urllib; `pipe:` commands in a shell, in a session of their own (so the command and
  everything it starts can be killed together); other schemes with webdataset's gopen (gsutil, curl, ...), its
  process watched the same way.
- Every read is bounded in time: a connection, and each read after it, waits at most RESNETS_FETCH_TIMEOUT seconds
  (default 60) for data; then the command is killed and the fetch fails in one line naming the source ("no data for
  60 s"). A command that fails is named with its exit status and the last line it wrote to stderr.
- Every fetch is bounded in time as a whole: N bytes (a shard's size by the index, the most an index may be) must
  come within RESNETS_FETCH_TIMEOUT + N / RESNETS_FETCH_MIN_RATE seconds (megabytes a second, default 0.1: a 1 GB
  shard within 2 h 48 min), the headers included, so a server or command that sends a byte now and then, never
  idle long enough for the first bound, is cut there ("not fetched within N s").
- A redirect is followed only to http:// or https://: one to ftp://, file://, data: or any other scheme is refused
  in one line, before anything is asked of the place it names.
- Every read is bounded in size: never more than the index says a shard holds (one byte more says it lied; a server
  announcing another length is refused before its body is read), nor more than MAX_INDEX_BYTES of an index. A shard
  that cannot fit in the cache's bound is refused before anything is fetched or removed ("the index says N bytes;
  the cache holds at most M"); the cache makes room only for a shard that fits.
- A shard is written to a `.part` file (NAME.PID@HOST.part) that is removed however the fetch ends: an error, a
  timeout, or SIGTERM / SIGINT (in the main thread the handlers are ours while the shard downloads, the old ones
  again after; the signal then does what it did before). The `.part` of a process that is gone (SIGKILL, a power
  cut) is removed by the next fetch on the machine. The shard's `.lock` file goes too: its holder removes it before
  letting go (a process that waited on the removed file locks the one made afresh), and the next fetch removes the
  ones nobody holds (left by a process that was killed).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import math
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import ResnetsError, printable
from ..home import setting, shard_cache_dir
from ..safe_io import process_alive
from ..version import __version__

REMOTE = re.compile(r"^(pipe:|[a-z][a-z0-9+.-]*://)", re.IGNORECASE)
SHARD = re.compile(r"([^/\s'\"?#]+\.tar)(?![^\s'\"?#])")
PART = re.compile(r"\.(\d+)(?:@(.+))?\.part$")  # NAME.PID@HOST.part (NAME.PID.part: written before the host was)
CHUNK = 1 << 20
TIMEOUT_S = 60.0  # RESNETS_FETCH_TIMEOUT's default
MIN_RATE_MB_S = 0.1  # RESNETS_FETCH_MIN_RATE's default
CACHE_GB = 50.0  # RESNETS_SHARD_CACHE_GB's default
MAX_SHARDS = 1_000_000  # names a shard pattern may expand to (LAION-2B's WebDataset: ~230,000 shards)


def is_remote(text: str) -> bool:
    """Whether `text` names shards to stream (a URL or a pipe: command), not local files."""
    return bool(REMOTE.match(str(text))) and not str(text).startswith("file://")


def reaches(text: str) -> str | None:
    """What reading `text` does beyond this machine's files: "runs a command" (pipe:), "fetches a URL" (any
    scheme://, but file://), or None."""
    if not isinstance(text, str) or not is_remote(text):
        return None
    return "runs a command" if text.startswith("pipe:") else "fetches a URL"


def hub_dataset(text: str) -> bool:
    """Whether `text`, as the data of dataset hf, names a dataset on the Hugging Face Hub ('user/name': fetched
    from the Hub unless downloads are off), not a local folder."""
    return not Path(text).exists() and text.count("/") == 1 and not text.startswith((".", "/"))


def fetch_timeout() -> float:
    """RESNETS_FETCH_TIMEOUT: the seconds a connection, or a read, waits for data."""
    return setting("RESNETS_FETCH_TIMEOUT", TIMEOUT_S, "give seconds, such as 60")


def fetch_min_rate() -> float:
    """RESNETS_FETCH_MIN_RATE: the slowest a fetch may go on average, in megabytes (10^6 bytes) a second, after the
    first RESNETS_FETCH_TIMEOUT seconds: a fetch of N bytes has fetch_deadline(N) seconds in all."""
    return setting("RESNETS_FETCH_MIN_RATE", MIN_RATE_MB_S, "give megabytes a second, such as 0.1")


def fetch_deadline(size: int) -> float:
    """The seconds a whole fetch of `size` bytes may take (its connection and headers included):
    RESNETS_FETCH_TIMEOUT + size / RESNETS_FETCH_MIN_RATE."""
    return fetch_timeout() + size / (fetch_min_rate() * 1e6)


def cache_bound() -> int:
    """RESNETS_SHARD_CACHE_GB in bytes: the most the shard cache holds."""
    return int(setting("RESNETS_SHARD_CACHE_GB", CACHE_GB, "give gigabytes, such as 50 or 0.5") * 1e9)


def too_large(size: int) -> str | None:
    """Why a shard of `size` bytes (the index's word) is not fetched, or None: it cannot fit in the cache."""
    bound = cache_bound()
    return (
        f"the index says {size:,} bytes; the cache holds at most {bound:,} (RESNETS_SHARD_CACHE_GB)"
        if size > bound
        else None
    )


def expand(pattern: str) -> list[str]:
    """The names a shard pattern's braces expand to ('train-{000000..001023}.tar'), at most MAX_SHARDS: a few
    bytes of braces can name billions, and the list would be built before anything was read."""
    from braceexpand import braceexpand

    if _names_at_most(pattern) > MAX_SHARDS:  # counted first: braceexpand builds a range's names all at once
        raise ResnetsError(f"{_shown(pattern)} names more than {MAX_SHARDS:,} shards: give fewer, or larger shards")
    return list(braceexpand(pattern))


_RANGE = re.compile(r"\{(-?\d{1,30})\.\.(-?\d{1,30})(?:\.\.(-?\d{1,30}))?\}")
_CHOICE = re.compile(r"\{[^{}]*,[^{}]*\}")


def _names_at_most(pattern: str) -> int:
    """At least as many names as the braces of `pattern` expand to: each numeric range's length and each list's
    count of choices multiplied (nested lists counted as if they multiplied; letter ranges are 26 at most)."""
    if len(pattern) > 10_000 or re.search(r"\d{31}", pattern):
        return MAX_SHARDS + 1
    n = 1
    for a, b, step in _RANGE.findall(pattern):
        n *= abs(int(b) - int(a)) // max(1, abs(int(step or 1))) + 1
    for choice in _CHOICE.findall(pattern):
        n *= choice.count(",") + 1
    n *= 26 ** len(re.findall(r"\{[A-Za-z]\.\.[A-Za-z]", pattern))
    return n


def sources(pattern: str) -> list[tuple[str, str]]:
    """(source, shard file name) for each shard of `pattern` (braces expanded): the name is its last NAME.tar."""
    out = []
    for source in expand(pattern):
        names = SHARD.findall(source)
        if not names:
            raise ResnetsError(f"{_shown(source)}: names no .tar shard (streamed data is a pattern of shards)")
        out.append((source, names[-1]))
    return out


def index_source(source: str, name: str) -> str:
    """Where the index of the shard `name` fetched by `source` is: the same place, index.json for the shard."""
    at = source.rfind(name)
    return source[:at] + "index.json" + source[at + len(name) :]


def _shown(source: str) -> str:
    return printable(source)[:100]


def _said(e: BaseException, timeout: float) -> str:
    """What went wrong, in one line."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {printable(str(e.reason))[:80]}"
    if isinstance(e, urllib.error.URLError):  # what the connection met: refused, no such host, a timeout
        e = e.reason if isinstance(e.reason, BaseException) else OSError(str(e.reason))
    if isinstance(e, TimeoutError):
        return f"no data for {timeout:g} s"
    text = str(e).strip()
    return printable(text.splitlines()[0] if text else type(e).__name__)[:160]


def read_bounded(source: str, limit: int) -> bytes:
    """At most `limit` bytes from `source` (more is refused before it is all read)."""
    timeout, total = fetch_timeout(), fetch_deadline(limit)
    data = bytearray()
    try:
        with _Guard(None) as guard:
            stream = guard.stream = _open(source, timeout, total)
            if stream.length is not None and stream.length > limit:
                raise ResnetsError(f"{_shown(source)} is {stream.length:,} bytes, over the limit of {limit:,}")
            while len(data) <= limit and (chunk := stream.read(min(CHUNK, limit + 1 - len(data)))):
                data += chunk
    except ResnetsError:
        raise
    except Exception as e:  # a timeout, a command's exit status, a missing scheme: one line naming the source
        raise ResnetsError(f"cannot read {_shown(source)}: {_said(e, timeout)}") from None
    if len(data) > limit:
        raise ResnetsError(f"{_shown(source)} is over the limit of {limit:,} bytes")
    return bytes(data)


def fetch(source: str, name: str, size: int) -> str:
    """The local copy of the shard `source` (fetched once per machine, under a lock; the index's `size` checked):
    its path. Raises OSError naming what went wrong and the source (a shard that cannot fit in the cache, a short or
    long shard, a failed command or download, no data for RESNETS_FETCH_TIMEOUT seconds, not all of it within
    fetch_deadline(size))."""
    folder = shard_cache_dir()
    path = folder / f"{hashlib.sha256(source.encode()).hexdigest()[:16]}-{name}"
    if path.is_file() and path.stat().st_size == size:
        os.utime(path)
        return str(path)
    why = too_large(size)
    if why is not None:  # before anything is fetched, or removed to make room
        raise OSError(f"{why}; not fetched ({_shown(source)})")
    timeout, total = fetch_timeout(), fetch_deadline(size)
    folder.mkdir(parents=True, exist_ok=True)
    sweep(folder)
    with _locked(Path(f"{path}.lock")):  # one fetch per machine; the others wait for it and reuse the file
        if path.is_file() and path.stat().st_size == size:
            return str(path)
        _evict(folder, path, size)
        part = path.with_name(f"{path.name}.{os.getpid()}@{socket.gethostname()}.part")
        try:
            with _Guard(part) as guard:
                stream = guard.stream = _open(source, timeout, total)
                if stream.length is not None and stream.length != size:
                    raise OSError(f"the server says {stream.length:,} bytes; the index says {size:,}")
                got = 0
                with open(part, "wb") as out:
                    while got <= size and (chunk := stream.read(min(CHUNK, size + 1 - got))):
                        out.write(chunk)
                        got += len(chunk)
                if got != size:
                    raise OSError(f"fetched {got:,}{'+' if got > size else ''} bytes; the index says {size:,}")
                os.replace(part, path)
        except Exception as e:  # (the guard removed the .part)
            raise OSError(f"{_said(e, timeout)} ({_shown(source)})") from None
    return str(path)


def sweep(folder: Path) -> list[str]:
    """Remove the `.part` files of fetches on this machine whose process is gone (killed by SIGKILL, or a power cut:
    nothing of theirs could clean up), and the `.lock` files nobody holds (taken, without waiting, to be removed).
    Returns their names."""
    host, gone = socket.gethostname(), []
    for p in folder.glob("*.part"):
        m = PART.search(p.name)
        if m and m[2] in (None, host) and not process_alive(int(m[1])):
            p.unlink(missing_ok=True)
            gone.append(p.name)
    for p in folder.glob("*.lock"):
        try:
            with open(p, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(f, p):
                    p.unlink()
                    gone.append(p.name)
        except OSError:  # held (a fetch runs), or gone already
            pass
    return gone


def _same_file(f, path: Path) -> bool:
    """Whether the open file `f` is the one at `path` now (not one removed from there)."""
    try:
        a, b = os.fstat(f.fileno()), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def _locked(path: Path):
    """The lock file `path` held (flock) while the block runs, and removed before it is let go. A process that
    waited on it then holds a removed file: it finds that so and locks the file at `path` (made afresh), so two
    processes never hold the lock of one shard at once, and none is left behind."""
    while True:
        f = open(path, "a")  # noqa: SIM115  (closed below, or on the way out)
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
            if _same_file(f, path):
                break
        except BaseException:
            f.close()
            raise
        f.close()
    try:
        yield
    finally:
        try:
            path.unlink(missing_ok=True)  # (while held: nobody else removes or replaces it meanwhile)
        finally:
            f.close()


def _evict(folder: Path, keep: Path, incoming: int) -> None:
    """Remove the least recently used shards until `incoming` more bytes (at most the bound: too_large is asked
    first) fit in the cache's bound (a reader that has a removed shard open keeps reading it: the file goes when its
    last descriptor closes)."""
    bound = cache_bound()
    shards = sorted((p for p in folder.glob("*.tar") if p != keep), key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in shards) + incoming
    for p in shards:
        if total <= bound:
            break
        total -= p.stat().st_size
        p.unlink(missing_ok=True)


def _open(source: str, timeout: float, total: float):
    """A stream of `source` whose reads wait at most `timeout` s for data, and that ends, all of it, within `total`
    s from now: read(n) gives up to n bytes (b"" at the end), close() ends it (a command is killed); `length` is
    what an HTTP server announces (else None)."""
    clock = _Clock(total)
    if source.startswith("pipe:"):
        proc = subprocess.Popen(
            source[len("pipe:") :],
            shell=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: the command and what it starts are killed together
        )
        return _Process(proc, timeout, clock, group=True)
    if source.split(":", 1)[0].lower() in ("http", "https"):
        return _Http(source, timeout, clock)
    from webdataset import gopen

    stream = gopen(source, "rb")  # gsutil, curl (hf://), ...: a webdataset Pipe, its process watched here
    return _Process(stream.proc, timeout, clock, group=False, owner=stream)


class TooSlow(Exception):
    """A fetch that ran past its whole deadline (fetch_deadline)."""


class _Clock:
    """A fetch's whole deadline: `total` seconds from its start."""

    def __init__(self, total: float):
        self.total, self.end = total, time.monotonic() + total

    def left(self) -> float:
        return self.end - time.monotonic()

    def late(self) -> TooSlow:
        return TooSlow(
            f"not fetched within {self.total:,.1f} s (RESNETS_FETCH_MIN_RATE: at least {fetch_min_rate():g} MB/s)"
        )


class _Http:
    """An HTTP(S) response read with urllib: the connection and every read wait at most `timeout` s, and the whole
    of it ends by `clock`: then its sockets are shut (from a timer thread), which ends a read or a header that
    waits, and the fetch fails TooSlow. Redirects only to http:// and https://."""

    def __init__(self, source: str, timeout: float, clock: "_Clock"):
        request = urllib.request.Request(source, headers={"User-Agent": f"resnets/{__version__}"})
        self.timeout, self.clock, self.sockets, self.expired = timeout, clock, [], False
        self.timer = threading.Timer(max(clock.left(), 0.0), self._expire)
        self.timer.daemon = True
        self.timer.start()
        opener = urllib.request.build_opener(_Redirects(), _HttpHandler(self), _HttpsHandler(self))
        try:
            self.response = opener.open(request, timeout=timeout)
        except BaseException:
            self.timer.cancel()
            if self.expired:
                raise clock.late() from None
            raise
        length = self.response.headers.get("Content-Length", "")
        self.length = int(length) if length.strip().isdigit() else None

    def opened(self, sock: socket.socket) -> None:
        """A connection of this fetch (a redirect makes another): shut at the deadline, or now if that has passed."""
        self.sockets.append(sock)
        if self.expired:
            self._shut(sock)

    def _expire(self) -> None:
        self.expired = True
        for sock in list(self.sockets):
            self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # a receive waiting on it returns now
        except OSError:
            pass

    def read(self, n: int) -> bytes:
        try:
            data = self.response.read1(n)  # one receive: the timeout is the time without data
        except Exception:
            if self.expired:
                raise self.clock.late() from None
            raise
        if self.expired:
            raise self.clock.late()
        return data

    def close(self) -> None:
        self.timer.cancel()
        self.response.close()

    def abort(self) -> None:  # the process is ending: its socket closes with it
        pass


class _Watched(http.client.HTTPConnection):
    """A connection whose socket its fetch (`watch`, an _Http) shuts at the deadline; the TCP connection is made
    within the timeout, and an HTTPS connection's handshake comes after this (see _WatchedTLS)."""

    watch: _Http

    def connect(self) -> None:
        super().connect()
        self.watch.opened(self.sock)


class _WatchedTLS(http.client.HTTPSConnection, _Watched):
    """HTTPS: HTTPSConnection.connect calls _Watched's (the plain socket) and then wraps it in TLS, whose socket is
    the one watched after (the handshake between is bounded by the timeout of each read only)."""

    def connect(self) -> None:
        super().connect()
        self.watch.opened(self.sock)


def _connection(cls: type, watch: _Http):
    def make(host: str, **kw) -> http.client.HTTPConnection:
        conn = cls(host, **kw)
        conn.watch = watch
        return conn

    return make


class _HttpHandler(urllib.request.HTTPHandler):
    def __init__(self, watch: _Http):
        super().__init__()
        self.watch = watch

    def http_open(self, req):
        return self.do_open(_connection(_Watched, self.watch), req)


class _HttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, watch: _Http):
        super().__init__()
        self.watch = watch

    def https_open(self, req):
        return self.do_open(_connection(_WatchedTLS, self.watch), req)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Redirects followed only to http:// and https:// (urllib's own would follow one to ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            fp.close()
            raise OSError(
                f"redirected (HTTP {code}) to {printable(newurl)[:60]}: a redirect is followed only to http:// or "
                "https://"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Process:
    """A command's stdout read with a deadline: no data for `timeout` s, or past the whole fetch's `clock`, and the
    command is killed (its whole process group: `group`) and the read fails. At the end of its output its exit
    status is checked; its stderr's last lines are kept to say why it failed."""

    def __init__(self, proc: subprocess.Popen, timeout: float, clock: _Clock, group: bool, owner: object = None):
        self.proc, self.timeout, self.clock, self.group, self.length = proc, timeout, clock, group, None
        self.owner = owner  # (webdataset's Pipe closes the process's stdout when it is collected: kept while read)
        self.out = proc.stdout.fileno()
        self.err, self.done, self.got = b"", False, 0
        self.poll = select.poll()  # (not select.select: a training process may hold descriptors past 1024)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                self.poll.register(stream.fileno(), select.POLLIN)

    def read(self, n: int) -> bytes:
        if self.done:
            return b""
        idle = time.monotonic() + self.timeout
        deadline = min(idle, self.clock.end)
        while (left := deadline - time.monotonic()) > 0:
            for fd, _ in self.poll.poll(math.ceil(left * 1000)):
                data = os.read(fd, n if fd == self.out else 4096)
                if fd != self.out:  # stderr: its last lines kept
                    self.err = (self.err + data)[-4096:]
                    if not data:
                        self.poll.unregister(fd)
                elif data:
                    self.got += len(data)
                    return data
                else:
                    self.poll.unregister(fd)
                    self.done = True
                    self._ended()
                    return b""
        self.kill()
        late = self.clock.end < idle and self.got > 0  # (a command that never wrote: no data, as the timeout says)
        raise self.clock.late() if late else TimeoutError

    def _ended(self) -> None:
        """The command closed its output: it must exit, with status 0."""
        try:
            status = self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise OSError(f"the command closed its output and ran on for {self.timeout:g} s") from None
        if status == 0:
            return
        if self.proc.stderr is not None:
            os.set_blocking(self.proc.stderr.fileno(), False)
            try:
                self.err += os.read(self.proc.stderr.fileno(), 4096)
            except OSError:
                pass
        lines = [line for line in self.err.decode(errors="replace").splitlines() if line.strip()]
        try:
            how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
        except ValueError:
            how = f"killed by signal {-status}"
        raise OSError(f"the command failed ({how}){': ' + lines[-1].strip() if lines else ''}")

    def abort(self) -> None:
        """SIGKILL to the command (its group), nothing waited for: safe in a signal handler."""
        try:
            if self.group:  # (the shell may be gone and the commands it started still there)
                os.killpg(self.proc.pid, signal.SIGKILL)
            elif self.proc.returncode is None:
                os.kill(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        self.abort()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # (a process stuck in the kernel: it goes when it can)
            pass

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class _Guard:
    """Around a download: its stream closed (a command killed) and its `.part` removed however the block ends. An
    exception does it on the way out; SIGTERM and SIGINT (caught in the main thread only, while the block runs) do
    it before the signal does what it did before: the old handler is called (Python's for SIGINT raises
    KeyboardInterrupt, and the block ends by it), or, where the default was to end the process, it ends so."""

    def __init__(self, part: Path | None):
        self.part, self.stream, self.old = part, None, {}

    def __enter__(self) -> "_Guard":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                old = signal.getsignal(sig)
                if old not in (signal.SIG_IGN, None):  # (None: a handler not set from Python: left alone)
                    self.old[sig] = signal.signal(sig, self._signal)
        return self

    def _signal(self, signum: int, frame) -> None:
        old = self.old[signum]
        if callable(old):
            old(signum, frame)  # it raises (KeyboardInterrupt, SystemExit): __exit__ cleans up; or the block goes on
            return
        if self.stream is not None:  # (no closing nor waiting here: the interrupted read may hold the stream)
            self.stream.abort()
        if self.part is not None:
            self.part.unlink(missing_ok=True)
        signal.signal(signum, signal.SIG_DFL)  # the default: the process ends by the signal, as it would have
        os.kill(os.getpid(), signum)

    def __exit__(self, *exc) -> None:
        try:
            if self.stream is not None:
                self.stream.close()
            if self.part is not None:
                self.part.unlink(missing_ok=True)
        finally:
            for sig, old in self.old.items():
                signal.signal(sig, old)
