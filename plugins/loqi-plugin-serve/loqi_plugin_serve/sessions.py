"""Sequence sessions: one robot's stream of frames, matched as a sequence against the database's capture order.

A session holds a ``SequenceStream`` (``loqi_core.evaluation.sequence``: the offline sequence matching of ``loqi
eval --sequence``, frame by frame): the contrast-enhanced similarity rows of its last L frames, L × N float64.
Sessions live in the server's memory only: they expire after ``idle_s`` without a frame, are bounded in number and
in memory (a session that would pass either bound is refused with a 503, nothing is evicted), and do not survive a
restart. Ids are 128 random bits; any client that may use the API and knows an id may use its session.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from loqi_plugin_serve.decode import BadInput

if TYPE_CHECKING:  # pragma: no cover
    from loqi_core.plugin import SequenceParams, SequenceStream, Traverses

MAX_VELOCITIES = 64
"""Velocity lines a session may search per frame (V_min to V_max in steps of V_step): bounds a frame's work."""


@dataclass(frozen=True)
class SessionLimits:
    """How many sessions, how much memory, how long they idle, and the sequence lengths they may ask for."""

    max_sessions: int = 64
    idle_s: float = 300.0
    memory_bytes: int = 512 * 2**20
    max_length: int = 100
    default_length: int = 10


@dataclass
class Session:
    id: str
    stream: "SequenceStream"
    settings: dict[str, Any]
    memory: int
    last_used: float
    owner: bytes | None = None
    """The digest of the API key that created it (None without keys): no other key can use, see or end it."""
    frames: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Frames of one session are matched one after the other, in the order they arrive."""

    def describe(self, idle_s: float, now: float) -> dict[str, Any]:
        return {"session": self.id, "frames": self.frames, "sequence": self.settings, "memory_bytes": self.memory,
                "expires_in_s": round(max(0.0, self.last_used + idle_s - now), 3)}  # fmt: skip


def sequence_settings(body: dict[str, Any], limits: SessionLimits) -> tuple["SequenceParams", float]:
    """The SequenceParams and rate a client asks for (JSON ``length``, ``rate``, ``window``, ``v_min``, ``v_max``,
    ``v_step``; defaults: ``--sequence-length``, 1 database frame per query frame, and SeqSLAM's), checked."""
    from loqi_core.plugin import ConfigError, SequenceParams

    known = {"length", "rate", "window", "v_min", "v_max", "v_step"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadInput(400, "bad_session", f"unknown session setting(s) {', '.join(unknown)}: expected {', '.join(sorted(known))}")
    number = lambda key, default, kind: _number(body, key, default, kind)  # noqa: E731
    length = number("length", limits.default_length, int)
    if not 1 <= length <= limits.max_length:
        raise BadInput(400, "bad_session", f"length must be between 1 and {limits.max_length} frames, got {length}")
    defaults = SequenceParams(1)
    try:
        params = SequenceParams(length, number("window", defaults.window, int), number("v_min", defaults.v_min, float),
                                number("v_max", defaults.v_max, float), number("v_step", defaults.v_step, float))  # fmt: skip
        rate = number("rate", 1.0, float)
        if not 0 < rate <= 1000:
            raise ConfigError(f"rate (database frames per query frame) must be in (0, 1000], got {rate}")
        if len(params.velocities()) > MAX_VELOCITIES:
            raise ConfigError(f"V_min to V_max in steps of V_step gives more than {MAX_VELOCITIES} velocities")
    except ConfigError as exc:
        raise BadInput(400, "bad_session", str(exc)) from None
    return params, rate


def _number(body: dict[str, Any], key: str, default: float, kind: type) -> Any:
    value = body.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (kind is int and value != int(value)):
        raise BadInput(400, "bad_session", f"{key} must be {'a whole number' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


def _same_owner(a: bytes | None, b: bytes | None) -> bool:
    if a is None or b is None:
        return a is b
    return hmac.compare_digest(a, b)


class Sessions:
    """The sessions of one server over one database (``traverses``: its capture order, None when it has none)."""

    def __init__(self, traverses: "Traverses | None", database_images: int, limits: SessionLimits,
                 on_event: Callable[[str, int], None] = lambda event, active: None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.traverses, self.n, self.limits = traverses, database_images, limits
        self.on_event, self.clock = on_event, clock
        self.held: dict[str, Session] = {}

    @property
    def memory(self) -> int:
        return sum(s.memory for s in self.held.values())

    def sweep(self) -> int:
        """Forget the sessions idle for longer than ``idle_s`` (a session busy with a frame is not idle)."""
        now = self.clock()
        gone = [s.id for s in self.held.values() if now - s.last_used > self.limits.idle_s and not s.lock.locked()]
        for sid in gone:
            del self.held[sid]
            self.on_event("expired", len(self.held))
        return len(gone)

    def create(self, body: dict[str, Any], owner: bytes | None = None) -> Session:
        from loqi_core.plugin import SequenceStream

        if self.traverses is None:
            raise BadInput(409, "no_capture_order", "this index has no capture order, and sequence matching needs the "
                           "database's traverses: build it from an ordered set (--dataset nordland, demo, ...) or with "
                           "--database DIR --order name|frame|timestamp")  # fmt: skip
        params, rate = sequence_settings(body, self.limits)
        self.sweep()
        memory = params.length * self.n * 8
        if len(self.held) >= self.limits.max_sessions or self.memory + memory > self.limits.memory_bytes:
            self.on_event("refused", len(self.held))
            raise BadInput(503, "too_many_sessions", f"the server holds {len(self.held)} sessions in "
                           f"{self.memory / 2**20:.1f} MB (at most {self.limits.max_sessions} in "
                           f"{self.limits.memory_bytes / 2**20:.0f} MB; this one needs {memory / 2**20:.1f} MB): end "
                           "one (DELETE /v1/sessions/ID), wait for one to expire, or ask for a shorter length")  # fmt: skip
        settings = {"length": params.length, "rate": rate, "window": params.window, "v_min": params.v_min,
                    "v_max": params.v_max, "v_step": params.v_step}  # fmt: skip
        session = Session(secrets.token_hex(16), SequenceStream(self.traverses, params, rate), settings, memory,
                          self.clock(), owner)  # fmt: skip
        self.held[session.id] = session
        self.on_event("created", len(self.held))
        return session

    def get(self, sid: str, owner: bytes | None = None) -> Session:
        """The session ``sid`` for the key ``owner``; another key's session is answered as unknown, not as forbidden,
        so a key learns nothing of the sessions of others."""
        self.sweep()
        session = self.held.get(sid)
        if session is None or not _same_owner(session.owner, owner):
            raise BadInput(404, "unknown_session", f"no session {sid[:64]!r}: it expired after {self.limits.idle_s:g} s "
                           "without a frame, was ended, was never created, was created with another API key, or the "
                           "server restarted (sessions live in its memory only): create one with POST /v1/sessions")  # fmt: skip
        session.last_used = self.clock()
        return session

    def end(self, sid: str, owner: bytes | None = None) -> None:
        self.get(sid, owner)
        del self.held[sid]
        self.on_event("deleted", len(self.held))

    def push(self, session: Session, similarity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """One frame's similarity row into ``session``: the top-``k`` database indices and sequence scores (lower
        is better) of the sequence ending at it, and how many frames that sequence has."""
        from loqi_core.plugin import top_k

        scores = session.stream.push(similarity)
        session.frames += 1
        session.last_used = self.clock()
        ids, values = top_k(scores[None], k)
        return ids[0], values[0], len(session.stream.recent)
