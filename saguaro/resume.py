"""What a caller has received of one request's output, and the ``Resume`` that continues it.

A stream that breaks off mid-request goes on elsewhere: the request is sent again with
``GenerateRequest.resume`` holding what was received (inference.proto, ``Resume``), and the
server continues the offsets and the text exactly where the stream stopped. The client SDK does
this when it loses its server, the gateway when a target dies (migration), and the target reads
a ``Resume`` to continue; all three keep the received output here, so they agree on what a
``Resume`` holds and on where a continued stream must pick up. Torch-free: the gateway and the
client SDK import it.
"""

from __future__ import annotations

from saguaro.v1 import inference_pb2 as pb


class ReceivedOutput:
    """Completion tokens and text received so far, in order (a resumed request's included)."""

    __slots__ = ("_texts", "token_ids")

    def __init__(self, resume: pb.Resume | None = None):
        self.token_ids: list[int] = list(resume.token_ids) if resume is not None else []
        self._texts: list[str] = [resume.text] if resume is not None and resume.text else []

    @classmethod
    def of_request(cls, request: pb.GenerateRequest) -> ReceivedOutput:
        """What the caller of ``request`` already holds: its ``resume``, or nothing."""
        return cls(request.resume if request.HasField("resume") else None)

    @property
    def text(self) -> str:
        return "".join(self._texts)

    def continues(self, delta: pb.TokenDelta) -> bool:
        """Whether ``delta`` picks up right after what was received: a server that lost or
        repeated tokens, or ignored ``resume`` and restarted at offset 0, does not."""
        return delta.offset == len(self.token_ids)

    def add(self, delta: pb.TokenDelta) -> None:
        self.token_ids.extend(delta.token_ids)
        if delta.text:
            self._texts.append(delta.text)

    def resume(self) -> pb.Resume:
        """The ``Resume`` that continues the stream after what was received."""
        return pb.Resume(token_ids=self.token_ids, text=self.text)
