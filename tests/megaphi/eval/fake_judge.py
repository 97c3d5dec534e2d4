"""A fake LLM judge for tests/data_tools/fake_openai.py that obeys instructions wherever it reads them.

It reads a chat the way a naive model might: it learns the candidate's quote markers from the rubric
(the system message), treats what lies between the first start marker and the first end marker after
it as the candidate's code, and follows any "award score N" written anywhere outside that span. So a
completion that can close the quote early, or a prompt that does not quote it at all, gets its score.
Graded honestly, a candidate scores 9 when it holds every line of the reference's body, else 2.
"""

from __future__ import annotations

import re
import threading

INJECTION = re.compile(r"award score (\d+)", re.I)
_MARKERS = re.compile(r'quoted between\s+the line "(.+?)"\s+and the line "(.+?)"')
_SAMPLE = re.compile(r"^Sample (\S+), problem (\S+)\.", re.M)
_REFERENCE = re.compile(r"A reference solution \(the body that completes the problem\):\n(.*?)\nGrading notes:", re.S)
HONEST_PASS, HONEST_FAIL = 9, 2
MALFORMED_ANSWER = "I would give this one about 7/10: it mostly works."


def split_instructions_and_data(messages: list[dict]) -> tuple[str, str]:
    """(everything the fake reads as instructions, the span it reads as the candidate's code)."""
    system, user = messages[0]["content"], messages[-1]["content"]
    markers = _MARKERS.search(system)
    if markers is None:
        return system + "\n" + user, ""
    start_marker, end_marker = markers.groups()
    start = user.find(start_marker + "\n")
    end = user.find("\n" + end_marker, start + len(start_marker)) if start >= 0 else -1
    if start < 0 or end < 0:
        return system + "\n" + user, ""
    data = user[start + len(start_marker) + 1 : end]
    return system + "\n" + user[:start] + user[end:], data


class ObedientJudge:
    """``answer_chat`` for FakeOpenAI. ``malformed_first`` = {task_id: how many malformed answers each
    of its samples gets before a real one} (a large number: always malformed)."""

    def __init__(self, malformed_first: dict[str, int] | None = None):
        self.malformed_first = dict(malformed_first or {})
        self._malformed_given: dict[str, int] = {}
        self._lock = threading.Lock()
        self.data_seen: list[str] = []  # the candidate spans it read
        self.obeyed: list[str] = []  # sample ids whose score came from an instruction it found

    def __call__(self, messages: list[dict]) -> str:
        instructions, data = split_instructions_and_data(messages)
        sample, task_id = _SAMPLE.search(messages[-1]["content"]).groups()
        with self._lock:
            self.data_seen.append(data)
            given = self._malformed_given.get(sample, 0)
            if given < self.malformed_first.get(task_id, 0):
                self._malformed_given[sample] = given + 1
                return MALFORMED_ANSWER
            if (order := INJECTION.search(instructions)) is not None:
                self.obeyed.append(sample)
                return '{"score": %d, "reason": "As instructed."}' % int(order.group(1))
        reference = _REFERENCE.search(messages[-1]["content"]).group(1)
        wanted = {line.strip() for line in reference.splitlines() if line.strip()}
        have = {line.strip() for line in data.splitlines()}
        score = HONEST_PASS if wanted <= have else HONEST_FAIL
        return '{"score": %d, "reason": "Compared with the reference body line by line."}' % score


def sample_of(prompt: str) -> str:
    """The sample id a judge request (its user message) is about."""
    return _SAMPLE.search(prompt).group(1)
