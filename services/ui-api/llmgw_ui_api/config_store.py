"""The config as the editor keeps it: revisions of the config bucket (``llmgw_common.config_bucket``).

A version is the bucket's revision number of the config key, and so is its etag: a save names the
revision it started from (``If-Match``) and is written with a KV *update* expecting that revision, so
two editors (in any ui-api replica) cannot overwrite each other: the second gets a conflict. The
bucket's history is the editor's history (the last ``config_bucket.HISTORY`` revisions); a rollback
writes an old revision's text as a new revision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmgw_common import config_bucket
from llmgw_common.config_check import check_text

from .config_models import HistoryReply, Problem, VersionInfo
from .config_secrets import restore_secrets


def check(new_text: str, current_text: str | None) -> tuple[str, list[Problem]]:
    """The text to write (secrets put back) and its problems (empty: valid)."""
    restored = restore_secrets(new_text, current_text)
    problems = [Problem(path=p, message=m) for p, m in restored.problems]
    problems += parse_problems(restored.text)
    return restored.text, problems


def parse_problems(text: str) -> list[Problem]:
    """Every problem of a config text (what ``llmgw config check`` says about it too)."""
    return [Problem(path=f.path, message=f.message) for f in check_text(text).errors]


def etag_of(revision: int) -> str:
    return str(revision)


async def read(kv) -> config_bucket.Revision:
    """The current revision (revision 0 and no text: nothing stored yet, the defaults run)."""
    return await config_bucket.current(kv) or config_bucket.Revision(0, "")


def _info(rev: config_bucket.Revision) -> VersionInfo:
    return VersionInfo(version=str(rev.revision), at=rev.at, etag=etag_of(rev.revision),
                       size=len(rev.text.encode("utf-8")))


async def history(kv) -> HistoryReply:
    """The kept revisions before the current one, newest first, and the current one."""
    revisions = await config_bucket.history(kv)
    current = _info(revisions[0]) if revisions else None
    return HistoryReply(versions=[_info(r) for r in revisions[1:]], current=current)


async def kept(kv, revision: int) -> config_bucket.Revision | None:
    return next((r for r in await config_bucket.history(kv) if r.revision == revision), None)


@dataclass
class SaveResult:
    status: int  # 200, 400, 409
    revision: int  # the one written, or the current one when nothing was
    changed: bool = False
    problems: list[Problem] = field(default_factory=list)

    @property
    def etag(self) -> str:
        return etag_of(self.revision)


async def save(kv, new_text: str, if_match: list[str], restore: bool = True) -> SaveResult:
    """The revision checked, the text validated (secrets put back from the current revision), then written
    as a new revision only if the current one is still the one the editor started from."""
    from nats.js.errors import KeyWrongLastSequenceError

    current = await read(kv)
    if etag_of(current.revision) not in if_match:
        return SaveResult(409, current.revision)
    if restore:
        text, problems = check(new_text, current.text if current.revision else None)
    else:
        text, problems = new_text, parse_problems(new_text)
    if problems:
        return SaveResult(400, current.revision, problems=problems)
    if current.revision and text == current.text:
        return SaveResult(200, current.revision, changed=False)
    try:
        revision = await config_bucket.write(kv, text, last=current.revision)
    except KeyWrongLastSequenceError:  # another editor saved in between
        latest = await read(kv)
        return SaveResult(409, latest.revision)
    return SaveResult(200, revision, changed=True)
