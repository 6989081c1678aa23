"""Where the Grad-TTS checkpoint comes from: a user path, or the official file downloaded once.

The official checkpoints live on Google Drive (Speech-Backbones README), which only a dedicated
downloader handles reliably (confirmation pages, quotas): gdown. No checksum of the official
file is published, so the SHA-256 of the first cached file (downloaded, or placed there by hand)
is recorded next to it and every later use is verified against that record; a mismatch means
the cached file changed and is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from models.errors import ModelUnavailable
from models.checkpoints import sha256_of

# grad-tts.pt (LJSpeech, single speaker), as linked from the grad-tts package README.
OFFICIAL_FILE_ID = "1YrlswCD2Q_IUlvFtQQ-gnfkG7FEvRoPJ"
OFFICIAL_NAME = "grad-tts.pt"
OFFICIAL_FOLDER = "https://drive.google.com/drive/folders/1grsfccJbmEuSBGQExQKr3cVxNV0xEOZ7"


def cache_root(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffier"


def _manual_steps(target: Path) -> str:
    return (
        f"download {OFFICIAL_NAME} from {OFFICIAL_FOLDER} and pass --checkpoint /path/to/{OFFICIAL_NAME} "
        f"(or save it as {target})"
    )


def resolve_checkpoint(path: str | None, *, offline: bool, cache_dir: str | None, reporter) -> Path:
    if path is not None:
        checkpoint = Path(path).expanduser()
        if not checkpoint.is_file():
            raise ModelUnavailable(f"no checkpoint file at {checkpoint}; pass --checkpoint /path/to/grad-tts.pt")
        return checkpoint

    target = cache_root(cache_dir) / "grad-tts" / OFFICIAL_NAME
    record = target.with_suffix(".sha256")
    if not target.is_file():
        if offline:
            raise ModelUnavailable(f"{OFFICIAL_NAME} is not in the cache and --offline is set; {_manual_steps(target)}")
        _download(target, reporter)
        record.write_text(sha256_of(target) + "\n")
    elif not record.is_file():  # placed by hand, as the manual steps suggest: trust it from now on
        record.write_text(sha256_of(target) + "\n")
    elif record.read_text().strip() != sha256_of(target):
        raise ModelUnavailable(f"{target} differs from the file first used (SHA-256 mismatch); delete it to fetch it again")
    return target


def _download(target: Path, reporter) -> None:
    import gdown

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    reporter.message(f"downloading {OFFICIAL_NAME} (first use) into {target.parent}")
    try:
        result = gdown.download(id=OFFICIAL_FILE_ID, output=str(partial), quiet=not reporter.interactive)
    except Exception as exc:  # noqa: BLE001 - network, quota and HTML-instead-of-file failures alike
        partial.unlink(missing_ok=True)
        raise ModelUnavailable(f"could not download {OFFICIAL_NAME} ({type(exc).__name__}: {exc}); {_manual_steps(target)}") from exc
    if result is None or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise ModelUnavailable(f"could not download {OFFICIAL_NAME}; {_manual_steps(target)}")
    partial.replace(target)
